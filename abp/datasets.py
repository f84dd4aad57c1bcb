"""Prepared data sets on disk: the train/test split, content hashes, and atomic folders.

A prepared folder holds `manifest.json` and one `.npy` file per array of each split,
`<split>.<array>.npy` (`train.x.npy`, `train.mask.npy`, `test.x.npy`, …):

- `x`, the complete signals, channels first, in [−1, 1]: images and video frames as uint8
  (they come from 8-bit pixels), audio as int16;
- `mask` (bool, True = observed) for incomplete variants, or `y` (float32 measurements) for
  indirect ones, with `a_seed` (int64) when each example was measured through its own
  matrix (the seed it is drawn from);
- for clips cut from video or audio files, `clip_file` (int64, an index into the manifest's
  `split.files`) and `clip_start` (int64, the clip's first frame or sample in that file),
  which is how anyone can check that no test clip overlaps a training clip;
- for patches cropped from images (flows.prepare, `patches:`), `patch_image` (int64, the
  image each came from, in the source's order) and `patch_corner` (int64 row and column of
  its top-left corner in the image as resized), so that anyone can check that no test patch
  comes from an image that training patches come from.

The manifest's `arrays` says, per split and array, its `file`, `dtype`, `shape`, `scale`
and `offset`; `decode` is the one definition of the values: float32 `stored · scale +
offset` (bool and int64 arrays are their values). A prepared signal *is* its decoded stored
form: flows.prepare quantizes the signals (`quantize`) before they are split, trained on or
varied, so training sees exactly what is on disk, and `write_prepared` refuses a signal that
its encoding would change. `open_split` maps the files into memory, so that reading a few
examples by id reads only those rows; `read_split` decodes whole splits. The manifest's
`files` holds each file's sha256.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abp.data import Examples, Occluded
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


@dataclass(frozen=True)
class Encoding:
    """How a float32 array is stored: as `dtype`, with value = stored · scale + offset."""

    dtype: str
    scale: float = 1.0
    offset: float = 0.0


# 8-bit pixels p in 0…255 are the values p·2/255 − 1: 0 is −1 and 255 is 1 exactly.
PIXELS = Encoding("uint8", 2 / 255, -1.0)
# 16-bit samples s are s/32768: a power of two, so decoding is exact and [−1, 1) fits.
SAMPLES = Encoding("int16", 2**-15, 0.0)
FLOAT32 = Encoding("float32")  # measurements, and any signal that was not quantized
SIGNAL_ENCODINGS = {"image": PIXELS, "video": PIXELS, "audio": SAMPLES}
# Masks and clip indices are stored as they are, whatever encoding a caller names.
AS_THEY_ARE: dict[torch.dtype, Encoding] = {
    torch.bool: Encoding("bool"),
    torch.int64: Encoding("int64"),
}


def decode(stored: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """The values of stored data, the one definition used everywhere: float32 stored · scale
    + offset, in float32 arithmetic; bool and int64 arrays are their values. Always a new
    tensor, never a view of a file."""
    if stored.dtype in AS_THEY_ARE:
        return stored.clone()
    scale_32 = torch.tensor(scale, dtype=torch.float32)
    offset_32 = torch.tensor(offset, dtype=torch.float32)
    return stored.to(torch.float32) * scale_32 + offset_32


def encode(x: torch.Tensor, encoding: Encoding) -> torch.Tensor:
    """The stored form of x: rounded to the nearest step of the encoding and clipped to its
    dtype's range. Lossy for values off the grid: see `quantize`."""
    dtype = getattr(torch, encoding.dtype)
    if dtype.is_floating_point or dtype in AS_THEY_ARE:
        return x.to(dtype)
    steps = torch.round((x.double() - encoding.offset) / encoding.scale)
    return steps.clamp(torch.iinfo(dtype).min, torch.iinfo(dtype).max).to(dtype)


def quantize(x: torch.Tensor, encoding: Encoding) -> torch.Tensor:
    """x on the encoding's grid: what writing and reading it gives back."""
    return decode(encode(x, encoding), encoding.scale, encoding.offset)


@dataclass(frozen=True)
class Stored:
    """One array of a prepared split as stored: `array` shares memory with the file (nothing
    is read until it is indexed), and its values are decode(array, scale, offset)."""

    array: torch.Tensor
    scale: float = 1.0
    offset: float = 0.0

    def __len__(self) -> int:
        return len(self.array)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The decoded examples `ids` (reading only their rows of the file)."""
        return decode(self.array[ids], self.scale, self.offset)

    def decoded(self) -> torch.Tensor:
        return decode(self.array, self.scale, self.offset)


def array_file(split: str, key: str) -> str:
    return f"{split}.{key}.npy"


def _stored_form(
    name: str, tensor: torch.Tensor, encoding: Encoding
) -> tuple[np.ndarray, Encoding]:
    """The array to write for `tensor` and its encoding, refusing a lossy one: the data set
    is what is stored, so a signal off its encoding's grid must be quantized first."""
    encoding = AS_THEY_ARE.get(tensor.dtype, encoding)
    stored = encode(tensor, encoding)
    if stored.dtype != tensor.dtype and not torch.equal(
        decode(stored, encoding.scale, encoding.offset), tensor
    ):
        raise ValueError(
            f"{name} ({tensor.dtype}) is not exactly representable as {encoding}: quantize it "
            "first (abp.datasets.quantize), so that training sees what is stored"
        )
    return stored.contiguous().numpy(), encoding


