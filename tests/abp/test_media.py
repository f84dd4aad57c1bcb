"""abp.media's sound levels: a wav is written at a listenable level (peak at −1 dBFS) by one
gain, the signal itself untouched; and how much signal an example carries."""

import numpy as np
import pytest
import soundfile
import torch

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
    np.testing.assert_allclose(written, wave.numpy() * PEAK / float(wave.abs().max()),
                               atol=2 * LSB)
    assert torch.equal(wave, kept)  # the data stay as they are


def test_a_given_gain_is_used_as_is_so_relative_loudness_stays(tmp_path):
    truth, recovery = 0.02 * torch.ones(100), 0.01 * torch.ones(100)
    gain = media.peak_gain(truth)
    assert gain == pytest.approx(PEAK / 0.02)
    for name, wave in (("truth", truth), ("recovery", recovery)):
        media.write_wav(wave, tmp_path / f"{name}.wav", sample_rate=8000, gain=gain)
    assert read(tmp_path / "recovery.wav").max() / read(tmp_path / "truth.wav").max() == \
        pytest.approx(0.5, abs=1e-3)


def test_silence_stays_silent_and_noise_is_raised_at_most_40_db(tmp_path):
    assert media.peak_gain(torch.zeros(10)) == 1.0
    written = read(media.write_wav(torch.zeros(10), tmp_path / "silence.wav", sample_rate=8000))
    assert not written.any()
    assert media.peak_gain(torch.full((10,), 1e-6)) == media.MAX_GAIN == 100.0


def test_rms_is_the_signal_about_each_examples_mean():
    signals = torch.stack([torch.zeros(1, 8), torch.full((1, 8), 0.7),
                           torch.tensor([[1.0, -1.0] * 4])])
    torch.testing.assert_close(media.rms(signals), torch.tensor([0.0, 0.0, 1.0]))
