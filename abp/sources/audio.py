"""Audio: files read with soundfile (PyAV for what libsndfile cannot read), made mono,
resampled with torchaudio to one rate, and cut into clips N×1×L.

- Channels: a file with several channels (stereo, …) is averaged to mono; `Clips.multichannel`
  lists such files so the manifest can say so.
- Rates: every file is resampled (torchaudio's band-limited sinc) to the data set's
  `sample_rate`; `Clips.file_rates` keeps each file's own rate.
- Short sounds: a file with fewer samples than one clip is left out (one summary warning for
  all of them, each recorded as skipped), unless `pad_short`: then it becomes one clip,
  zero-padded at the end, and `Clips.mask` (bool, N×1×L, True = observed) marks the padding
  as unobserved, so training and evaluation count real samples only.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile
import torch
import torchaudio.functional

from abp.sources.common import (
    Clips,
    OnCorrupt,
    SourceError,
    TooShort,
    find_files,
    gather_clips,
    read_all,
    source_root,
)

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
        chunks = [
            resampled.to_ndarray()
            for frame in container.decode(stream)
            for resampled in to_planar_float.resample(frame)
        ]
        if not chunks:
            raise ValueError("no audio could be decoded")
        return np.concatenate(chunks, axis=1).astype(np.float32), stream.rate


def load_audio_clips(
    location: Path,
    *,
    sample_rate: int,
    clip_length: int,
    clip_stride: int,
    peak_normalize: bool = True,
    pad_short: bool = False,
    max_clips: int | None = None,
    on_corrupt: OnCorrupt = "skip",
) -> Clips:
    """Clips of `clip_length` samples at `sample_rate`, every `clip_stride` samples, from one
    audio file or every audio file under a folder (clips never span two files).

    With `peak_normalize` each file is scaled so its largest magnitude is 0.95, so quiet and
    loud recordings use the generator's (tanh) range alike. With `pad_short` a file shorter
    than one clip becomes one zero-padded clip (see the module docstring).
    """
    if clip_length < 1 or clip_stride < 1 or sample_rate < 1:
        raise SourceError(
            f"clip_length={clip_length}, clip_stride={clip_stride} and "
            f"sample_rate={sample_rate} must all be ≥ 1"
        )
    files = find_files(location, AUDIO_SUFFIXES, "audio files")

    def read(path: Path) -> tuple[torch.Tensor, int, int, int]:
        """(clips, observed samples of the last clip, the file's rate, its channels)"""
        data, rate = read_audio(path)
        wave = torch.from_numpy(data).mean(0, keepdim=True)  # mono
        if rate != sample_rate:
            wave = torchaudio.functional.resample(wave, rate, sample_rate)
        length = wave.shape[1]
        if length == 0 or (length < clip_length and not pad_short):
            raise TooShort(
                f"it has {length} samples at {sample_rate} Hz, fewer than the clip "
                f"length {clip_length} (pad_short: true zero-pads such sounds)"
            )
        peak = wave.abs().max()
        if peak_normalize and peak > 0:
            wave = wave * (0.95 / peak)
        if length < clip_length:
            wave = torch.nn.functional.pad(wave, (0, clip_length - length))
        clips = wave.unfold(1, clip_length, clip_stride).transpose(0, 1).contiguous()
        return clips, min(length, clip_length), rate, data.shape[0]

    good, skipped = read_all(files, read, on_corrupt=on_corrupt, what="audio")
    x, file, start, used = gather_clips(
        [(path, clips) for path, (clips, *_) in good], stride=clip_stride, max_clips=max_clips
    )
    used_files = [good[i] for i in used]
    padded = [
        (k, path)
        for k, (path, (_, observed, _, _)) in enumerate(used_files)
        if observed < clip_length
    ]
    mask = None
    if padded:
        # A padded file has exactly one clip; its padding is the tail past `observed`.
        mask = torch.ones(x.shape, dtype=torch.bool)
        for k, _ in padded:
            observed = used_files[k][1][1]
            mask[file == k, :, observed:] = False
    return Clips(
        x=x,
        file=file,
        start=start,
        files=[path for path, _ in used_files],
        root=source_root(location),
        rate=float(sample_rate),
        file_rates=[float(r) for _, (_, _, r, _) in used_files],
        skipped=skipped,
        mask=mask,
        padded=[path for _, path in padded],
        multichannel=[path for path, (_, _, _, c) in used_files if c > 1],
    )
