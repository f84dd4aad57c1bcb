"""Writing signals as media a person can look at or listen to: image grids (PNG, rows
optionally labelled), video (mp4, H.264 via PyAV), sound (wav via soundfile) and
spectrograms (decibels, for a plot with axes).

Signals are in [−1, 1] as everywhere in the project. Clips and sounds are a fraction of a
second long (8 frames at 25 fps, 4096 samples at 8 kHz), so the writers repeat or join them
until a file lasts at least `min_seconds`: long enough to watch or hear. Recorded speech
peaks far below full scale, so what a wav holds is raised to a listenable level (the peak
at PEAK_DBFS); the signals themselves are never changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
from PIL import Image, ImageDraw, ImageFont

MIN_SECONDS = 3.0
PEAK_DBFS = -1.0  # where a normalised wav peaks: loud, with a little headroom
# At most 40 dB of gain: a near-silent sound is a little louder, its rounding noise not a roar.
MAX_GAIN = 100.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def image_grid(images: torch.Tensor, *, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """N×C×H×W → one H'×W'×3 uint8 grid, images in rows of `ncol` (square-ish by default)."""
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    pixels = to_uint8(images if c == 3 else images[:, :1].expand(n, 3, h, w))
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top : top + h, left : left + w] = pixels[i].transpose(1, 2, 0)
    return grid


def labelled_grid(
    images: torch.Tensor,
    labels: Sequence[str] | None,
    *,
    ncol: int,
    min_side: int = 256,
    min_cell: int = 40,
    pad: int = 1,
) -> np.ndarray:
    """image_grid with `ncol` images a row, enlarged (nearest neighbours) so that a cell is at
    least `min_cell` and the grid at least `min_side` pixels high, with each row's label in
    a white margin on its left. The enlargement comes first so that text of a readable size
    fits beside rows of 8×8 digits."""
    grid = image_grid(images, ncol=ncol, pad=pad)
    n_rows = math.ceil(images.shape[0] / ncol)
    cell = images.shape[-2] + pad
    scale = max(1, math.ceil(min_cell / cell), math.ceil(min_side / grid.shape[0]))
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    if not labels:
        return grid
    if len(labels) != n_rows:
        raise ValueError(f"{len(labels)} labels for {n_rows} rows")
    font = ImageFont.load_default(size=max(11, min(18, cell * scale // 3)))
    widths = [ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font) for t in labels]
    margin = math.ceil(max(widths)) + 12
    canvas = Image.new("RGB", (grid.shape[1] + margin, grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate(labels):
        middle = (pad + row * cell + (cell - pad) / 2) * scale
        draw.text((6, middle), text, fill="black", font=font, anchor="lm")
    return np.asarray(canvas)


def side_by_side(*rows: torch.Tensor, labels: Sequence[str] | None = None) -> np.ndarray:
    """Rows of images (e.g. truth, observed, recovered), one row per tensor, as one grid,
    each row labelled if `labels` are given."""
    n = rows[0].shape[0]
    interleaved = torch.cat([r[:n].float().cpu() for r in rows])
    return labelled_grid(interleaved, labels, ncol=n)


def save_png(array: np.ndarray, path: Path, *, min_side: int = 256) -> Path:
    """Save a uint8 image, enlarged with nearest neighbours so that tiny images stay visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    scale = max(1, math.ceil(min_side / max(1, min(image.size))))
    image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST).save(path)
    return path


def clip_frames_grid(clips: torch.Tensor) -> np.ndarray:
    """N×C×T×H×W clips → a grid with one clip per row, its frames left to right."""
    return image_grid(frames_of(clips), ncol=clips.shape[2])


def frames_of(clips: torch.Tensor) -> torch.Tensor:
    """N×C×T×H×W clips → their N·T frames (N·T×C×H×W), each clip's frames in order."""
    n, c, t, h, w = clips.shape
    return clips.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)


