"""Occlusion masks and subsampling for the incomplete-data experiments.

A mask is a bool tensor with True where an entry is *observed*, of shape (N, 1, *spatial)
so one mask serves every channel (abp.observe.Mask broadcasts it). The paper's settings:

- salt-and-pepper (P.5, P.7, P.9): k×k blocks (k = 3 on 64×64) placed at random until about
  50 %, 70 % or 90 % of the pixels are hidden; the same in 1-D gives missing audio segments;
- one random square region (M20, M30: a 20×20 or 30×30 square on 64×64 images);
- missing video frames: whole frames hidden.

Sizes given for 64×64 scale proportionally: `scaled_to(20, 32)` is 10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def scaled_to(size_at_64: int, side: int) -> int:
    """A size defined on 64×64 images, scaled to images of the given side (at least 1)."""
    return max(1, round(size_at_64 * side / 64))


def block_occlusion(
    n: int,
    spatial_shape: Sequence[int],
    *,
    block: int,
    hidden_fraction: float,
    rng: torch.Generator,
) -> torch.Tensor:
    """Salt-and-pepper occlusion: block×block squares (block-long segments in 1-D) at random
    positions, added until at least `hidden_fraction` of each example is hidden (overshoot at
    most one block). Returns observed-entry masks of shape (n, 1, *spatial_shape)."""
    spatial_shape = tuple(spatial_shape)
    _check_fraction(hidden_fraction)
    if len(spatial_shape) not in (1, 2):
        raise ValueError(f"block occlusion needs 1-D or 2-D signals, got shape {spatial_shape}")
    if block < 1 or block > min(spatial_shape):
        raise ValueError(
            f"block={block} must be between 1 and the signal side {min(spatial_shape)}"
        )
    size = math.prod(spatial_shape)
    corner_grid = tuple(s - block + 1 for s in spatial_shape)
    n_corners = math.prod(corner_grid)
    corners = torch.zeros(n, n_corners, dtype=torch.bool)
    hidden = torch.zeros(n, size, dtype=torch.bool)
    while True:
        coverage = hidden.float().mean(1)
        short = coverage < hidden_fraction
        if not short.any():
            break
        # Expected blocks each example still needs, from coverage = 1 − exp(−blocks·area/size);
        # it gets half of that (at least one), so the last rounds add single blocks and the
        # overshoot stays within about one block.
        deficit = torch.log1p(-coverage[short]) - math.log1p(-min(hidden_fraction, 0.999))
        wanted = (0.5 * deficit * size / block ** len(spatial_shape)).long().clamp(min=1)
        picks = torch.randint(n_corners, (len(wanted), int(wanted.max())), generator=rng)
        surplus = torch.arange(picks.shape[1]) >= wanted.unsqueeze(1)
        picks = torch.where(surplus, picks[:, :1], picks)  # repeats of the first pick add nothing
        corners[short] = corners[short].scatter(1, picks, True)
        hidden = _dilate(corners.view(n, 1, *corner_grid), block).view(n, size)
    return ~hidden.view(n, 1, *spatial_shape)


def _dilate(corners: torch.Tensor, block: int) -> torch.Tensor:
    """Each True corner hides the block×block square whose top-left it is."""
    pad = [block - 1, block - 1] * (corners.dim() - 2)
    padded = F.pad(corners.float(), pad)
    pool = F.max_pool2d if corners.dim() == 4 else F.max_pool1d
    return pool(padded, block, stride=1) > 0


def square_region(
    n: int, spatial_shape: Sequence[int], *, side: int, rng: torch.Generator
) -> torch.Tensor:
    """One side×side square hidden at a random position in each example (M20, M30)."""
    height, width = spatial_shape
    if not 1 <= side < min(height, width):
        raise ValueError(
            f"square side={side} must be at least 1 and smaller than the image "
            f"({height}×{width}), or it would hide everything"
        )
    top = torch.randint(height - side + 1, (n,), generator=rng)
    left = torch.randint(width - side + 1, (n,), generator=rng)
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    inside = (
        (rows >= top.view(n, 1, 1))
        & (rows < (top + side).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < (left + side).view(n, 1, 1))
    )
    return ~inside.unsqueeze(1)


def missing_frames(
    n: int, clip_shape: Sequence[int], *, hidden_fraction: float, rng: torch.Generator
) -> torch.Tensor:
    """Whole frames hidden: round(hidden_fraction·T) random frames per clip (at least one
    frame stays observed). clip_shape is (T, H, W); returns masks (n, 1, T, H, W)."""
    frames, height, width = clip_shape
    _check_fraction(hidden_fraction)
    n_hidden = min(frames - 1, max(1, round(hidden_fraction * frames)))
    order = torch.rand(n, frames, generator=rng).argsort(1)
    observed = torch.ones(n, frames, dtype=torch.bool)
    observed.scatter_(1, order[:, :n_hidden], False)
    return observed.view(n, 1, frames, 1, 1).expand(n, 1, frames, height, width).clone()


def per_frame_occlusion(
    n: int, clip_shape: Sequence[int], *, block: int, hidden_fraction: float, rng: torch.Generator
) -> torch.Tensor:
    """Salt-and-pepper occlusion drawn independently for every frame of every clip."""
    frames, height, width = clip_shape
    masks = block_occlusion(
        n * frames, (height, width), block=block, hidden_fraction=hidden_fraction, rng=rng
    )
    return masks.view(n, frames, 1, height, width).transpose(1, 2).contiguous()


def keep_fraction(n: int, fraction: float, rng: torch.Generator) -> torch.Tensor:
    """Sorted indices of a random subset with round(fraction·n) examples (at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    count = max(1, round(fraction * n))
    return torch.randperm(n, generator=rng)[:count].sort().values


def _check_fraction(hidden_fraction: float) -> None:
    if not 0 < hidden_fraction < 1:
        raise ValueError(
            f"hidden fraction {hidden_fraction} must be strictly between 0 and 1 "
            "(a mask that hides everything leaves nothing to learn from)"
        )
