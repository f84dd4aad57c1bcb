"""The linear baselines every experiment is scored against (abp.evaluate.score).

- PCA with d components, d = the generator's latent size where the training data allow it
  (the paper's baseline); learned from complete data, or from occluded or compressed data by
  iterative imputation (missing-data PCA), exactly the data ABP learned from.
- The trivial baseline, a PCA with no components: the training mean signal (learned from the
  observations in the same way), or a fixed signal such as silence for sound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from abp.observe import Identity

if TYPE_CHECKING:
    from abp.evaluate import Split

# Rounds of the trivial baseline's imputation: each shrinks the error of the observed mean by
# the hidden fraction (0.9 for P90), so 50 rounds, enough for PCA, would leave 0.5 % of it.
MEAN_ROUNDS = 300


def pca_size(latent_size: int, n_train: int, signal_size: int) -> int:
    """The PCA baseline's d: ABP's latent size, capped by what the training data allow. n
    centred examples span at most n − 1 dimensions (and no more than the signal has), so a
    larger d adds nothing: PCA already reproduces every training signal at d = n − 1."""
    return max(0, min(latent_size, n_train - 1, signal_size))


class PCA:
    """Principal component analysis with d components, fitted on complete training data.

    `reconstruct(x)` projects onto the d-dimensional principal subspace: the best linear
    d-dimensional reconstruction, the paper's baseline for held-out reconstruction. With
    d = 0 it is the training mean signal, whatever x is: the trivial baseline.
    """

    def __init__(self, n_components: int):
        self.n_components = n_components

    @classmethod
    def constant(cls, signal: torch.Tensor) -> PCA:
        """A baseline that predicts `signal` for everything (e.g. silence: zeros), fitted to
        nothing; recover_with_pca still keeps what the data say."""
        pca = cls(0)
        pca.mean = signal.flatten().double()
        pca.components = pca.mean.new_zeros(0, pca.mean.numel())
        return pca

    def fit(self, x: torch.Tensor) -> PCA:
        flat = x.flatten(1).double()
        if self.n_components > min(flat.shape):
            raise ValueError(
                f"n_components={self.n_components} exceeds the data's rank bound {min(flat.shape)}"
            )
        self.mean = flat.mean(0)
        if self.n_components == 0:  # the mean alone: no decomposition to pay for
            self.components = flat.new_zeros(0, flat.shape[1])
            return self
        centred = flat - self.mean
        if centred.shape[1] <= centred.shape[0]:
            _, _, vh = torch.linalg.svd(centred, full_matrices=False)
            self.components = vh[: self.n_components]  # (d, D), orthonormal rows
            return self
        # Wide data (clips, sounds: D ≫ N): the eigenvectors u of the N×N Gram matrix give
        # the components uᵀX/√λ. On 2 busy CPU cores 0.01 s for 49 clips of 24576 entries
        # against 0.2–0.8 s for their thin SVD, and missing-data PCA fits 50 times.
        eigenvalues, vectors = torch.linalg.eigh(centred @ centred.T)  # ascending
        eigenvalues = eigenvalues.flip(0)[: self.n_components]
        vectors = vectors.flip(1)[:, : self.n_components]
        # Directions without variance (fewer distinct examples than d) get no component.
        kept = eigenvalues > 1e-12 * eigenvalues[:1].clamp(min=1e-300)
        scale = torch.where(kept, eigenvalues.clamp(min=1e-300).rsqrt(), 0.0)
        self.components = (vectors.T @ centred) * scale[:, None]  # (d, D), orthonormal rows
        return self

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).double() - self.mean
        coded = flat @ self.components.T
        return (coded @ self.components + self.mean).to(x.dtype).view_as(x)


def pca_from_observations(
    y: torch.Tensor, *, forward, back_project, n_components: int, n_iter: int = 50
) -> tuple[PCA, torch.Tensor]:
    """PCA learned from incomplete or indirect observations y = A(x): the linear baseline
    for occluded and compressed data. Returns the PCA and the recovered signals x̂.

    Iterative imputation (EM-like): fit a d-component PCA to the current fill-in, take its
    reconstruction m, and fill in again keeping what the data say:
    x̂ = m + back_project(y − A(m)). For a mask (A = back_project = m ⊙ ·) this keeps the
    observed pixels and takes the hidden ones from the PCA; for a projection, back_project
    is the pseudo-inverse, so x̂ stays consistent with y. With d = 0 the fill-in converges
    to the mean of what is observed of each entry (geometrically, at the hidden fraction's
    rate: give more rounds to heavily occluded data).
    """
    x_hat = back_project(y)
    pca = PCA(n_components)
    for _ in range(n_iter):
        model = pca.fit(x_hat).reconstruct(x_hat)
        x_hat = model + back_project(y - forward(model))
    return pca, x_hat


def recover_with_pca(
    pca: PCA, y: torch.Tensor, *, forward, back_project, n_iter: int = 50
) -> torch.Tensor:
    """Recover new signals from their observations with a PCA fixed (the same fill-in)."""
    x_hat = back_project(y)
    for _ in range(n_iter if pca.n_components else 1):  # a constant model: one round is exact
        model = pca.reconstruct(x_hat)
        x_hat = model + back_project(y - forward(model))
    return x_hat


def linear_baseline(
    model: int | PCA, train: Split, test: Split | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A linear baseline learned from exactly what ABP learned from (complete, occluded or
    compressed training data): `model` is d, the number of PCA components to learn (0: the
    mean signal), or a fixed PCA (e.g. silence). Returns its fitted training signals and its
    recovered test signals (None without a test split), both keeping what the data say."""
    if test is not None and len(test) == 0:
        test = None
    if isinstance(train.observation, Identity):  # complete data: project, nothing to keep
        pca = model if isinstance(model, PCA) else PCA(model).fit(train.x)
        return pca.reconstruct(train.x), pca.reconstruct(test.x) if test is not None else None

    def pseudo_inverse(split: Split):
        return lambda residual: split.observation.pseudo_inverse(residual, split.signal_shape)

    if isinstance(model, PCA):
        pca, fitted = (
            model,
            recover_with_pca(
                model, train.y, forward=train.observation, back_project=pseudo_inverse(train)
            ),
        )
    else:
        pca, fitted = pca_from_observations(
            train.y,
            forward=train.observation,
            n_components=model,
            back_project=pseudo_inverse(train),
            n_iter=MEAN_ROUNDS if model == 0 else 50,
        )
    if test is None:
        return fitted, None
    return fitted, recover_with_pca(
        pca, test.y, forward=test.observation, back_project=pseudo_inverse(test)
    )
