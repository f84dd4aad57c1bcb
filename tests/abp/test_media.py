"""abp.media's sound levels: a wav is written at a listenable level (peak at −1 dBFS) by one
gain, the signal itself untouched; how much signal an example carries; and the files the
writers make (grids, PNG, mp4, wav, spectrograms), decoded back: where each image lands, how
long a file lasts, what values it holds."""

import math

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from abp import media

PEAK = 10 ** (-1 / 20)  # −1 dBFS
LSB = 1 / 32768  # one step of 16-bit audio


def read(path) -> np.ndarray:
    samples, _ = soundfile.read(str(path), dtype="float64")
    return samples


def test_a_quiet_sound_is_written_with_its_peak_at_minus_one_dbfs(tmp_path):
    wave = 0.01 * torch.sin(torch.linspace(0, 60, 800))
    kept = wave.clone()
    written = read(media.write_wav(wave, tmp_path / "quiet.wav", sample_rate=8000))
    assert np.abs(written).max() == pytest.approx(PEAK, abs=2 * LSB)
    np.testing.assert_allclose(written, wave.numpy() * PEAK / float(wave.abs().max()), atol=2 * LSB)
    assert torch.equal(wave, kept)  # the data stay as they are


def test_a_given_gain_is_used_as_is_so_relative_loudness_stays(tmp_path):
    truth, recovery = 0.02 * torch.ones(100), 0.01 * torch.ones(100)
    gain = media.peak_gain(truth)
    assert gain == pytest.approx(PEAK / 0.02)
    for name, wave in (("truth", truth), ("recovery", recovery)):
        media.write_wav(wave, tmp_path / f"{name}.wav", sample_rate=8000, gain=gain)
    assert read(tmp_path / "recovery.wav").max() / read(
        tmp_path / "truth.wav"
    ).max() == pytest.approx(0.5, abs=1e-3)


def test_silence_stays_silent_and_noise_is_raised_at_most_40_db(tmp_path):
    assert media.peak_gain(torch.zeros(10)) == 1.0
    written = read(media.write_wav(torch.zeros(10), tmp_path / "silence.wav", sample_rate=8000))
    assert not written.any()
    assert media.peak_gain(torch.full((10,), 1e-6)) == media.MAX_GAIN == 100.0


def test_rms_is_the_signal_about_each_examples_mean():
    signals = torch.stack(
        [torch.zeros(1, 8), torch.full((1, 8), 0.7), torch.tensor([[1.0, -1.0] * 4])]
    )
    torch.testing.assert_close(media.rms(signals), torch.tensor([0.0, 0.0, 1.0]))


