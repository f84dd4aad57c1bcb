"""Prepared data sets on disk: the train/test split, content hashes, and atomic folders.

A prepared folder holds `manifest.json` and one file per split (`train.pt`, `test.pt`), each
a dict of tensors: `x` (the complete signals, float32 in [−1, 1], channels first) and, for
incomplete or indirect variants, `mask` (bool, True = observed) or `y` (measurements).
The folder is written under a temporary name and renamed into place, so a failed or
interrupted preparation never leaves a half-written folder that DVC could cache as valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from abp.files import partial_prefix, remove_stale_partials
from abp.observe import Identity, Mask, Observation
from abp.variants import operator_from_spec

SPLITS = ("train", "test")


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random train/test split of n examples (sorted indices), reproducible from the seed."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in [0, 1)")
    n_test = round(test_fraction * n)
    if test_fraction > 0 and not 1 <= n_test < n:
        raise ValueError(f"test_fraction={test_fraction} of {n} examples leaves an empty split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_test:].sort().values, order[:n_test].sort().values


def sha256_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """One digest over the files' relative names and contents."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        name = str(path.relative_to(root)) if root and path.is_relative_to(root) else path.name
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_arrays(arrays: Iterable[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def write_prepared(folder: Path, splits: dict[str, dict[str, torch.Tensor]],
                   manifest: dict[str, Any]) -> Path:
    """Write the split files and the manifest (with each file's sha256) atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder.parent)  # what a killed preparation left behind
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=partial_prefix(folder)))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the data set is not
        files = {}
        for split, tensors in splits.items():
            torch.save({k: v.contiguous() for k, v in tensors.items()}, tmp / f"{split}.pt")
            files[f"{split}.pt"] = sha256_files([tmp / f"{split}.pt"])
        manifest = {**manifest, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=partial_prefix(folder)))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


class DataError(ValueError):
    """A prepared file that cannot be read; the message names it and how to remake it."""


def _damaged(path: Path, error: Exception) -> DataError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return DataError(f"{path} cannot be read ({reason}): it is damaged. Prepare it again: "
                     f"python -m flows.prepare {path.parent.name} (or dvc repro --force on the "
                     "stage that writes it)")


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: prepare the data set first (dvc repro)")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise _damaged(path, error) from None


def read_split(folder: Path, split: str) -> dict[str, torch.Tensor]:
    path = Path(folder) / f"{split}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: prepare the data set first (dvc repro)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated archive, garbage, refused unpickling, …
        raise _damaged(path, error) from None


def observations(tensors: dict[str, torch.Tensor], manifest: dict[str, Any]
                 ) -> tuple[torch.Tensor, Observation]:
    """What a model may learn from in a prepared split, and the operator that produced it:
    (x, Identity) for complete data, (m ⊙ x, Mask) for occluded data, (y, A) for compressed
    measurements. The complete x stays out of learning; it is only for evaluation."""
    if "mask" in tensors:
        mask = tensors["mask"]
        return tensors["x"] * mask, Mask(mask)
    if "y" in tensors:
        return tensors["y"], operator_from_spec(manifest["operator"])
    return tensors["x"], Identity()
