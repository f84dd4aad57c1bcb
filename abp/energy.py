"""The one energy that both halves of ABP differentiate.

For an example with observation y, operator A, generator g with weights W and latent z:

    E(z, W) = ||y − A(g(z; W))||² / (2σ²) + ||z||² / 2

−E is log p(y, z; W) up to a constant. Inferential back-prop differentiates it in z
(abp.langevin), learning back-prop in W (abp.train).
"""

from __future__ import annotations

import torch
from torch import nn

from abp.observe import Identity, Observation

IDENTITY = Identity()


def energy(
    generator: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float,
    observation: Observation | None = None,
) -> torch.Tensor:
    """Per-example energy, shape (N,). Sum it (never average it) to differentiate in z, so
    that each example's gradient is its own whatever the batch size."""
    observation = observation or IDENTITY
    return energy_of_residual(observation.residual(y, generator(z)), z, sigma=sigma)


def energy_of_residual(residual: torch.Tensor, z: torch.Tensor, *, sigma: float) -> torch.Tensor:
    """The same energy from a residual y − A(g(z)) already computed (the trainer also reports
    the residual, so it computes it once)."""
    data_term = residual.flatten(1).pow(2).sum(1) / (2 * sigma**2)
    prior_term = z.flatten(1).pow(2).sum(1) / 2
    return data_term + prior_term
