"""Turning signals into media files and MLflow records, per kind of data.

- images: a PNG grid (MLflow image with `step`, so the UI shows progress epoch by epoch);
- video: an mp4 of the clips side by side plus a PNG grid of their frames;
- audio: wav files plus a PNG of their spectrograms.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from abp import media


def write_media(signals: torch.Tensor, kind: str, folder: Path, stem: str, *,
                fps: float = 8, sample_rate: int = 8000, max_sounds: int = 4,
                sound_and_video_folder: Path | None = None) -> list[Path]:
    """Write `signals` as media files named <stem>… in `folder` (PNG pictures) and in
    `sound_and_video_folder` (mp4 and wav; `folder` too if None); return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    other = sound_and_video_folder or folder
    other.mkdir(parents=True, exist_ok=True)
    if kind == "image":
        return [media.save_png(media.image_grid(signals), folder / f"{stem}.png")]
    if kind == "video":
        return [media.write_mp4(signals, other / f"{stem}.mp4", fps=fps),
                media.save_png(media.clip_frames_grid(signals), folder / f"{stem}_frames.png")]
    if kind == "audio":
        sounds = [media.write_wav(s, other / f"{stem}_{i}.wav", sample_rate=sample_rate)
                  for i, s in enumerate(signals[:max_sounds])]
        spectra = torch.stack([torch.from_numpy(media.spectrogram(s)).float() / 127.5 - 1
                               for s in signals[:max_sounds]]).unsqueeze(1)
        return sounds + [media.save_png(media.image_grid(spectra, ncol=1),
                                        folder / f"{stem}_spectrograms.png")]
    raise ValueError(f"no media for kind {kind!r}")


def log_media(signals: torch.Tensor, kind: str, key: str, step: int, recorder, **options) -> None:
    """Log signals to the recorder's MLflow run (flows.recorder.TrackingRecorder): images as
    a stepped image series, video and audio as files under media/<key>/step_<step>/ (with
    their PNG as a stepped image)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = write_media(signals, kind, Path(tmp), key, **options)
        for path in files:
            if path.suffix == ".png":
                recorder.log_image(path, key=path.stem, step=step)
            else:
                recorder.log_artifact(path, artifact_path=f"media/{key}/step_{step:05d}")
