"""The idx format that MNIST, Fashion-MNIST, KMNIST and EMNIST ship in (gzipped or not).

An idx file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values, big-endian, in C order.
Image files hold N×rows×columns unsigned bytes (`*-images-idx3-ubyte`); the labels beside them
(`*-labels-idx1-ubyte`) are not read: ABP learns from the images alone.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np


class IdxError(ValueError):
    """A file that is not idx, or not whole (the corrupt-file policy decides: skip or fail)."""


# Type code → element type, as the format defines them (all big-endian).
TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
# The image files of the MNIST family: train-images-idx3-ubyte(.gz), t10k-images-idx3-ubyte,
# emnist-letters-train-images-idx3-ubyte.gz, and the dotted spelling some mirrors use
# (train-images.idx3-ubyte).
IMAGE_FILE = re.compile(r"images[-.]idx3-ubyte(\.gz)?$", re.IGNORECASE)


def is_idx_images(path: Path) -> bool:
    return IMAGE_FILE.search(Path(path).name) is not None


def idx_image_files(location: Path) -> list[Path]:
    """The idx image files at `location`: the file itself if it is one, or those under a
    folder (recursively, sorted by path); [] if there are none. A gzipped file whose
    unzipped copy lies beside it (torchvision's raw/ folders keep both) is left out: the
    same images twice would land on both sides of the split."""
    location = Path(location)
    if location.is_file():
        return [location] if is_idx_images(location) else []
    if not location.is_dir():
        return []
    found = sorted(p for p in location.rglob("*") if p.is_file() and is_idx_images(p))
    plain = set(found)
    return [p for p in found if not (p.suffix.lower() == ".gz" and p.with_suffix("") in plain)]


def read_idx(path: Path) -> np.ndarray:
    """The array in an idx file (gunzipped first if it is gzipped), in native byte order.
    A file that is not idx, or whose size does not match its header, is an IdxError."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise IdxError(f"a damaged gzip file ({error})") from error
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in TYPES:
        raise IdxError(
            f"not an idx file (its first bytes are {data[:4].hex(' ') or 'missing'}; "
            "idx starts 00 00, a type code 08–0e, the number of dimensions)"
        )
    dtype, ndim = TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"the idx header is cut short ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IdxError(
            f"the header says {'×'.join(map(str, shape))} values of {dtype.itemsize} "
            f"byte(s), {expected} bytes in all, but the file has {len(data)}: truncated or not "
            "this format"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx_images(path: Path, max_images: int | None = None) -> np.ndarray:
    """An idx image file as N×rows×columns uint8 (at most `max_images`)."""
    array = read_idx(path)
    if array.ndim != 3 or array.dtype != np.uint8:
        raise IdxError(
            f"expected images, N×rows×columns unsigned bytes (idx3-ubyte); it holds "
            f"{array.dtype} of shape {array.shape}"
        )
    return array[:max_images]
