"""Error measures and the PCA baseline on cases with known answers."""

import pytest
import torch

from abp.evaluate import PCA, mean_absolute_error, pca_from_observations, recover_with_pca
from abp.observe import Identity, LocalAverage, Mask, Projection


def test_mean_absolute_error_is_on_the_unit_scale_and_counts_only_selected_entries():
    truth = torch.zeros(2, 1, 2, 2)
    estimate = truth.clone()
    assert mean_absolute_error(estimate, truth) == 0
    estimate[0, 0, 0, 0] = 1.0  # off by 1 on [-1, 1] = 0.5 on [0, 1]
    assert mean_absolute_error(estimate, truth) == pytest.approx(0.5 / 8)
    hidden = torch.zeros_like(truth)
    hidden[0, 0, 0, :] = 1
    assert mean_absolute_error(estimate, truth, where=hidden) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no entries selected"):
        mean_absolute_error(estimate, truth, where=torch.zeros_like(truth))


def test_pca_reconstructs_data_of_exact_rank_d_exactly():
    rng = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 1 * 4 * 4, generator=rng)
    def rank3(n):
        return (torch.randn(n, 3, generator=rng) @ basis + 0.2).view(n, 1, 4, 4)
    train, test = rank3(50), rank3(10)
    torch.testing.assert_close(PCA(3).fit(train).reconstruct(test), test, atol=1e-5, rtol=0)
    assert mean_absolute_error(PCA(2).fit(train).reconstruct(test), test) > 1e-2


@pytest.mark.parametrize("make_operator", [
    lambda shape: Projection.gaussian(12, shape, seed=0),
    lambda shape: LocalAverage(2),
    lambda shape: Identity(),
])
def test_pseudo_inverse_is_a_right_inverse(make_operator):
    shape = (1, 4, 4)
    op = make_operator(shape)
    y = op(torch.randn(3, *shape))
    torch.testing.assert_close(op(op.pseudo_inverse(y, shape)), y, atol=1e-4, rtol=0)


def test_missing_data_pca_recovers_hidden_entries_of_low_rank_data():
    rng = torch.Generator().manual_seed(1)
    basis = torch.randn(3, 64, generator=rng)
    x = (torch.randn(200, 3, generator=rng) @ basis).view(200, 1, 8, 8)
    mask = (torch.rand(200, 1, 8, 8, generator=rng) > 0.4).float()
    op = Mask(mask)
    _, x_hat = pca_from_observations(op(x), forward=op, n_components=3, n_iter=200,
                                     back_project=lambda r: op.pseudo_inverse(r, (1, 8, 8)))
    hidden = mask == 0
    assert (x_hat - x)[hidden].abs().mean() < 0.02 * x.abs().mean()
    assert torch.equal(x_hat[~hidden], x[~hidden])  # observed entries are kept


def test_compressed_pca_stays_consistent_with_the_measurements():
    """With one A shared by all examples, what lies in A's null space is invisible to any
    linear method: the baseline recovers the rest and always agrees with y."""
    rng = torch.Generator().manual_seed(2)
    basis = torch.randn(3, 64, generator=rng)
    x = (torch.randn(300, 3, generator=rng) @ basis).view(300, 1, 8, 8)
    op = Projection.gaussian(32, (1, 8, 8), seed=3)
    back = lambda r: op.pseudo_inverse(r, (1, 8, 8))  # noqa: E731
    pca, x_hat = pca_from_observations(op(x), forward=op, back_project=back, n_components=3)
    torch.testing.assert_close(op(x_hat), op(x), atol=1e-3, rtol=0)
    least_norm = back(op(x))
    assert (x_hat - x).abs().mean() <= (least_norm - x).abs().mean() + 1e-4
    new = (torch.randn(5, 3, generator=rng) @ basis).view(5, 1, 8, 8)
    recovered = recover_with_pca(pca, op(new), forward=op, back_project=back)
    torch.testing.assert_close(op(recovered), op(new), atol=1e-3, rtol=0)
