"""Occlusion masks hit their targets; every pattern leaves something observed."""

import pytest
import torch

from abp import masks


@pytest.mark.parametrize("target", [0.5, 0.7, 0.9])
def test_salt_and_pepper_blocks_hide_the_target_fraction(target):
    rng = torch.Generator().manual_seed(0)
    observed = masks.block_occlusion(200, (64, 64), block=3, hidden_fraction=target, rng=rng)
    assert observed.shape == (200, 1, 64, 64) and observed.dtype == torch.bool
    hidden = 1 - observed.float().mean(dim=(1, 2, 3))
    assert hidden.min() >= target
    assert hidden.max() <= target + 9 / 4096 + 1e-6  # overshoot at most one 3×3 block
    # Blocks, not single pixels: a hidden pixel's 3×3 neighbourhood is mostly hidden too.
    one = ~observed[0, 0]
    neighbours = torch.nn.functional.avg_pool2d(one[None, None].float(), 3, 1, 1)[0, 0]
    # (single hidden pixels would give about hidden + (1 − hidden)/9)
    assert neighbours[one].mean() > hidden[0] + 0.25 * (1 - hidden[0])


def test_masks_are_reproducible_from_the_seed():
    a = masks.block_occlusion(
        3, (16, 16), block=2, hidden_fraction=0.5, rng=torch.Generator().manual_seed(7)
    )
    b = masks.block_occlusion(
        3, (16, 16), block=2, hidden_fraction=0.5, rng=torch.Generator().manual_seed(7)
    )
    assert torch.equal(a, b)


def test_square_region_hides_one_square_of_the_scaled_side():
    assert masks.scaled_to(20, 64) == 20 and masks.scaled_to(20, 32) == 10
    observed = masks.square_region(50, (32, 32), side=10, rng=torch.Generator().manual_seed(1))
    hidden = ~observed[:, 0]
    assert torch.all(hidden.sum(dim=(1, 2)) == 100)
    rows, cols = hidden.any(2), hidden.any(1)
    assert torch.all(rows.sum(1) == 10) and torch.all(cols.sum(1) == 10)
    assert len({tuple(r.nonzero()[0].tolist()) for r in rows}) > 5  # random positions


def test_missing_frames_and_audio_segments():
    rng = torch.Generator().manual_seed(2)
    frames = masks.missing_frames(10, (8, 4, 4), hidden_fraction=0.25, rng=rng)
    per_frame = frames[:, 0, :, 0, 0]
    assert torch.all((~per_frame).sum(1) == 2)
    assert torch.all(frames == frames[:, :, :, :1, :1])  # whole frames
    segments = masks.block_occlusion(20, (4096,), block=256, hidden_fraction=0.3, rng=rng)
    hidden = 1 - segments.float().mean(dim=(1, 2))
    assert segments.shape == (20, 1, 4096)
    assert torch.all((hidden >= 0.3) & (hidden <= 0.3 + 256 / 4096 + 1e-6))


def test_masks_that_would_hide_everything_are_refused():
    rng = torch.Generator()
    with pytest.raises(ValueError, match=r"hides everything|hide everything"):
        masks.square_region(1, (16, 16), side=16, rng=rng)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        masks.block_occlusion(1, (16, 16), block=2, hidden_fraction=1.0, rng=rng)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        masks.missing_frames(1, (4, 2, 2), hidden_fraction=1.0, rng=rng)
    # even a near-total target keeps one frame observed
    assert masks.missing_frames(1, (4, 2, 2), hidden_fraction=0.99, rng=rng).any()


def test_keep_fraction_is_a_sorted_subset():
    kept = masks.keep_fraction(10, 0.3, torch.Generator().manual_seed(0))
    assert len(kept) == 3 and torch.equal(kept, kept.sort().values) and kept.max() < 10
