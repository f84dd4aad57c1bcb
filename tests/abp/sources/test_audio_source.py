"""Audio read with soundfile, made mono, resampled and cut into clips that know their file
and start; short sounds left out (one summary line) or zero-padded under a mask."""

import logging

import numpy as np
import pytest
import soundfile
import torch
from media import write_tone

from abp.sources.audio import load_audio_clips, read_audio
from abp.sources.common import SourceError


def test_wav_and_flac_are_resampled_to_mono_clips(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=1.0, rate=16000, channels=2)
    write_tone(tmp_path / "b.flac", seconds=0.5, rate=8000)
    clips = load_audio_clips(tmp_path, sample_rate=4000, clip_length=1000, clip_stride=500)
    # a: 4000 samples → 7 clips; b: 2000 samples → 3 clips
    assert clips.x.shape == (10, 1, 1000) and clips.names() == ["a.wav", "b.flac"]
    assert abs(float(clips.x.abs().max()) - 0.95) < 1e-4  # peak-normalised
    # 440 Hz survives resampling: its spectrum peaks at 440 Hz
    spectrum = np.abs(np.fft.rfft(clips.x[0, 0].numpy()))
    assert abs(np.argmax(spectrum) * 4000 / 1000 - 440) <= 4
    # Where each clip came from, the files' own rates, and the stereo file averaged to mono
    assert clips.file.tolist() == [0] * 7 + [1] * 3
    assert clips.start.tolist() == [0, 500, 1000, 1500, 2000, 2500, 3000, 0, 500, 1000]
    assert clips.file_rates == [16000, 8000] and clips.rate == 4000
    assert [p.name for p in clips.multichannel] == ["a.wav"] and clips.mask is None


def test_a_clip_holds_the_samples_at_its_recorded_start(tmp_path):
    ramp = np.linspace(-0.9, 0.9, 5000, dtype=np.float32)  # sample i has a value of its own
    soundfile.write(str(tmp_path / "ramp.wav"), ramp, 8000, subtype="FLOAT")
    clips = load_audio_clips(
        tmp_path / "ramp.wav",
        sample_rate=8000,
        clip_length=1000,
        clip_stride=300,
        peak_normalize=False,
        max_clips=6,
    )
    assert clips.start.tolist() == [0, 300, 600, 900, 1200, 1500]
    for clip, start in zip(clips.x, clips.start.tolist()):
        torch.testing.assert_close(clip[0], torch.from_numpy(ramp[start : start + 1000]))


def test_mp3_is_read(tmp_path):
    path = tmp_path / "tone.mp3"
    t = np.arange(8000) / 8000
    soundfile.write(str(path), 0.5 * np.sin(2 * np.pi * 300 * t), 8000, format="MP3")
    data, rate = read_audio(path)
    assert rate == 8000 and data.shape[0] == 1 and data.shape[1] >= 7000


def test_short_sounds_are_left_out_in_one_summary_line(tmp_path, caplog):
    for i in range(5):
        write_tone(tmp_path / f"short{i}.wav", seconds=0.1, rate=8000)
    write_tone(tmp_path / "zlong.wav", seconds=0.5, rate=8000)
    with caplog.at_level(logging.WARNING, logger="abp.sources"):
        clips = load_audio_clips(tmp_path, sample_rate=8000, clip_length=1000, clip_stride=1000)
    assert clips.names() == ["zlong.wav"] and len(clips.x) == 4 and len(clips.skipped) == 5
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "skipping 5 audio files too short for one clip: short0.wav, "
        "short1.wav, short2.wav and 2 more"
    )
    assert "pad_short: true" in lines[0]


def test_pad_short_zero_pads_a_short_sound_and_masks_the_padding(tmp_path):
    write_tone(tmp_path / "a_short.wav", seconds=0.1, rate=8000)  # 800 samples
    write_tone(tmp_path / "b_long.wav", seconds=0.25, rate=8000)  # 2000 samples: 2 clips
    clips = load_audio_clips(
        tmp_path, sample_rate=8000, clip_length=1000, clip_stride=1000, pad_short=True
    )
    assert clips.x.shape == (3, 1, 1000) and clips.skipped == []
    assert [p.name for p in clips.padded] == ["a_short.wav"]
    assert clips.mask.shape == clips.x.shape and clips.mask.dtype == torch.bool
    assert clips.mask[0, 0, :800].all() and not clips.mask[0, 0, 800:].any()
    assert clips.mask[1:].all()  # the long file's clips are all observed
    assert clips.x[0, 0, 800:].abs().max() == 0 and clips.x[0, 0, :800].abs().max() > 0.9


def test_short_corrupt_and_empty_audio_are_explained(tmp_path):
    write_tone(tmp_path / "short.wav", seconds=0.1, rate=8000)
    message = r"short\.wav.*800 samples at 8000 Hz, fewer than the clip length 1000"
    with pytest.raises(SourceError, match=message):
        load_audio_clips(
            tmp_path, sample_rate=8000, clip_length=1000, clip_stride=1000, on_corrupt="fail"
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="the folder has no audio files"):
        load_audio_clips(tmp_path / "empty", sample_rate=8000, clip_length=10, clip_stride=10)
    (tmp_path / "noise.wav").write_bytes(b"RIFF0000WAVEjunk")
    write_tone(tmp_path / "good.wav", seconds=0.5, rate=8000)
    clips = load_audio_clips(tmp_path, sample_rate=8000, clip_length=1000, clip_stride=1000)
    assert clips.names() == ["good.wav"] and len(clips.x) == 4
    assert sorted(s.path.rsplit("/", 1)[1] for s in clips.skipped) == ["noise.wav", "short.wav"]
