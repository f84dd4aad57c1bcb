"""Prepared data sets on disk: the train/test split, content hashes, and atomic folders.

A prepared folder holds `manifest.json` and one file per split (`train.pt`, `test.pt`), each
a dict of tensors: `x` (the complete signals, float32 in [−1, 1], channels first) and, for
incomplete or indirect variants, `mask` (bool, True = observed) or `y` (measurements).
Clips cut from video or audio files also carry `clip_file` (int64, an index into the
manifest's `split.files`) and `clip_start` (int64, the clip's first frame or sample in that
file), which is how anyone can check that no test clip overlaps a training clip.
The folder is written under a temporary name and renamed into place, so a failed or
interrupted preparation never leaves a half-written folder that DVC could cache as valid.

Held-out means held out: clips overlap (a stride shorter than the clip), so drawing the
test clips at random would put most of a test clip's samples in training too.
`split_by_source` keeps them apart:

- by file, when there are at least 1/test_fraction files (5 at test_fraction 0.2): files
  are drawn at random (from split_seed) and the test side takes whole files, as many as
  brings its share of the clips nearest to test_fraction;
- by time, with fewer files (one file, such as the bundled bikes.mp4 and speech.wav, or
  too few files for the fraction, where whole files would put far more or far fewer clips
  on the test side): the last test_fraction of each file's clips is its test stretch, and
  its training clips end at least one clip length before that stretch begins (the gap), so
  no test clip shares a frame or sample with a training clip, nor touches one. split_seed
  does not move the stretch: it is always the end of each file.

Images are one example per file, so `split_indices` over the images is already a split by
file (and leaves the bundled image sets, which are arrays, as they always were).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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


def split_by_source(
    file: torch.Tensor,
    start: torch.Tensor,
    *,
    names: list[str],
    clip_length: int,
    test_fraction: float,
    seed: int,
    unit: str,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Train and test indices of clips cut from `names` (clip i from file `file[i]`, first
    frame or sample `start[i]`), split by file or by time as the module docstring says, and
    what the manifest records about it. Raises ValueError when a side would be empty."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in [0, 1)")
    n = len(file)
    if test_fraction == 0:
        return (
            torch.arange(n),
            torch.arange(0),
            {"by": "none", "files": names, "train_files": names, "test_files": []},
        )
    if len(names) * test_fraction >= 1 - 1e-9:
        is_test, record = _split_by_file(file, names, test_fraction, seed)
        is_train = ~is_test
    else:
        is_test, is_train, record = _split_by_time(
            file, start, names, clip_length, test_fraction, unit
        )
        if not is_train.any() or not is_test.any():
            side = "training" if not is_train.any() else "test"
            raise ValueError(
                f"test_fraction={test_fraction}: {len(names)} file(s) with {n} "
                f"clips, split by time with a gap of {clip_length} {unit}, leave "
                f"no {side} clip; use a longer source, shorter clips or a larger "
                "stride, or another test_fraction (0 for no test split)"
            )
        record["unused_clips"] = int(n - is_train.sum() - is_test.sum())  # those in the gaps
    train, test = is_train.nonzero().squeeze(1), is_test.nonzero().squeeze(1)
    record["test_share"] = round(len(test) / (len(train) + len(test)), 4)
    return train, test, record


def _split_by_file(
    file: torch.Tensor, names: list[str], test_fraction: float, seed: int
) -> tuple[torch.Tensor, dict[str, Any]]:
    counts = torch.bincount(file, minlength=len(names))
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))
    # The test side takes the first k files of the random order, k from 1 to all but one,
    # whichever puts its share of the clips nearest to test_fraction.
    taken = counts[order].cumsum(0)[:-1].double()
    k = int((taken - test_fraction * len(file)).abs().argmin()) + 1
    test_files = set(order[:k].tolist())
    record = {
        "by": "file",
        "files": names,
        "train_files": [m for i, m in enumerate(names) if i not in test_files],
        "test_files": [m for i, m in enumerate(names) if i in test_files],
    }
    return torch.isin(file, order[:k]), record


def _split_by_time(
    file: torch.Tensor,
    start: torch.Tensor,
    names: list[str],
    clip_length: int,
    test_fraction: float,
    unit: str,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    is_test = torch.zeros(len(file), dtype=torch.bool)
    is_train = torch.zeros(len(file), dtype=torch.bool)
    gap = clip_length
    stretches = []
    for index, name in enumerate(names):
        ids = (file == index).nonzero().squeeze(1)
        ids = ids[start[ids].argsort()]
        n_test = round(test_fraction * len(ids))
        test_ids = ids[len(ids) - n_test :]
        test_from = int(start[test_ids[0]]) if n_test else None
        train_ids = ids if test_from is None else ids[start[ids] + clip_length + gap <= test_from]
        is_test[test_ids], is_train[train_ids] = True, True
        stretches.append(
            {
                "file": name,
                "train": _extent(start[train_ids], clip_length),
                "test": _extent(start[test_ids], clip_length),
            }
        )
    record = {
        "by": "time",
        "files": names,
        "train_files": [s["file"] for s in stretches if s["train"]],
        "test_files": [s["file"] for s in stretches if s["test"]],
        "gap": gap,
        "unit": unit,
        "stretches": stretches,
    }
    return is_test, is_train, record


def _extent(starts: torch.Tensor, clip_length: int) -> list[int] | None:
    """[first start, last end) of some clips of one file, or None for no clip."""
    return [int(starts.min()), int(starts.max()) + clip_length] if len(starts) else None


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


def write_prepared(
    folder: Path, splits: dict[str, dict[str, torch.Tensor]], manifest: dict[str, Any]
) -> Path:
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
    return DataError(
        f"{path} cannot be read ({reason}): it is damaged. Prepare it again: "
        f"python -m flows.prepare {path.parent.name} (or dvc repro --force on the "
        "stage that writes it)"
    )


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
    except Exception as error:  # noqa: BLE001 - truncated archive, garbage, refused unpickling, …
        raise _damaged(path, error) from None


def observations(
    tensors: dict[str, torch.Tensor], manifest: dict[str, Any]
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