def write_mp4(
    clips: torch.Tensor,
    path: Path,
    *,
    fps: float = 8,
    min_side: int = 128,
    ncol: int | None = None,
    labels: Sequence[str] | None = None,
    min_seconds: float = MIN_SECONDS,
) -> Path:
    """N×C×T×H×W clips → one H.264 mp4 showing the clips side by side (`ncol` a row, rows
    labelled if `labels` are given), frame by frame, the whole looped until it lasts at
    least `min_seconds`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, t = clips.shape[0], clips.shape[2]
    ncol = ncol or math.ceil(math.sqrt(n))
    frames = [
        labelled_grid(clips[:, :, i], labels, ncol=ncol, min_side=min_side, min_cell=1)
        for i in range(t)
    ]
    height, width = (2 * math.ceil(s / 2) for s in frames[0].shape[:2])  # H.264: even sides
    rate = max(1, round(fps))
    loops = max(1, math.ceil(min_seconds * rate / t))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        pictures = [
            av.VideoFrame.from_image(
                Image.fromarray(f).resize((width, height), Image.Resampling.NEAREST)
            )
            for f in frames
        ]
        for _ in range(loops):
            for picture in pictures:
                for packet in stream.encode(picture):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def joined_sounds(
    waves: torch.Tensor,
    *,
    sample_rate: int,
    gap_seconds: float = 0.25,
    min_seconds: float = MIN_SECONDS,
) -> torch.Tensor:
    """N sounds (N×1×L or N×L) → one waveform: each followed by `gap_seconds` of silence, the
    sequence repeated until it lasts at least `min_seconds`."""
    waves = waves.detach().float().cpu().reshape(waves.shape[0], -1)
    gap = torch.zeros(waves.shape[0], round(gap_seconds * sample_rate))
    once = torch.cat([waves, gap], dim=1).reshape(-1)
    return once.repeat(max(1, math.ceil(min_seconds * sample_rate / once.numel())))


def rms(signals: torch.Tensor) -> torch.Tensor:
    """Per example (first dimension), the root mean square about its own mean: how much
    signal it carries (silence, a still grey clip: 0)."""
    flat = signals.detach().float().cpu().reshape(signals.shape[0], -1)
    return flat.std(dim=1, correction=0)


def peak_gain(
    wave: torch.Tensor, *, peak_dbfs: float = PEAK_DBFS, max_gain: float = MAX_GAIN
) -> float:
    """The gain that brings the waveform's peak to `peak_dbfs` (at most `max_gain`; 1 for
    silence)."""
    peak = float(wave.detach().float().abs().max()) if wave.numel() else 0.0
    if peak == 0.0:
        return 1.0
    return min(10 ** (peak_dbfs / 20) / peak, max_gain)


def write_wav(
    wave: torch.Tensor, path: Path, *, sample_rate: int, gain: float | None = None
) -> Path:
    """A 1×L (or L) waveform → 16-bit wav, multiplied by `gain`: by default the one that
    brings its peak to PEAK_DBFS (peak_gain). Pass a gain computed from a reference (gain=1
    for sounds already scaled) to keep loudness relative to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = wave.detach().float().cpu().reshape(-1)
    samples = samples * (peak_gain(samples) if gain is None else gain)
    soundfile.write(str(path), samples.clamp(-1, 1).numpy(), int(sample_rate), subtype="PCM_16")
    return path


def duration_seconds(path: Path) -> float:
    """How long an mp4 or wav written here lasts."""
    path = Path(path)
    if path.suffix == ".wav":
        return soundfile.info(str(path)).duration
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        assert rate is not None  # the mp4s written here (write_mp4) have a fixed frame rate
        return float(stream.frames / rate)


def spectrogram_db(wave: torch.Tensor, *, n_fft: int = 256) -> np.ndarray:
    """Log-magnitude spectrogram of a waveform in decibels (at most 80 dB below its peak),
    frequency × time, row 0 the lowest frequency; frames are n_fft/4 samples apart and rows
    span 0 to half the sample rate, for a plot's axes."""
    signal = wave.detach().float().cpu().reshape(-1)
    n_fft = min(n_fft, 2 ** int(math.log2(signal.numel())))  # clips shorter than the window
    window = torch.hann_window(n_fft)
    magnitude = torch.stft(
        signal, n_fft, hop_length=n_fft // 4, window=window, return_complex=True
    ).abs()
    decibels = 20 * torch.log10(magnitude + 1e-6)
    return decibels.clamp(min=decibels.max() - 80).numpy()  # 80 dB of dynamic range


def latent_grid(generator, steps: int = 9, extent: float = 2.0) -> np.ndarray:
    """For a 2-D latent space: g(z) over a steps×steps grid of z in [−extent, extent]²
    (rows: z₂ from top to bottom, columns: z₁), as one image grid."""
    axis = torch.linspace(-extent, extent, steps)
    grid = torch.stack(torch.meshgrid(axis.flip(0), axis, indexing="ij"), -1)  # (z2, z1)
    z = grid.flip(-1).reshape(-1, 2)
    with torch.no_grad():
        return image_grid(generator(z), ncol=steps)
