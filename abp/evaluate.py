"""Error measures and the PCA baseline the paper compares against.

Signals are in [−1, 1] (prepared data); errors are reported on the [0, 1] intensity scale,
as in the paper's tables (multiply by 255 for 8-bit levels).
"""

from __future__ import annotations

import torch


def mean_absolute_error(estimate: torch.Tensor, truth: torch.Tensor,
                        where: torch.Tensor | None = None) -> float:
    """Mean |estimate − truth| on the [0, 1] scale, over the entries where `where` is nonzero
    (all entries if None)."""
    error = (estimate - truth).abs() / 2  # [−1, 1] → [0, 1] halves distances
    if where is None:
        return float(error.mean())
    where = where.expand_as(error).bool()
    if not where.any():
        raise ValueError("no entries selected: the error over an empty set is undefined")
    return float(error[where].mean())


class PCA:
    """Principal component analysis with d components, fitted on complete training data.

    `reconstruct(x)` projects onto the d-dimensional principal subspace: the best linear
    d-dimensional reconstruction, the paper's baseline for held-out reconstruction.
    """

    def __init__(self, n_components: int):
        self.n_components = n_components

    def fit(self, x: torch.Tensor) -> "PCA":
        flat = x.flatten(1).double()
        if self.n_components > min(flat.shape):
            raise ValueError(f"n_components={self.n_components} exceeds the data's rank bound "
                             f"{min(flat.shape)}")
        self.mean = flat.mean(0)
        _, _, vh = torch.linalg.svd(flat - self.mean, full_matrices=False)
        self.components = vh[: self.n_components]  # (d, D), orthonormal rows
        return self

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).double() - self.mean
        coded = flat @ self.components.T
        return (coded @ self.components + self.mean).to(x.dtype).view_as(x)



def pca_from_observations(y: torch.Tensor, *, forward, back_project, n_components: int,
                          n_iter: int = 50) -> tuple[PCA, torch.Tensor]:
    """PCA learned from incomplete or indirect observations y = A(x): the linear baseline
    for occluded and compressed data. Returns the PCA and the recovered signals x̂.

    Iterative imputation (EM-like): fit a d-component PCA to the current fill-in, take its
    reconstruction m, and fill in again keeping what the data say:
    x̂ = m + back_project(y − A(m)). For a mask (A = back_project = m ⊙ ·) this keeps the
    observed pixels and takes the hidden ones from the PCA; for a projection, back_project
    is the pseudo-inverse, so x̂ stays consistent with y.
    """
    x_hat = back_project(y)
    pca = PCA(n_components)
    for _ in range(n_iter):
        model = pca.fit(x_hat).reconstruct(x_hat)
        x_hat = model + back_project(y - forward(model))
    return pca, x_hat


def recover_with_pca(pca: PCA, y: torch.Tensor, *, forward, back_project,
                     n_iter: int = 50) -> torch.Tensor:
    """Recover new signals from their observations with a PCA fixed (the same fill-in)."""
    x_hat = back_project(y)
    for _ in range(n_iter):
        model = pca.reconstruct(x_hat)
        x_hat = model + back_project(y - forward(model))
    return x_hat
