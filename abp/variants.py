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
from typing import Any

import torch

from abp import masks
from abp.observe import LocalAverage, Observation, Projection


def signal_kind(x: torch.Tensor) -> str:
    return {3: "audio", 4: "image", 5: "video"}[x.dim()]


def occlusion_mask(x: torch.Tensor, *, pattern: str, rng: torch.Generator,
                   hidden_fraction: float | None = None, block: int | None = None,
                   side: int | None = None) -> torch.Tensor:
    """Observed-entry mask (bool, N×1×…) for signals x.

    Patterns: "salt_pepper" (images; `block` and `side` are sizes on 64×64 images, scaled to
    the actual size), "square", "missing_frames" and "frame_occlusion" (video),
    "missing_segments" (audio; `block` in samples).
    """
    kind, n = signal_kind(x), x.shape[0]
    need = {"salt_pepper": ("image", hidden_fraction, block), "square": ("image", side, side),
            "missing_frames": ("video", hidden_fraction, 1),
            "frame_occlusion": ("video", hidden_fraction, block),
            "missing_segments": ("audio", hidden_fraction, block)}
    if pattern not in need:
        raise ValueError(f"unknown occlusion pattern {pattern!r}; choose one of {', '.join(need)}")
    expected_kind, *settings = need[pattern]
    if kind != expected_kind:
        raise ValueError(f"occlusion pattern {pattern!r} is for {expected_kind} data, "
                         f"but this data set holds {kind}")
    if any(s is None for s in settings):
        raise ValueError(f"occlusion pattern {pattern!r} needs "
                         + {"square": "side"}.get(pattern, "hidden_fraction and block"))
    if pattern == "salt_pepper":
        return masks.block_occlusion(n, x.shape[2:], block=masks.scaled_to(block, x.shape[-1]),
                                     hidden_fraction=hidden_fraction, rng=rng)
    if pattern == "square":
        return masks.square_region(n, x.shape[2:], side=masks.scaled_to(side, x.shape[-1]), rng=rng)
    if pattern == "missing_frames":
        return masks.missing_frames(n, x.shape[2:], hidden_fraction=hidden_fraction, rng=rng)
    if pattern == "frame_occlusion":
        return masks.per_frame_occlusion(n, x.shape[2:], block=masks.scaled_to(block, x.shape[-1]),
                                         hidden_fraction=hidden_fraction, rng=rng)
    return masks.block_occlusion(n, x.shape[2:], block=block, hidden_fraction=hidden_fraction,
                                 rng=rng)


def measurement_spec(x: torch.Tensor, *, operator: str, ratio: float | None = None,
                     block: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The spec of a compression operator for signals shaped like x[0]."""
    signal_shape = list(x.shape[1:])
    if operator == "gaussian":
        if ratio is None or not 0 < ratio < 1:
            raise ValueError(f"a gaussian projection needs a ratio in (0, 1), got {ratio}")
        n_measurements = max(1, round(ratio * math.prod(signal_shape)))
        return {"kind": "gaussian", "n_measurements": n_measurements,
                "signal_shape": signal_shape, "seed": seed}
    if operator == "local_average":
        if block is None or block < 2:
            raise ValueError(f"local averaging needs a block ≥ 2, got {block}")
        n_dims = 1 if signal_kind(x) == "audio" else 2
        return {"kind": "local_average", "block": block, "n_dims": n_dims,
                "signal_shape": signal_shape}
    raise ValueError(f"unknown compression operator {operator!r}; choose gaussian or local_average")


def operator_from_spec(spec: dict[str, Any]) -> Observation:
    """Rebuild the operator A that a compressed data set was measured with."""
    if spec["kind"] == "gaussian":
        return Projection.gaussian(spec["n_measurements"], spec["signal_shape"], seed=spec["seed"])
    if spec["kind"] == "local_average":
        return LocalAverage(spec["block"], n_dims=spec["n_dims"])
    raise ValueError(f"unknown operator kind {spec['kind']!r}")


def subsample(x: torch.Tensor, *, frame_step: int = 1, sample_step: int = 1) -> torch.Tensor:
    """Every k-th frame of each clip (video) or every k-th sample (audio)."""
    if frame_step > 1:
        if signal_kind(x) != "video":
            raise ValueError("frame_step applies to video clips only")
        x = x[:, :, ::frame_step]
    if sample_step > 1:
        if signal_kind(x) != "audio":
            raise ValueError("sample_step applies to audio clips only")
        x = x[..., ::sample_step]
    return x.contiguous()
