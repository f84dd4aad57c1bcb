"""Writing signals as media a person can look at or listen to: image grids (PNG), video
(mp4, H.264 via PyAV), sound (wav via soundfile) and spectrograms (PNG).

Signals are in [−1, 1] as everywhere in the project.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
from PIL import Image


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
        grid[top:top + h, left:left + w] = pixels[i].transpose(1, 2, 0)
    return grid


def side_by_side(*rows: torch.Tensor) -> np.ndarray:
    """Rows of images (e.g. data, observed, recovered), one row per tensor, as one grid."""
    n = rows[0].shape[0]
    interleaved = torch.cat([r[:n].float().cpu() for r in rows])
    return image_grid(interleaved, ncol=n)


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
    n, c, t, h, w = clips.shape
    return image_grid(clips.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w), ncol=t)


def write_mp4(clips: torch.Tensor, path: Path, *, fps: float = 8, min_side: int = 128) -> Path:
    """N×C×T×H×W clips → one H.264 mp4 showing the clips side by side, frame by frame."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [image_grid(clips[:, :, t]) for t in range(clips.shape[2])]
    scale = max(1, math.ceil(min_side / min(frames[0].shape[:2])))
    height, width = (2 * math.ceil(s * scale / 2) for s in frames[0].shape[:2])  # even sides
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            image = Image.fromarray(frame).resize((width, height), Image.Resampling.NEAREST)
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_wav(wave: torch.Tensor, path: Path, *, sample_rate: int) -> Path:
    """A 1×L (or L) waveform → 16-bit wav."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wave.detach().float().cpu().reshape(-1).clamp(-1, 1).numpy(),
                    int(sample_rate), subtype="PCM_16")
    return path


def spectrogram(wave: torch.Tensor, *, n_fft: int = 256) -> np.ndarray:
    """Log-magnitude spectrogram of a waveform as a uint8 image, low frequencies at the bottom."""
    signal = wave.detach().float().cpu().reshape(-1)
    window = torch.hann_window(n_fft)
    magnitude = torch.stft(signal, n_fft, hop_length=n_fft // 4, window=window,
                           return_complex=True).abs()
    decibels = 20 * torch.log10(magnitude + 1e-6)
    decibels = decibels.clamp(min=decibels.max() - 80)  # 80 dB of dynamic range
    scaled = (decibels - decibels.min()) / (decibels.max() - decibels.min() + 1e-12)
    return (scaled.flip(0) * 255).round().to(torch.uint8).numpy()
