"""Audio: files read with soundfile (PyAV for what libsndfile cannot read), made mono,
resampled with torchaudio to one rate, and cut into clips N×1×L."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile
import torch
import torchaudio.functional

from abp.sources.common import OnCorrupt, Skipped, SourceError, find_files, read_all

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus"}


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """(channels × samples float32, sample rate) of an audio file."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return data.T, rate
    except soundfile.LibsndfileError:
        return _read_with_pyav(path)


def _read_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        to_planar_float = av.AudioResampler(format="fltp")
        chunks = [resampled.to_ndarray() for frame in container.decode(stream)
                  for resampled in to_planar_float.resample(frame)]
        if not chunks:
            raise ValueError("no audio could be decoded")
        return np.concatenate(chunks, axis=1).astype(np.float32), stream.rate


def load_audio_clips(location: Path, *, sample_rate: int, clip_length: int, clip_stride: int,
                     peak_normalize: bool = True, max_clips: int | None = None,
                     on_corrupt: OnCorrupt = "skip"
                     ) -> tuple[torch.Tensor, list[Path], list[Skipped]]:
    """Clips of `clip_length` samples at `sample_rate`, every `clip_stride` samples, from one
    audio file or every audio file under a folder (clips never span two files).

    With `peak_normalize` each file is scaled so its largest magnitude is 0.95, so quiet and
    loud recordings use the generator's (tanh) range alike.
    """
    if clip_length < 1 or clip_stride < 1 or sample_rate < 1:
        raise SourceError(f"clip_length={clip_length}, clip_stride={clip_stride} and "
                          f"sample_rate={sample_rate} must all be ≥ 1")
    files = find_files(location, AUDIO_SUFFIXES, "audio files")

    def read(path: Path) -> torch.Tensor:
        data, rate = read_audio(path)
        wave = torch.from_numpy(data).mean(0, keepdim=True)  # mono
        if rate != sample_rate:
            wave = torchaudio.functional.resample(wave, rate, sample_rate)
        if wave.shape[1] < clip_length:
            raise ValueError(f"it has {wave.shape[1]} samples at {sample_rate} Hz, fewer than "
                             f"the clip length {clip_length}")
        peak = wave.abs().max()
        if peak_normalize and peak > 0:
            wave = wave * (0.95 / peak)
        return wave.unfold(1, clip_length, clip_stride).transpose(0, 1).contiguous()

    good, skipped = read_all(files, read, on_corrupt=on_corrupt, what="audio")
    clips = torch.cat([c for _, c in good])[:max_clips]
    return clips, [path for path, _ in good], skipped
