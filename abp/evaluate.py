"""What evaluation computes: error measures, the most probable latents of a trained
generator, and the two baselines every experiment is scored against.

- PCA with d components, d = the generator's latent size where the training data allow it
  (the paper's baseline); learned from complete data, or from occluded or compressed data by
  iterative imputation (missing-data PCA), exactly the data ABP learned from.
- The trivial baseline, a PCA with no components: the training mean signal (learned from the
  observations in the same way), or a fixed signal such as silence for sound.

Signals are in [−1, 1] (prepared data); errors are reported on the [0, 1] intensity scale,
as in the paper's tables (multiply by 255 for 8-bit levels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from abp.energy import energy
from abp.langevin import frozen_weights
from abp.observe import Identity, Observation

# A split as evaluation sees it: its tensors ("x", and "mask" for occluded data), the
# observations y a model may use, and the operator A with y = A(x).
Split = tuple[dict[str, torch.Tensor], torch.Tensor, Observation]
# Rounds of the trivial baseline's imputation: each shrinks the error of the observed mean by
# the hidden fraction (0.9 for P90), so 50 rounds, enough for PCA, would leave 0.5 % of it.
MEAN_ROUNDS = 300


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


def most_probable_latents(generator: torch.nn.Module, y: torch.Tensor, z: torch.Tensor, *,
                          sigma: float, step_size: float, max_steps: int,
                          observation: Observation | None = None, tolerance: float = 1e-4,
                          patience: int = 10, batch_size: int = 256
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient descent on each example's energy E(z) (abp.energy) from z, the weights fixed:
    the MAP latents that scoring uses. Returns (latents, the steps each example took).

    Each example keeps the lowest-energy latent it has visited, because descent with the
    training's step size can overshoot and circle the minimum instead of settling in it, and
    stops on its own once that lowest energy fell by less than `tolerance` (relative) over
    `patience` steps, or after `max_steps`. One example's stop never changes another's
    result, so the outcome does not depend on `batch_size` (it only bounds memory) beyond
    floating-point rounding.
    """
    n = y.shape[0]
    half_step = step_size ** 2 / 2
    observation = observation or Identity()
    z = z.detach().clone()
    best_z, best_energy = z.clone(), torch.full((n,), math.inf, device=z.device)
    energy_at_last_check = best_energy.clone()
    active = torch.ones(n, dtype=torch.bool, device=z.device)
    steps = torch.zeros(n, dtype=torch.long, device=z.device)
    with frozen_weights(generator):
        for step in range(max_steps + 1):  # the last pass only scores the final step's z
            for index in active.nonzero().squeeze(1).split(batch_size):
                z_batch = z[index].requires_grad_(step < max_steps)
                with torch.set_grad_enabled(step < max_steps):
                    e = energy(generator, z_batch, y[index], sigma=sigma,
                               observation=observation.select(index))
                    if step < max_steps:
                        (grad,) = torch.autograd.grad(e.sum(), z_batch)
                        z[index] = z_batch.detach() - half_step * grad
                e = e.detach()
                better = e < best_energy[index]
                best_energy[index[better]] = e[better]
                best_z[index[better]] = z_batch.detach()[better]
            if step < max_steps:
                steps[active] += 1
            if (step + 1) % patience == 0:
                stalled = energy_at_last_check - best_energy <= tolerance * best_energy.abs()
                active &= ~stalled
                energy_at_last_check = best_energy.clone()
                if not active.any():
                    break
    return best_z, steps


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
            raise ValueError(f"n_components={self.n_components} exceeds the data's rank bound "
                             f"{min(flat.shape)}")
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


def pca_from_observations(y: torch.Tensor, *, forward, back_project, n_components: int,
                          n_iter: int = 50) -> tuple[PCA, torch.Tensor]:
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


def recover_with_pca(pca: PCA, y: torch.Tensor, *, forward, back_project,
                     n_iter: int = 50) -> torch.Tensor:
    """Recover new signals from their observations with a PCA fixed (the same fill-in)."""
    x_hat = back_project(y)
    for _ in range(n_iter if pca.n_components else 1):  # a constant model: one round is exact
        model = pca.reconstruct(x_hat)
        x_hat = model + back_project(y - forward(model))
    return x_hat


def errors(split: str, estimate: torch.Tensor, tensors: dict[str, torch.Tensor]
           ) -> dict[str, float]:
    """<split>_mae over all entries, and <split>_hidden_mae over the hidden ones if some are."""
    found = {f"{split}_mae": mean_absolute_error(estimate, tensors["x"])}
    if "mask" in tensors:
        found[f"{split}_hidden_mae"] = mean_absolute_error(estimate, tensors["x"],
                                                           where=~tensors["mask"])
    return found


def scored(prefix: str, fitted: torch.Tensor, recovered: torch.Tensor | None,
           train: dict[str, torch.Tensor], test: dict[str, torch.Tensor]) -> dict[str, float]:
    """One method's errors on the training signals and (if any) the test signals, the keys
    prefixed ("" for ABP, "pca_", "trivial_"): every method is scored by the same code."""
    found = errors("train", fitted, train)
    if recovered is not None:
        found.update(errors("heldout", recovered, test))
    return {prefix + key: value for key, value in found.items()}


def linear_baseline(model: int | PCA, shape: Sequence[int], train_split: Split,
                    test_split: Split) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A linear baseline learned from exactly what ABP learned from (complete, occluded or
    compressed training data): `model` is d, the number of PCA components to learn (0: the
    mean signal), or a fixed PCA (e.g. silence). Returns its fitted training signals and its
    recovered test signals (None without a test split), both keeping what the data say."""
    (train, y_train, obs_train), (test, y_test, obs_test) = train_split, test_split
    has_test = len(test["x"]) > 0
    if isinstance(obs_train, Identity):  # complete data: project, nothing to keep
        pca = model if isinstance(model, PCA) else PCA(model).fit(train["x"])
        return pca.reconstruct(train["x"]), pca.reconstruct(test["x"]) if has_test else None

    def pseudo_inverse(observation: Observation):
        return lambda residual: observation.pseudo_inverse(residual, shape)

    if isinstance(model, PCA):
        pca, fitted = model, recover_with_pca(model, y_train, forward=obs_train,
                                              back_project=pseudo_inverse(obs_train))
    else:
        pca, fitted = pca_from_observations(y_train, forward=obs_train, n_components=model,
                                            back_project=pseudo_inverse(obs_train),
                                            n_iter=MEAN_ROUNDS if model == 0 else 50)
    if not has_test:
        return fitted, None
    return fitted, recover_with_pca(pca, y_test, forward=obs_test,
                                    back_project=pseudo_inverse(obs_test))
