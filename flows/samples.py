"""Turning signals into media files and MLflow records, per kind of data.

- images: a PNG grid (MLflow image with `step`, so the UI shows progress epoch by epoch);
- video: an mp4 of the clips side by side, looped to last at least 3 s, plus a PNG grid of
  their frames;
- audio: one wav of the clips one after another (short silences between, repeated to at
  least 3 s, peaking at a listenable level) plus a PNG of their spectrograms with axes in
  seconds and hertz.

`write_comparison` shows the same examples as several methods give them (truth, observed,
ABP's recovery, PCA's, …), one labelled row per method; `shown_examples` picks which.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from abp import media

COMPARED_EXAMPLES = {"image": 8, "video": 3, "audio": 3}  # columns a comparison shows


def write_media(
    signals: torch.Tensor,
    kind: str,
    folder: Path,
    stem: str,
    *,
    fps: float = 8,
    sample_rate: int = 8000,
    max_sounds: int = 4,
    sound_and_video_folder: Path | None = None,
) -> list[Path]:
    """Write `signals` as media files named <stem>… in `folder` (PNG pictures) and in
    `sound_and_video_folder` (mp4 and wav; `folder` too if None); return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    other = sound_and_video_folder or folder  # made by the mp4 and wav writers, if needed
    if kind == "image":
        return [media.save_png(media.image_grid(signals), folder / f"{stem}.png")]
    if kind == "video":
        return [
            media.write_mp4(signals, other / f"{stem}.mp4", fps=fps),
            media.save_png(media.clip_frames_grid(signals), folder / f"{stem}_frames.png"),
        ]
    if kind == "audio":  # one gain for the file: the loudest sound peaks at PEAK_DBFS
        sounds = signals[:max_sounds]
        return [
            media.write_wav(
                media.joined_sounds(sounds, sample_rate=sample_rate),
                other / f"{stem}.wav",
                sample_rate=sample_rate,
            ),
            spectrograms({stem: sounds}, sample_rate, folder / f"{stem}_spectrograms.png"),
        ]
    raise ValueError(f"no media for kind {kind!r}")


def write_comparison(
    rows: dict[str, torch.Tensor],
    kind: str,
    folder: Path,
    stem: str,
    *,
    fps: float = 8,
    sample_rate: int = 8000,
    sound_and_video_folder: Path | None = None,
) -> list[Path]:
    """The same examples by several methods, `rows` = {label: signals}, one labelled row per
    method: images as one PNG; video as a PNG of frames (for each clip, one row per method,
    time left to right) and an mp4 (a row per method, a column per clip); sound as a PNG of
    spectrograms (a row per method, a column per clip) and a wav that plays each clip as each
    method gives it, in the rows' order, every version of a clip raised by the gain that
    brings the first row's (the truth's) to a listenable peak: each clip is heard well, and
    which method's version is louder stays true."""
    folder.mkdir(parents=True, exist_ok=True)
    other = sound_and_video_folder or folder
    n = min(COMPARED_EXAMPLES[kind], *(len(r) for r in rows.values()))
    labels, signals = list(rows), [r[:n].float().cpu() for r in rows.values()]
    if kind == "image":
        return [media.save_png(media.side_by_side(*signals, labels=labels), folder / f"{stem}.png")]
    if kind == "video":
        per_clip = torch.cat([media.frames_of(s[i : i + 1]) for i in range(n) for s in signals])
        row_labels = [f"#{i + 1} {label}" for i in range(n) for label in labels]
        frames = media.labelled_grid(per_clip, row_labels, ncol=signals[0].shape[2])
        return [
            media.save_png(frames, folder / f"{stem}.png"),
            media.write_mp4(
                torch.cat(signals), other / f"{stem}.mp4", fps=fps, ncol=n, labels=labels
            ),
        ]
    if kind == "audio":
        gains = [media.peak_gain(signals[0][i]) for i in range(n)]
        in_turn = torch.stack([s[i] * gains[i] for i in range(n) for s in signals])
        return [
            spectrograms(dict(zip(labels, signals)), sample_rate, folder / f"{stem}.png"),
            media.write_wav(
                media.joined_sounds(in_turn, sample_rate=sample_rate),
                other / f"{stem}.wav",
                sample_rate=sample_rate,
                gain=1.0,
            ),
        ]
    raise ValueError(f"no media for kind {kind!r}")


def shown_examples(kind: str, truth: torch.Tensor) -> list[int]:
    """Which examples a comparison shows, in their split's order: the first ones for images;
    for sound and video the ones that carry the most signal (media.rms), never a silent
    pause or a still frame while livelier examples exist. Deterministic: ties go to the
    earlier example."""
    n = min(COMPARED_EXAMPLES[kind], len(truth))
    if kind == "image":
        return list(range(n))
    order = torch.sort(media.rms(truth), descending=True, stable=True).indices
    return sorted(order[:n].tolist())


def spectrograms(rows: dict[str, torch.Tensor], sample_rate: int, path: Path) -> Path:
    """Spectrograms of sounds, a row of them per label, with time in seconds and frequency in
    hertz on the axes; one colour scale (dB) for all, so quieter rows look darker."""
    # Here, not at the top: only sound needs it, and importing matplotlib costs every
    # training process half a second (a pipeline starts sixteen).
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display

    decibels = {label: [media.spectrogram_db(w) for w in waves] for label, waves in rows.items()}
    top = max(float(s.max()) for row in decibels.values() for s in row)
    n_rows, n_cols = len(rows), max(len(row) for row in decibels.values())
    fig = Figure(figsize=(3.2 * n_cols + 0.8, 2.2 * n_rows + 0.4), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True)
    for r, (label, row) in enumerate(decibels.items()):
        for c, ax in enumerate(axes[r]):
            if c >= len(row):
                ax.set_visible(False)
                continue
            seconds = rows[label][c].numel() / sample_rate
            image = ax.imshow(
                row[c],
                origin="lower",
                aspect="auto",
                cmap="magma",
                vmin=top - 80,
                vmax=top,
                extent=(0, seconds, 0, sample_rate / 2),
            )
            ax.set_title(f"#{c + 1} {label}" if n_cols > 1 else label, fontsize=9)
            if c == 0:
                ax.set_ylabel("frequency (Hz)")
            if r == n_rows - 1:
                ax.set_xlabel("time (s)")
    fig.colorbar(image, ax=axes, label="dB", shrink=0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


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