def enlarged(array: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement, done independently of abp.media."""
    return np.kron(array, np.ones((scale, scale, 1), dtype=array.dtype))


def test_signals_map_to_bytes_with_minus_one_black_and_one_white():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    assert media.to_uint8(x).tolist() == [0, 0, 128, 191, 255, 255]  # out of range: clipped


def test_a_grid_puts_image_i_in_row_i_div_ncol_and_column_i_mod_ncol():
    images = torch.linspace(-1, 1, 5 * 2 * 3).view(5, 1, 2, 3)
    grid = media.image_grid(images)  # 5 images: 3 a row (⌈√5⌉), 2 rows
    assert grid.shape == (2 * (2 + 1) + 1, 3 * (3 + 1) + 1, 3) and grid.dtype == np.uint8
    pixels = media.to_uint8(images)
    free = np.ones(grid.shape[:2], dtype=bool)
    for i in range(5):
        top, left = 1 + (i // 3) * 3, 1 + (i % 3) * 4
        for channel in range(3):  # gray: the same in R, G and B
            assert np.array_equal(grid[top : top + 2, left : left + 3, channel], pixels[i, 0])
        free[top : top + 2, left : left + 3] = False
    assert (grid[free] == 255).all()  # padding and the sixth, empty cell are white
    colour = torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    assert media.image_grid(colour, ncol=1)[1, 1].tolist() == [255, 0, 128]  # RGB kept


def test_a_labelled_grid_is_the_enlarged_grid_with_each_label_beside_its_row():
    images = torch.linspace(-1, 1, 4 * 2 * 3).view(4, 1, 2, 3)
    plain = media.image_grid(images, ncol=2)  # cells of 3 pixels (2 + padding), 7 high
    for min_side, min_cell, scale in ((1, 40, 14), (256, 1, 37), (256, 40, 37)):
        # the smallest enlargement with cells of min_cell and a grid of min_side
        grid = media.labelled_grid(images, None, ncol=2, min_side=min_side, min_cell=min_cell)
        assert np.array_equal(grid, enlarged(plain, scale)), (min_side, min_cell)
    labelled = media.labelled_grid(images, ["truth", "recovered"], ncol=2)
    scale = 37  # the defaults: min_side 256, min_cell 40
    bare = enlarged(plain, scale)
    margin = labelled.shape[1] - bare.shape[1]
    assert margin > 0 and np.array_equal(labelled[:, margin:], bare)
    for row in range(2):  # some dark text in the margin, level with its row
        band = labelled[(1 + row * 3) * scale : (1 + row * 3 + 2) * scale, :margin]
        assert band.min() < 128
    with pytest.raises(ValueError, match="3 labels for 2 rows"):
        media.labelled_grid(images, ["a", "b", "c"], ncol=2)


def test_side_by_side_shows_one_row_per_tensor_cut_to_the_first_ones_length():
    truth, recovered = -torch.ones(2, 1, 2, 2), torch.ones(3, 1, 2, 2)
    grid = media.side_by_side(truth, recovered)
    scale = grid.shape[0] // 7  # 2 rows of 2×2 images, padded: 7 pixels high
    assert np.array_equal(
        grid, enlarged(media.image_grid(torch.cat([truth, recovered[:2]]), ncol=2), scale)
    )


def test_a_tiny_png_is_saved_enlarged_pixel_for_pixel(tmp_path):
    array = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    path = media.save_png(array, tmp_path / "figures" / "tiny.png", min_side=10)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(decoded, enlarged(array, 3))  # the short side 4 → at least 10


def test_clip_frames_are_laid_out_one_clip_a_row_in_time_order():
    clips = torch.linspace(-1, 1, 2 * 3 * 3 * 4).view(2, 3, 3, 2, 2)  # N, C, T, H, W
    frames = media.frames_of(clips)
    for n in range(2):
        for t in range(3):
            assert torch.equal(frames[n * 3 + t], clips[n, :, t])
    assert np.array_equal(media.clip_frames_grid(clips), media.image_grid(frames, ncol=3))


def test_an_mp4_decodes_back_to_its_frames_looped_for_long_enough(tmp_path):
    # Two 8×8 clips of 4 flat frames, one getting brighter and one darker, side by side: a
    # grid 19 pixels wide, which H.264 needs even (20).
    ramp = torch.linspace(-1, 1, 4)
    clips = torch.stack(
        [ramp.view(1, 4, 1, 1).expand(1, 4, 8, 8), ramp.flip(0).view(1, 4, 1, 1).expand(1, 4, 8, 8)]
    )
    path = media.write_mp4(clips, tmp_path / "clips.mp4", fps=6, min_side=10, min_seconds=1.5)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (20, 10)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 12  # 4 frames looped ⌈1.5 s · 6 fps / 4⌉ = 3 times
    assert media.duration_seconds(path) == pytest.approx(2.0)  # at least 1.5 s
    levels = media.to_uint8(ramp).astype(int)
    for i, frame in enumerate(decoded):  # centres of the two clips, within codec error
        assert abs(int(frame[5, 5].mean()) - levels[i % 4]) <= 12, i
        assert abs(int(frame[5, 14].mean()) - levels[3 - i % 4]) <= 12, i


def test_sounds_are_joined_with_gaps_and_repeated_for_long_enough():
    waves = torch.tensor([[[1.0, 2.0, 3.0, 4.0]], [[-1.0, -2.0, -3.0, -4.0]]])  # N×1×L
    joined = media.joined_sounds(waves, sample_rate=8, gap_seconds=0.25, min_seconds=2.5)
    once = [1.0, 2.0, 3.0, 4.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, 0.0, 0.0]
    assert joined.tolist() == once * 2  # 12 samples at 8 Hz is 1.5 s: twice to last 2.5 s
    assert (
        media.joined_sounds(waves[:, 0], sample_rate=8, gap_seconds=0.25, min_seconds=1).tolist()
        == once
    )  # N×L, long enough at once


def test_a_wav_lasts_its_samples_and_clips_what_a_gain_pushes_past_full_scale(tmp_path):
    wave = torch.tensor([[0.5, -0.5, 0.9, -0.9] * 1000])  # 1×4000 at 8 kHz: half a second
    path = media.write_wav(wave, tmp_path / "sounds" / "loud.wav", sample_rate=8000, gain=2.0)
    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (8000, 1, 4000, "PCM_16")
    assert media.duration_seconds(path) == pytest.approx(0.5)
    written = read(path)
    np.testing.assert_allclose(written[:4], [1.0, -1.0, 1.0, -1.0], atol=2 * LSB)


def test_a_tones_spectrogram_peaks_in_its_frequency_row_within_80_db():
    sample_rate, frequency = 8000, 1000
    tone = torch.sin(2 * math.pi * frequency * torch.arange(4096) / sample_rate)
    decibels = media.spectrogram_db(tone, n_fft=256)
    assert decibels.shape == (256 // 2 + 1, 4096 // 64 + 1)  # rows up to sample_rate / 2
    assert int(decibels.mean(1).argmax()) == round(frequency / (sample_rate / 2) * 128)  # 32
    assert decibels.max() - decibels.min() == pytest.approx(80)  # the floor 80 dB down
    # A sound shorter than the window gets a window of the largest power of 2 that fits.
    assert media.spectrogram_db(
        torch.randn(100, generator=torch.Generator().manual_seed(0)), n_fft=256
    ).shape == (64 // 2 + 1, 100 // 16 + 1)
