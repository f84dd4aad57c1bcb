"""Images: a folder of files any PIL can read, idx files (the MNIST family), or arrays, into
N×C×H×W tensors in [−1, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from abp.sources.common import OnCorrupt, Skipped, SourceError, find_files, read_all
from abp.sources.idx import idx_image_files, read_idx_images

Crop = Literal["center", "none"]


def image_suffixes() -> set[str]:
    return set(Image.registered_extensions())


def to_tensor(
    image: Image.Image, *, size: int, channels: int, crop: Crop = "center"
) -> torch.Tensor:
    """One PIL image → C×size×size float32 in [−1, 1]: center-cropped to a square (or
    squeezed, with crop="none"), resized, converted to grayscale (C=1) or RGB (C=3)."""
    if channels not in (1, 3):
        raise SourceError(f"channels={channels}: use 1 (grayscale) or 3 (RGB)")
    image = image.convert("L" if channels == 1 else "RGB")
    if crop == "center":
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    image = image.resize(
        (size, size),
        Image.Resampling.LANCZOS if size < min(image.size) else Image.Resampling.BICUBIC,
    )
    array = np.asarray(image, dtype=np.float32).reshape(size, size, channels)
    return torch.from_numpy(array / 127.5 - 1).permute(2, 0, 1).contiguous()


def array_to_image(array: np.ndarray) -> Image.Image:
    """An image array (H×W or H×W×C; uint8, or float/bool in [0, 1]) → PIL image."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]  # drop alpha
    return Image.fromarray(array)


def _read_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()  # decode now, so a truncated file fails here and is skipped
        return image.copy()


def load_image_folder(
    folder: Path,
    *,
    size: int,
    channels: int,
    crop: Crop = "center",
    max_images: int | None = None,
    on_corrupt: OnCorrupt = "skip",
) -> tuple[torch.Tensor, list[Path], list[Skipped]]:
    """All images under `folder` (recursively, sorted by path; at most `max_images`).
    Returns (N×C×size×size tensor, the files used, the files skipped)."""
    files = find_files(folder, image_suffixes(), "image files")
    if max_images is not None:
        files = files[:max_images]
    good, skipped = read_all(files, _read_image, on_corrupt=on_corrupt, what="image")
    images = torch.stack(
        [to_tensor(img, size=size, channels=channels, crop=crop) for _, img in good]
    )
    return images, [path for path, _ in good], skipped


def load_idx_images(
    location: Path,
    *,
    size: int,
    channels: int,
    crop: Crop = "center",
    transpose: bool = False,
    max_images: int | None = None,
    on_corrupt: OnCorrupt = "skip",
) -> tuple[torch.Tensor, list[Path], list[Skipped]]:
    """The images of the idx image files at `location` (one file, or every one under a
    folder, in sorted path order; at most `max_images` in all), each like an image file:
    cropped, resized, grayscale or RGB. `transpose` swaps rows and columns (EMNIST stores its
    images transposed). Returns (N×C×size×size tensor, the files used, the files skipped)."""
    files = idx_image_files(location)
    if not files:
        raise SourceError(
            f"{location}: no idx image files there (names ending images-idx3-ubyte, optionally .gz)"
        )
    good, skipped = read_all(files, read_idx_images, on_corrupt=on_corrupt, what="idx image")
    arrays: list[np.ndarray] = []
    used: list[Path] = []
    for path, in_file in good:
        wanted = in_file if max_images is None else in_file[: max_images - len(arrays)]
        if len(wanted):
            arrays.extend(image.T if transpose else image for image in wanted)
            used.append(path)
        if max_images is not None and len(arrays) >= max_images:
            break
    if not arrays:
        raise SourceError(f"{location}: the idx image files hold no images")
    return images_from_arrays(arrays, size=size, channels=channels, crop=crop), used, skipped


def images_from_arrays(
    arrays: Sequence[np.ndarray], *, size: int, channels: int, crop: Crop = "center"
) -> torch.Tensor:
    return torch.stack(
        [to_tensor(array_to_image(a), size=size, channels=channels, crop=crop) for a in arrays]
    )


def random_patches(
    images: torch.Tensor, *, count: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`count` square crops of side `size` from each image of N×C×H×W, their corners drawn
    uniformly (seeded). Returns (N·count×C×size×size crops, the image each came from
    (int64), their top-left corners (N·count×2 int64: row, column))."""
    n, _, height, width = images.shape
    if size > min(height, width):
        raise SourceError(f"patches of {size}×{size} do not fit in {height}×{width} images")
    rng = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, height - size + 1, (n, count), generator=rng)
    columns = torch.randint(0, width - size + 1, (n, count), generator=rng)
    crops = [
        images[i, :, r : r + size, c : c + size]
        for i in range(n)
        for r, c in zip(rows[i].tolist(), columns[i].tolist(), strict=True)
    ]
    image = torch.arange(n).repeat_interleave(count)
    corners = torch.stack([rows.flatten(), columns.flatten()], dim=1)
    return torch.stack(crops), image, corners
