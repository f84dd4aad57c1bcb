"""Audio read with soundfile, made mono, resampled and cut into clips."""

import numpy as np
import pytest
import soundfile
from media import write_tone

from abp.sources.audio import load_audio_clips, read_audio
from abp.sources.common import SourceError


def test_wav_and_flac_are_resampled_to_mono_clips(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=1.0, rate=16000, channels=2)
    write_tone(tmp_path / "b.flac", seconds=0.5, rate=8000)
    clips, files, skipped = load_audio_clips(tmp_path, sample_rate=4000, clip_length=1000,
                                             clip_stride=500)
    # a: 4000 samples → 7 clips; b: 2000 samples → 3 clips
    assert clips.shape == (10, 1, 1000) and [f.name for f in files] == ["a.wav", "b.flac"]
    assert abs(float(clips.abs().max()) - 0.95) < 1e-4  # peak-normalised
    # 440 Hz survives resampling: its spectrum peaks at 440 Hz
    spectrum = np.abs(np.fft.rfft(clips[0, 0].numpy()))
    assert abs(np.argmax(spectrum) * 4000 / 1000 - 440) <= 4


def test_mp3_is_read(tmp_path):
    path = tmp_path / "tone.mp3"
    t = np.arange(8000) / 8000
    soundfile.write(str(path), 0.5 * np.sin(2 * np.pi * 300 * t), 8000, format="MP3")
    data, rate = read_audio(path)
    assert rate == 8000 and data.shape[0] == 1 and data.shape[1] >= 7000


def test_short_corrupt_and_empty_audio_are_explained(tmp_path):
    write_tone(tmp_path / "short.wav", seconds=0.1, rate=8000)
    with pytest.raises(SourceError, match="short.wav.*800 samples at 8000 Hz, fewer than the clip length 1000"):
        load_audio_clips(tmp_path, sample_rate=8000, clip_length=1000, clip_stride=1000,
                         on_corrupt="fail")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="the folder has no audio files"):
        load_audio_clips(tmp_path / "empty", sample_rate=8000, clip_length=10, clip_stride=10)
    (tmp_path / "noise.wav").write_bytes(b"RIFF0000WAVEjunk")
    write_tone(tmp_path / "good.wav", seconds=0.5, rate=8000)
    clips, files, skipped = load_audio_clips(tmp_path, sample_rate=8000, clip_length=1000,
                                             clip_stride=1000)
    assert [f.name for f in files] == ["good.wav"] and len(clips) == 4
    assert sorted(s.path.rsplit("/", 1)[1] for s in skipped) == ["noise.wav", "short.wav"]
