"""Observation operators: what they compute, and that they are reproducible."""

import pytest
import torch

from abp.observe import Identity, LocalAverage, Mask, Projection, SeededProjections


def test_local_average_is_the_linear_map_of_block_means():
    op = LocalAverage(block=2)
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.float64).view(2, 1, 4, 6)
    y = op(x)
    assert y.shape == (2, 1, 2, 3)
    assert y[0, 0, 0, 0] == (x[0, 0, 0, 0] + x[0, 0, 0, 1] + x[0, 0, 1, 0] + x[0, 0, 1, 1]) / 4
    # As an explicit matrix it is a Projection, so the posterior tests above cover it too.
    basis = torch.eye(24, dtype=torch.float64).view(24, 1, 4, 6)
    matrix = op(basis).flatten(1).T
    torch.testing.assert_close(Projection(matrix)(x), y.flatten(1))
    with pytest.raises(ValueError, match="multiple of block"):
        LocalAverage(block=5)(x)


def test_gaussian_projection_is_reproducible_from_its_seed():
    a = Projection.gaussian(10, (1, 4, 4), seed=11).matrix
    assert torch.equal(a, Projection.gaussian(10, (1, 4, 4), seed=11).matrix)
    assert not torch.equal(a, Projection.gaussian(10, (1, 4, 4), seed=12).matrix)
    assert a.shape == (10, 16)


def test_mask_rejects_values_other_than_zero_and_one():
    with pytest.raises(ValueError, match="only 0"):
        Mask(torch.tensor([0.0, 0.5, 1.0]))


def test_local_average_works_on_audio_along_one_dimension():
    x = torch.arange(12.0).view(1, 1, 12)
    torch.testing.assert_close(
        LocalAverage(block=3, n_dims=1)(x), torch.tensor([[[1.0, 4.0, 7.0, 10.0]]])
    )


def test_per_example_mask_selects_the_batch_and_counts_observed_entries():
    masks = torch.zeros(4, 1, 2, 2)
    masks[1, 0, 0] = 1  # example 1 shows its first row
    masks[3] = 1  # example 3 shows everything
    op = Mask(masks)
    batch = op.select(torch.tensor([3, 1]))
    y = torch.ones(2, 1, 2, 2)
    assert torch.equal(batch.mask, masks[[3, 1]])
    assert float(batch.observed_count(y)) == 6
    shared = Mask(torch.ones(1, 2, 2), per_example=False)
    assert shared.select(torch.tensor([0, 2])) is shared
    assert float(shared.observed_count(y)) == 8
    assert float(Identity().observed_count(y)) == 8


def test_seeded_projections_draw_each_examples_own_gaussian_matrix_from_its_seed():
    ids = torch.tensor([0, 1, 2, 1000, 2**31 + 5])
    seeds = SeededProjections.seeds_for(7, ids)
    assert len(set(seeds.tolist())) == 5 and bool((seeds >= 0).all())
    assert torch.equal(seeds, SeededProjections.seeds_for(7, ids))
    assert not torch.equal(seeds, SeededProjections.seeds_for(8, ids))
    assert SeededProjections.seeds_for(10**30, ids).dtype == torch.int64  # any variant seed
    op = SeededProjections(seeds, 6, 16)
    for i, seed in enumerate(seeds.tolist()):
        assert torch.equal(op.matrices[i], Projection.gaussian(6, 16, seed).matrix)
    # Distinct matrices, not only distinct seeds (torch seeds from a seed's low 32 bits).
    assert all(not torch.equal(op.matrices[i], op.matrices[j]) for i in range(5) for j in range(i))
    x = torch.randn(5, 1, 4, 4)
    y = op(x)
    for i in range(5):
        torch.testing.assert_close(y[i], op.matrices[i] @ x[i].flatten())
    # A batch's operator: the rows of the same matrices.
    index = torch.tensor([3, 0])
    assert torch.equal(SeededProjections(seeds, 6, 16).select(index).matrices, op.matrices[index])
    torch.testing.assert_close(op.select(index)(x[index]), y[index])
    # A⁺y: least norm with A_i x = y_i for each example.
    recovered = op.pseudo_inverse(y, (1, 4, 4))
    torch.testing.assert_close(op(recovered), y, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="3 signals for 5 per-example matrices"):
        op(x[:3])
