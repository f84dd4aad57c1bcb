"""Telling a diverging ABP training from a slow one, and saying why.

A step size too large for σ makes the Langevin chains blow up; a learning rate too large
makes the weights run away (and, with them, the chains). The trainer watches every batch on
the device, without host syncs (DivergenceWatch), and at the end of an epoch raises
DivergenceError with a diagnosis: the epoch and batch, the energy before, and the setting to
look at first. risky_settings() names settings far outside what trains stably, up front.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from abp.train import ABPConfig

LATENT_LIMIT = 1e6
# An epoch energy this many times the lowest so far is no fluctuation: the weights are
# running away (seen with SGD at too large a learning rate, still finite for a few epochs).
ENERGY_RISE_LIMIT = 100.0


class DivergenceError(RuntimeError):
    """Training produced a non-finite energy, latent or weight, or ran away. `cause` says
    what blew up ("langevin": the latents; "learning": the energy or the weights) and
    `setting` the suspect ("step_size" or "learning_rate"); the message gives the epoch and
    batch, the energy before, and what to change."""

    def __init__(
        self,
        message: str,
        *,
        epoch: int,
        batch: int,
        cause: str,
        setting: str,
        energy_before: float | None,
    ):
        super().__init__(message)
        self.epoch, self.batch, self.cause, self.setting = epoch, batch, cause, setting
        self.energy_before = energy_before


def langevin_gain(config: ABPConfig) -> float:
    """s²/(2σ²): the factor on the data term's gradient in one Langevin step. Stable steps
    need it well below 1 for the generator's slopes; the defaults (s = 0.1, σ = 0.3) give 0.056."""
    return config.step_size**2 / (2 * config.sigma**2)


def diagnose_divergence(
    config: ABPConfig,
    *,
    epoch: int,
    batch: int,
    n_batches: int,
    cause: str,
    energy_before: float | None,
    what: str | None = None,
) -> DivergenceError:
    """The error for a divergence, naming the likelier culprit first. Chains that blow up
    with a nominally small Langevin step (s²/(2σ²) ≤ 0.5) point at the weights: a learning
    rate too large makes the generator's slopes grow until the step is no longer stable."""
    before = (
        f"{energy_before:.4g} per example"
        if energy_before is not None
        else "none yet (it diverged in the first batch)"
    )
    langevin = (
        f"the Langevin step: step_size {config.step_size:g} with sigma {config.sigma:g} "
        f"gives s²/(2σ²) = {langevin_gain(config):.3g} (the defaults give 0.056; keep "
        "it well below 1): lower step_size or raise sigma"
    )
    learning = (
        f"the learning step: learning_rate {config.learning_rate:g} ({config.optimizer}): lower it"
    )
    setting = (
        "step_size" if cause == "langevin" and langevin_gain(config) > 0.5 else "learning_rate"
    )
    first, second = (langevin, learning) if setting == "step_size" else (learning, langevin)
    what = what or (
        f"the Langevin chains blew up (a latent became inf, NaN or beyond {LATENT_LIMIT:g})"
        if cause == "langevin"
        else "the energy or the generator's weights became inf or NaN"
    )
    return DivergenceError(
        f"training diverged at epoch {epoch}, batch {batch + 1} of {n_batches}: {what}. "
        f"Energy before: {before}. Look first at {first}; then at {second}.",
        epoch=epoch,
        batch=batch,
        cause=cause,
        setting=setting,
        energy_before=energy_before,
    )


class DivergenceWatch:
    """Records, without host syncs, the first batch of an epoch where something stopped
    being finite, what it was, and the last finite batch energy before it."""

    LANGEVIN, LEARNING = 1, 2

    def __init__(self, device: torch.device):
        self.first_batch = torch.full((), -1, dtype=torch.long, device=device)
        self.cause = torch.zeros((), dtype=torch.long, device=device)
        self.energy_before = torch.full((), float("nan"), device=device)

    def _see(self, batch: int, finite: torch.Tensor, cause: int) -> None:
        first = (self.first_batch < 0) & ~finite
        self.first_batch = torch.where(first, batch, self.first_batch)
        self.cause = torch.where(first, cause, self.cause)

    def latents(self, batch: int, z: torch.Tensor) -> None:
        # False for inf and NaN too. The prior is N(0, I): a latent beyond LATENT_LIMIT is
        # out of reach of any sane chain (a σ far too small for the step size gets there in
        # one step while staying finite, the tanh output hiding it from the energy's data term).
        self._see(batch, (z.abs() < LATENT_LIMIT).all(), self.LANGEVIN)

    def energies(self, batch: int, energies: torch.Tensor) -> None:
        finite = torch.isfinite(energies).all()
        self._see(batch, finite, self.LEARNING)
        still_good = (self.first_batch < 0) & finite
        self.energy_before = torch.where(still_good, energies.mean(), self.energy_before)

    def weights(self, batch: int, parameters) -> None:
        finite = torch.stack([torch.isfinite(p).all() for p in parameters]).all()
        self._see(batch, finite, self.LEARNING)

    def verdict(self) -> tuple[int, str, float | None] | None:
        first, cause, before = (
            t.item() for t in (self.first_batch, self.cause, self.energy_before)
        )
        if first < 0:
            return None
        return (
            int(first),
            "langevin" if cause == self.LANGEVIN else "learning",
            None if before != before else float(before),
        )


def risky_settings(config: ABPConfig) -> list[str]:
    """Warnings for settings far outside what trains stably (they may still work)."""
    found = []
    if langevin_gain(config) > 1:
        found.append(
            f"step_size {config.step_size:g} is large for sigma {config.sigma:g}: "
            f"s²/(2σ²) = {langevin_gain(config):.3g} (keep it well below 1; the "
            "defaults give 0.056), so the Langevin chains may blow up"
        )
    usual = 0.1 if config.optimizer == "adam" else 1.0
    if config.learning_rate > usual:
        found.append(
            f"learning_rate {config.learning_rate:g} is far above what {config.optimizer} "
            f"usually trains with (≤ {usual:g}): the generator may saturate or diverge"
        )
    return found
