"""Small real media files written by the tests themselves (PIL, PyAV, soundfile, and idx
files written byte by byte as the MNIST format defines them)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image


def write_images(
    folder: Path, n: int, size=(40, 30), mode="RGB", suffix=".png", seed=0
) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        path = folder / f"img{i:03d}{suffix}"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
        paths.append(path)
    return paths


def write_video(path: Path, n_frames: int, size=(48, 32), fps=10) -> Path:
    """An H.264 mp4 whose frame i is a flat gray of level 20·i (mod 256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n_frames):
            image = np.full((size[1], size[0], 3), (20 * i) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_tone(path: Path, seconds: float, rate: int, channels: int = 1, freq=440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    soundfile.write(str(path), np.stack([wave] * channels, axis=1), rate)
    return path


# idx type codes (the format's own table): element type → code.
IDX_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """An idx file as MNIST's are written: 00 00, the type code, the number of dimensions,
    each dimension as a big-endian uint32, then the values big-endian in C order."""
    dtype = np.dtype(array.dtype).newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = IDX_CODES[dtype.str.replace("|", "")]
    data = struct.pack(">BBBB", 0, 0, code, array.ndim)
    data += struct.pack(f">{array.ndim}I", *array.shape)
    data += np.ascontiguousarray(array, dtype=dtype).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path
