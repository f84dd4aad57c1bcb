"""Incomplete and indirect versions of a prepared data set.

- occlusion: a per-example mask of observed entries (abp.masks) for images, video or audio;
- compressed measurements: y = A·x with a random Gaussian A, or local block averages; the
  operator is stored as a small spec (kind, shape, seed) and rebuilt by `operator_from_spec`,
  so learning and evaluation use the very same A;
- subsampling: fewer examples, every k-th frame, or every k-th sample.

Images are N×C×H×W, clips N×C×T×H×W, audio N×1×L.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from abp import masks
from abp.observe import LocalAverage, Observation, Projection, SeededProjections


def signal_kind(x: torch.Tensor) -> str:
    return {3: "audio", 4: "image", 5: "video"}[x.dim()]


class UnfitSetting(ValueError):
    """A variant setting that does not fit the data it is applied to. `key` names the
    setting, so that the caller can point at it in the params file."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _kind_of_shape(signal_shape: Sequence[int]) -> str:
    return {2: "audio", 3: "image", 4: "video"}[len(signal_shape)]


def _fits_at_64(size: int, side: int, largest: int) -> bool:
    return size >= 1 and masks.scaled_to(size, side) <= largest


def _range_at_64(side: int, largest: int) -> str:
    """The sizes on the 64×64 scale that come out between 1 and `largest` at this side."""
    fitting = [s for s in range(1, 65) if _fits_at_64(s, side, largest)]
    return f"from 1 to {fitting[-1]}" if fitting else "none (the signals are too small)"


def check_occlusion(
    signal_shape: Sequence[int],
    *,
    pattern: str,
    hidden_fraction: float | None = None,
    block: int | None = None,
    side: int | None = None,
) -> None:
    """Raise UnfitSetting (naming the setting, with the value given and what would fit) unless
    the occlusion can be drawn on signals of this shape (one example: C×H×W, C×T×H×W, C×L)."""
    need = {
        "salt_pepper": ("image", "hidden_fraction", "block"),
        "square": ("image", "side"),
        "missing_frames": ("video", "hidden_fraction"),
        "frame_occlusion": ("video", "hidden_fraction", "block"),
        "missing_segments": ("audio", "hidden_fraction", "block"),
    }
    if pattern not in need:
        raise UnfitSetting(
            "pattern", f"unknown occlusion pattern {pattern!r}; choose one of " + ", ".join(need)
        )
    kind = _kind_of_shape(signal_shape)
    expected_kind, *keys = need[pattern]
    if kind != expected_kind:
        raise UnfitSetting(
            "pattern",
            f"occlusion pattern {pattern!r} is for {expected_kind} "
            f"data, but this data set holds {kind}",
        )
    given = {"hidden_fraction": hidden_fraction, "block": block, "side": side}
    missing = [k for k in keys if given[k] is None]
    if missing:
        raise UnfitSetting(missing[0], f"occlusion pattern {pattern!r} needs " + " and ".join(keys))
    if pattern == "missing_frames":
        if signal_shape[1] < 2:
            raise UnfitSetting(
                "pattern",
                "missing frames need clips of at least 2 frames, but "
                "this data set has clips of 1 frame",
            )
        return
    if pattern == "missing_segments":
        length = signal_shape[-1]
        assert block is not None  # missing_segments needs a block: checked above
        if not 1 <= block < length:
            raise UnfitSetting(
                "block",
                f"{block} does not fit clips of {length} samples: a "
                f"segment as long as the clip would hide everything; use a block "
                f"from 1 to {length - 1}",
            )
        return
    height, width = signal_shape[-2:]
    largest = min(height, width) - 1  # one pixel more and a single square hides everything
    key, size = ("side", side) if pattern == "square" else ("block", block)
    assert size is not None  # each remaining pattern needs its size: checked above
    if not _fits_at_64(size, width, largest):
        raise UnfitSetting(
            key,
            f"{size} does not fit these {height}×{width} "
            f"{'images' if kind == 'image' else 'frames'}: sizes are given on the "
            f"64×64 scale, so {size} is {masks.scaled_to(size, width)} here, and a "
            f"square that large would hide everything; use a {key} "
            f"{_range_at_64(width, largest)}",
        )


