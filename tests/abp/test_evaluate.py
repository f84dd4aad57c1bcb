"""Error measures and the PCA baseline on cases with known answers."""

import pytest
import torch

from abp.evaluate import PCA, mean_absolute_error


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