def write_prepared(
    folder: Path,
    splits: dict[str, dict[str, torch.Tensor]],
    manifest: dict[str, Any],
    encodings: dict[str, Encoding] | None = None,
) -> Path:
    """Write every array of every split as its own .npy file, float arrays in the encoding
    named for them (`encodings`, by array name; default float32), and the manifest (each
    array's encoding under `arrays`, each file's sha256 under `files`), atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder.parent)  # what a killed preparation left behind
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=partial_prefix(folder)))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the data set is not
        arrays: dict[str, dict[str, Any]] = {}
        files = {}
        for split, tensors in splits.items():
            arrays[split] = {}
            for key, tensor in tensors.items():
                name = array_file(split, key)
                stored, encoding = _stored_form(name, tensor, (encodings or {}).get(key, FLOAT32))
                np.save(tmp / name, stored, allow_pickle=False)
                arrays[split][key] = {
                    "file": name,
                    "shape": list(stored.shape),
                    **asdict(encoding),
                }
                files[name] = sha256_files([tmp / name])
        manifest = {**manifest, "arrays": arrays, "files": files}
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


def encodings_of(folder: Path, split: str = "train") -> dict[str, Encoding]:
    """The encoding of each array of a prepared split, as write_prepared takes them (so that
    a variant stores its signals as its base does)."""
    return {
        key: Encoding(entry["dtype"], entry["scale"], entry["offset"])
        for key, entry in _arrays(Path(folder), split).items()
    }


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


def _arrays(folder: Path, split: str) -> dict[str, Any]:
    """The manifest's record of a split's arrays; a clear error for the old format (one
    train.pt and test.pt per folder, no `arrays`) or a split that was not prepared."""
    manifest = read_manifest(folder)
    if "arrays" not in manifest:
        raise DataError(
            f"{folder} holds prepared data in an old format (train.pt, test.pt; the manifest "
            "has no `arrays`): prepared data are now one .npy file per array. Prepare it "
            f"again: dvc repro (or python -m flows.prepare {folder.name})"
        )
    if split not in manifest["arrays"]:
        raise FileNotFoundError(
            f"{folder} has no {split} split: prepare the data set first (dvc repro)"
        )
    return manifest["arrays"][split]


def _open_array(path: Path, entry: dict[str, Any]) -> Stored:
    try:
        # mmap_mode="c" (copy on write) makes a writable array, so torch.from_numpy shares
        # it without a warning, and a write to it never reaches the file.
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # missing, truncated, not a .npy, …
        raise _damaged(path, error) from None
    if not isinstance(array, np.ndarray):  # an .npz archive in its place
        raise _damaged(path, ValueError("not a single array"))
    found, expected = (str(array.dtype), list(array.shape)), (entry["dtype"], entry["shape"])
    if found != expected:
        raise _damaged(path, ValueError(f"{found}, where the manifest says {expected}"))
    return Stored(torch.from_numpy(array), float(entry["scale"]), float(entry["offset"]))


def open_split(folder: Path, split: str) -> dict[str, Stored]:
    """The arrays of a prepared split, mapped into memory: `[key].rows(ids)` reads and
    decodes just those examples."""
    folder = Path(folder)
    return {
        key: _open_array(folder / entry["file"], entry)
        for key, entry in _arrays(folder, split).items()
    }


def read_split(folder: Path, split: str) -> dict[str, torch.Tensor]:
    """A whole prepared split, decoded: float32 signals and measurements, bool masks, int64
    clip indices."""
    return {key: stored.decoded() for key, stored in open_split(folder, split).items()}


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
        return tensors["y"], operator_from_spec(manifest["operator"], tensors.get("a_seed"))
    return tensors["x"], Identity()


def training_examples(
    folder: Path, split: str, manifest: dict[str, Any]
) -> tuple[Examples, Observation]:
    """What `observations` gives, read per example from the memory-mapped files instead of
    decoded whole: a trainer gathers each batch by example id (abp.data), or decodes it all
    when the data are to be held on its device."""
    stored = open_split(folder, split)
    if "mask" in stored:
        return Occluded(stored["x"], stored["mask"]), Mask(stored["mask"].array)
    if "y" in stored:
        seeds = stored["a_seed"].decoded() if "a_seed" in stored else None
        return stored["y"], operator_from_spec(manifest["operator"], seeds)
    return stored["x"], Identity()