def occlusion_mask(
    x: torch.Tensor,
    *,
    pattern: str,
    rng: torch.Generator,
    hidden_fraction: float | None = None,
    block: int | None = None,
    side: int | None = None,
) -> torch.Tensor:
    """Observed-entry mask (bool, N×1×…) for signals x.

    Patterns: "salt_pepper" (images; `block` and `side` are sizes on 64×64 images, scaled to
    the actual size), "square", "missing_frames" and "frame_occlusion" (video),
    "missing_segments" (audio; `block` in samples).
    """
    check_occlusion(
        x.shape[1:], pattern=pattern, hidden_fraction=hidden_fraction, block=block, side=side
    )
    n = x.shape[0]
    # check_occlusion has made sure that each pattern's settings are given
    if pattern == "salt_pepper":
        assert block is not None and hidden_fraction is not None
        return masks.block_occlusion(
            n,
            x.shape[2:],
            block=masks.scaled_to(block, x.shape[-1]),
            hidden_fraction=hidden_fraction,
            rng=rng,
        )
    if pattern == "square":
        assert side is not None
        return masks.square_region(n, x.shape[2:], side=masks.scaled_to(side, x.shape[-1]), rng=rng)
    if pattern == "missing_frames":
        assert hidden_fraction is not None
        return masks.missing_frames(n, x.shape[2:], hidden_fraction=hidden_fraction, rng=rng)
    if pattern == "frame_occlusion":
        assert block is not None and hidden_fraction is not None
        return masks.per_frame_occlusion(
            n,
            x.shape[2:],
            block=masks.scaled_to(block, x.shape[-1]),
            hidden_fraction=hidden_fraction,
            rng=rng,
        )
    assert block is not None and hidden_fraction is not None  # missing_segments
    return masks.block_occlusion(
        n, x.shape[2:], block=block, hidden_fraction=hidden_fraction, rng=rng
    )


# Per-example matrices are drawn whole for a training (SeededProjections): at most this.
PER_EXAMPLE_MATRIX_BYTES = 2 * 2**30


def check_measurement(
    signal_shape: Sequence[int],
    *,
    operator: str,
    ratio: float | None = None,
    block: int | None = None,
    per_example: bool = False,
    n_examples: int = 0,
) -> None:
    """Raise UnfitSetting unless the compression operator can measure signals of this shape
    (and, with `per_example`, unless the matrices of `n_examples` examples fit in memory)."""
    if operator == "gaussian":
        if ratio is None or not 0 < ratio < 1:
            raise UnfitSetting(
                "ratio", f"a gaussian projection needs a ratio in (0, 1), got {ratio}"
            )
        size = math.prod(signal_shape)
        need = n_examples * max(1, round(ratio * size)) * size * 4 if per_example else 0
        if need > PER_EXAMPLE_MATRIX_BYTES:
            raise UnfitSetting(
                "per_example",
                f"{n_examples} examples of {size} entries, each with its own matrix at ratio "
                f"{ratio}, need {need / 2**30:.1f} GiB of matrices (a training holds them "
                f"all; at most {PER_EXAMPLE_MATRIX_BYTES / 2**30:.0f} GiB): per-example "
                "measurements are for small signals; use fewer examples, a lower ratio or "
                "one shared matrix",
            )
        return
    if per_example:
        raise UnfitSetting("per_example", f"per_example applies to gaussian, not {operator}")
    if operator != "local_average":
        raise UnfitSetting(
            "operator",
            f"unknown compression operator {operator!r}; choose gaussian or local_average",
        )
    if block is None or block < 2:
        raise UnfitSetting("block", f"local averaging needs a block ≥ 2, got {block}")
    sides = list(
        signal_shape[-1:] if _kind_of_shape(signal_shape) == "audio" else signal_shape[-2:]
    )
    if any(side % block for side in sides):
        common = math.gcd(*sides)
        fitting = [b for b in range(2, common + 1) if common % b == 0]
        what = (
            f"clips of {sides[0]} samples" if len(sides) == 1 else f"{sides[0]}×{sides[1]} images"
        )
        raise UnfitSetting(
            "block",
            f"{block} does not cut {what} into whole blocks; use "
            + (
                f"one of {', '.join(map(str, fitting))}"
                if fitting
                else "the gaussian operator (no block ≥ 2 divides these sides)"
            ),
        )


def measurement_spec(
    x: torch.Tensor,
    *,
    operator: str,
    ratio: float | None = None,
    block: int | None = None,
    seed: int = 0,
    per_example: bool = False,
) -> dict[str, Any]:
    """The spec of a compression operator for signals shaped like x[0]. A per-example
    Gaussian spec ("gaussian_per_example") needs each example's seed beside it (`a_seed`)."""
    signal_shape = list(x.shape[1:])
    check_measurement(
        signal_shape, operator=operator, ratio=ratio, block=block, per_example=per_example
    )
    if operator == "gaussian":
        assert ratio is not None  # check_measurement: gaussian needs a ratio
        n_measurements = max(1, round(ratio * math.prod(signal_shape)))
        return {
            "kind": "gaussian_per_example" if per_example else "gaussian",
            "n_measurements": n_measurements,
            "signal_shape": signal_shape,
            "seed": seed,
        }
    n_dims = 1 if signal_kind(x) == "audio" else 2
    return {"kind": "local_average", "block": block, "n_dims": n_dims, "signal_shape": signal_shape}


def operator_from_spec(spec: dict[str, Any], seeds: torch.Tensor | None = None) -> Observation:
    """Rebuild the operator A that a compressed data set was measured with (a per-example
    one from its examples' `seeds`, the split's `a_seed`)."""
    if spec["kind"] == "gaussian":
        return Projection.gaussian(spec["n_measurements"], spec["signal_shape"], seed=spec["seed"])
    if spec["kind"] == "gaussian_per_example":
        if seeds is None:
            raise ValueError("per-example measurements need their examples' seeds (a_seed)")
        return SeededProjections(seeds, spec["n_measurements"], math.prod(spec["signal_shape"]))
    if spec["kind"] == "local_average":
        return LocalAverage(spec["block"], n_dims=spec["n_dims"])
    raise ValueError(f"unknown operator kind {spec['kind']!r}")


