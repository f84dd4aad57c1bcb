"""Inferential back-prop: Langevin dynamics on each example's own latent.

    z ← z − (s²/2) · ∂E/∂z + s · U,   U ~ N(0, I)

with E the energy of abp.energy and s the step size; without the noise term it is gradient
descent on E. The gradient of the *summed* per-example energy in z_i is ∂E_i/∂z_i, so every
chain in a batch is exact on its own, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from abp.energy import energy
from abp.observe import Observation


@contextmanager
def frozen_weights(module: nn.Module) -> Iterator[None]:
    """Turn off requires_grad on the weights for the duration, so that autograd neither
    computes nor keeps anything for weight gradients; restores the flags afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def infer(
    generator: nn.Module,
    y: torch.Tensor,
    z: torch.Tensor,
    *,
    sigma: float,
    step_size: float,
    n_steps: int,
    noise: bool = True,
    observation: Observation | None = None,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """Run `n_steps` Langevin steps on the latents z for observations y; return the new z.

    Args:
        generator: any nn.Module mapping a batch of z to a batch of signals.
        y: observations, one per example (the batch dimension first).
        z: starting latents, shape (N, *latent_shape); not modified.
        sigma: standard deviation σ of the observation noise ε.
        step_size: Langevin step size s.
        n_steps: number of steps l.
        noise: add s·U at every step (Langevin); False gives gradient descent on E.
        observation: the operator A restricted to this batch; None means identity.
        rng: random generator for U (the global one if None).

    Only z receives gradients: the generator's weights are frozen while the chains run.
    """
    half_step = step_size**2 / 2
    z = z.detach().clone()
    with frozen_weights(generator), torch.enable_grad():
        for _ in range(n_steps):
            z.requires_grad_(True)
            total_energy = energy(generator, z, y, sigma=sigma, observation=observation).sum()
            (grad,) = torch.autograd.grad(total_energy, z)
            with torch.no_grad():
                z = z - half_step * grad
                if noise:
                    z = z + step_size * torch.randn(
                        z.shape, generator=rng, device=z.device, dtype=z.dtype
                    )
    return z.detach()


@torch.no_grad()
def reconstruct(
    generator: nn.Module,
    y: torch.Tensor,
    *,
    latent_shape: tuple[int, ...],
    sigma: float,
    step_size: float,
    n_steps: int,
    noise: bool = False,
    observation: Observation | None = None,
    init: Literal["zeros", "prior"] = "zeros",
    rng: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Infer latents for new data with the weights fixed; return (z, g(z)).

    The chains start at z = 0 (`init="zeros"`) or at a prior draw (`init="prior"`); with
    `noise=False` (the default) inference is gradient descent on E, i.e. the MAP estimate.
    For occluded or compressed y, g(z) recovers the full signal.
    """
    shape = (y.shape[0], *latent_shape)
    if init == "zeros":
        z0 = torch.zeros(shape, device=y.device, dtype=y.dtype)
    elif init == "prior":
        z0 = torch.randn(shape, generator=rng, device=y.device, dtype=y.dtype)
    else:
        raise ValueError(f"init={init!r}; expected 'zeros' or 'prior'")
    z = infer(
        generator,
        y,
        z0,
        sigma=sigma,
        step_size=step_size,
        n_steps=n_steps,
        noise=noise,
        observation=observation,
        rng=rng,
    )
    return z, generator(z)