def check_subsample(
    signal_shape: Sequence[int], *, frame_step: int = 1, sample_step: int = 1
) -> None:
    """Raise UnfitSetting unless the steps apply to signals of this shape."""
    kind = _kind_of_shape(signal_shape)
    if frame_step > 1 and kind != "video":
        raise UnfitSetting(
            "frame_step", f"frame_step applies to video clips only, but this data set holds {kind}"
        )
    if sample_step > 1 and kind != "audio":
        raise UnfitSetting(
            "sample_step",
            f"sample_step applies to audio clips only, but this data set holds {kind}",
        )


def subsample(x: torch.Tensor, *, frame_step: int = 1, sample_step: int = 1) -> torch.Tensor:
    """Every k-th frame of each clip (video) or every k-th sample (audio)."""
    check_subsample(x.shape[1:], frame_step=frame_step, sample_step=sample_step)
    if frame_step > 1:
        x = x[:, :, ::frame_step]
    if sample_step > 1:
        x = x[..., ::sample_step]
    return x.contiguous()


# A prepared data set's splits: {"train": {"x": …, "mask": …, …}, "test": {…}}, tensors per
# example (the layout abp.datasets writes); the functions below make a variant of them.
Splits = dict[str, dict[str, torch.Tensor]]


def occlude(
    splits: Splits,
    *,
    pattern: str,
    rng: torch.Generator,
    hidden_fraction: float | None = None,
    block: int | None = None,
    side: int | None = None,
) -> dict[str, dict[str, float]]:
    """Hide entries of every example (in place): each non-empty split gets a `mask` of
    observed entries (occlusion_mask, drawn split after split from `rng`). A split that
    already has a mask (sounds padded to one clip) keeps its unobserved entries unobserved.
    Returns the coverage per split: the mean, least and most hidden fraction of an example.
    Raises ValueError when some example would have nothing observed."""
    coverage = {}
    for split, tensors in splits.items():
        if len(tensors["x"]) == 0:
            continue
        mask = occlusion_mask(
            tensors["x"],
            pattern=pattern,
            rng=rng,
            hidden_fraction=hidden_fraction,
            block=block,
            side=side,
        )
        if "mask" in tensors:  # padding stays unobserved
            mask = mask & tensors["mask"]
        if not mask.flatten(1).any(1).all():
            raise ValueError(
                "the mask hides every entry of some examples; lower hidden_fraction, block or side"
            )
        tensors["mask"] = mask
        hidden = 1 - mask.flatten(1).float().mean(1)
        coverage[split] = {
            "hidden_mean": float(hidden.mean()),
            "hidden_min": float(hidden.min()),
            "hidden_max": float(hidden.max()),
        }
    return coverage


def measure(
    splits: Splits,
    *,
    operator: str,
    ratio: float | None = None,
    block: int | None = None,
    seed: int = 0,
    per_example: bool = False,
) -> dict[str, Any]:
    """Compressed measurements y = A·x of every example (in place: each split gets `y`), A
    fixed by the training signals' shape; returns A's spec (operator_from_spec rebuilds it).
    `per_example` (gaussian): each example its own A_i, drawn from a seed of its own that
    its split keeps as `a_seed` (SeededProjections.seeds_for the variant's seed and the
    example's id: its place in the training split, then in the test split after it)."""
    spec = measurement_spec(
        splits["train"]["x"],
        operator=operator,
        ratio=ratio,
        block=block,
        seed=seed,
        per_example=per_example,
    )
    first_id = 0
    for tensors in splits.values():
        x = tensors["x"]
        if not per_example:
            tensors["y"] = operator_from_spec(spec)(x)
            continue
        ids = torch.arange(first_id, first_id + len(x))
        seeds = tensors["a_seed"] = SeededProjections.seeds_for(seed, ids)
        first_id += len(ids)
        # In chunks: only a chunk's matrices at a time.
        tensors["y"] = torch.cat(
            [
                operator_from_spec(spec, seeds[part])(x[part])
                for part in torch.arange(len(x)).split(4096)
            ]
            or [torch.empty((0, spec["n_measurements"]))]
        )
    return spec


def thin(
    splits: Splits,
    *,
    keep_fraction: float,
    rng: torch.Generator,
    frame_step: int = 1,
    sample_step: int = 1,
) -> Splits:
    """A random `keep_fraction` of the training examples (the test split whole), and every
    k-th frame or sample of every signal and its mask."""
    kept = masks.keep_fraction(len(splits["train"]["x"]), keep_fraction, rng)
    splits = {**splits, "train": {k: v[kept] for k, v in splits["train"].items()}}
    for tensors in splits.values():
        for key in ("x", "mask"):
            if key in tensors:
                tensors[key] = subsample(
                    tensors[key], frame_step=frame_step, sample_step=sample_step
                )
    return splits
