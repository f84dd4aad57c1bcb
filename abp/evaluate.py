"""How a trained generator is scored, exactly as the pipeline scores it (`score` runs the
whole protocol): the most probable latents of a trained generator, the error measures, and
the baselines beside ABP: the two linear ones of abp.baselines, and a VAE (abp.vae) when one
is given.

    train, test = Split.read(folder, "train"), Split.read(folder, "test")
    scores = score(generator, train, test, latent_bank=bank, config=ABPConfig(...))
    scores.metrics["heldout_mae"], scores.metrics["pca_heldout_mae"]

Signals are in [−1, 1] (prepared data); errors are reported on the [0, 1] intensity scale,
as in the paper's tables (multiply by 255 for 8-bit levels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from annotated_types import Ge, Gt

from abp import datasets, texture_stats
from abp.baselines import PCA, linear_baseline, pca_size
from abp.energy import energy
from abp.langevin import frozen_weights
from abp.observe import Identity, Mask, Observation
from abp.settings import check_fields
from abp.train import ABPConfig
from abp.vae import VAE


@dataclass(frozen=True)
class EvaluationConfig:
    """How a trained generator is scored (params.yaml: experiments.<name>.evaluation;
    changing it reruns the evaluation alone, never the training). The weights stay fixed;
    every latent, of a training example (from its latent bank entry) or of a test example
    (from `init`), is the most probable one: gradient descent on the energy, each example
    stopping on its own once its lowest energy falls by less than CONVERGED (relative) over
    10 steps (most_probable_latents)."""

    # The most gradient steps any one latent takes; a latent still descending then stops
    # there (the pipeline's log counts how many used them all).
    n_steps: Annotated[int, Ge(1)] = 300
    # s of the descent z ← z − (s²/2)·∂E/∂z; None: the training's abp.step_size.
    step_size: Annotated[float, Gt(0)] | None = None
    # Where a test example's descent starts: z = 0 (the prior's mode) or a draw from the
    # prior N(0, I) (seeded, so reruns agree).
    init: Literal["zeros", "prior"] = "zeros"
    # Signals generated from prior draws for the samples figure and media (sample_latents:
    # one fixed seed, so evaluations compare).
    n_samples: Annotated[int, Ge(1)] = 16
    # Examples whose descent runs at once on the evaluating device: bounds its memory (one
    # batch there, plus the generator; the splits stay on the host) and changes no result
    # beyond rounding, since each example stops on its own. A batch runs until its slowest
    # example stops, so fewer, larger batches make fewer passes: the 1438 training digits
    # descend in 2 batches of up to 1024 in about 3/4 of the time of 6 batches of 256.
    batch_size: Annotated[int, Ge(1)] = 1024

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Split:
    """One split of a prepared data set as evaluation sees it: the complete signals x (for
    scoring only), the observations y = A(x) a model may use, the operator A, and for
    occluded data the mask of observed entries (True: observed)."""

    x: torch.Tensor
    y: torch.Tensor
    observation: Observation
    mask: torch.Tensor | None = None

    @classmethod
    def read(cls, folder: Path, split: str, manifest: dict[str, Any] | None = None) -> Split:
        """The split `train` or `test` of a prepared data set folder (abp.datasets); pass
        the folder's manifest if it is already read."""
        manifest = manifest if manifest is not None else datasets.read_manifest(folder)
        tensors = datasets.read_split(folder, split)
        y, observation = datasets.observations(tensors, manifest)
        return cls(tensors["x"], y, observation, tensors.get("mask"))

    def __len__(self) -> int:
        return len(self.x)

    @property
    def signal_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


# A latent's descent stops once its lowest energy fell by less than this fraction over 10
# steps (most_probable_latents; EvaluationConfig.n_steps stays the limit).
CONVERGED = 1e-4
# The seed of the prior draws that samples are made from (sample_latents) and of the test
# latents' starts with init: prior.
SAMPLES_SEED, PRIOR_START_SEED = 12345, 0


def mean_absolute_error(
    estimate: torch.Tensor, truth: torch.Tensor, where: torch.Tensor | None = None
) -> float:
    """Mean |estimate − truth| on the [0, 1] scale, over the entries where `where` is nonzero
    (all entries if None)."""
    error = (estimate - truth).abs() / 2  # [−1, 1] → [0, 1] halves distances
    if where is None:
        return float(error.mean())
    where = where.expand_as(error).bool()
    if not where.any():
        raise ValueError("no entries selected: the error over an empty set is undefined")
    return float(error[where].mean())


def most_probable_latents(
    generator: torch.nn.Module,
    y: torch.Tensor,
    z: torch.Tensor,
    *,
    sigma: float,
    step_size: float,
    max_steps: int,
    observation: Observation | None = None,
    tolerance: float = CONVERGED,
    patience: int = 10,
    batch_size: int = EvaluationConfig.batch_size,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient descent on each example's energy E(z) (abp.energy) from z, the weights fixed:
    the MAP latents that scoring uses. Returns (latents, the steps each example took), where
    z is.

    Each example keeps the lowest-energy latent it has visited, because descent with the
    training's step size can overshoot and circle the minimum instead of settling in it, and
    stops on its own once that lowest energy fell by less than `tolerance` (relative) over
    `patience` steps, or after `max_steps`. The examples are descended `batch_size` at a
    time on `device` (default: the generator's), each batch to its end before the next is
    moved there, so y and z may stay on the host and the device holds one batch. One
    example's stop never changes another's result, so the outcome does not depend on
    `batch_size` beyond floating-point rounding.
    """
    device = torch.device(device) if device is not None else device_of(generator)
    observation = observation or Identity()
    half_step = step_size**2 / 2
    # Filled batch by batch: a list of per-batch results, concatenated at the end, keeps the
    # host's peak memory from returning to flat (bench.scale measured it growing with N).
    latents = torch.empty_like(z)
    steps = torch.zeros(len(y), dtype=torch.long, device=z.device)
    with frozen_weights(generator):
        for index in torch.arange(len(y)).split(batch_size):
            batch_z, batch_steps = descend(
                generator,
                y[index].to(device),
                z[index].to(device),
                observation.select(index).to(device),
                sigma=sigma,
                half_step=half_step,
                max_steps=max_steps,
                tolerance=tolerance,
                patience=patience,
            )
            latents[index] = batch_z.to(z.device)
            steps[index] = batch_steps.to(z.device)
    return latents, steps


def descend(
    generator: torch.nn.Module,
    y: torch.Tensor,
    z: torch.Tensor,
    observation: Observation,
    *,
    sigma: float,
    half_step: float,
    max_steps: int,
    tolerance: float,
    patience: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """most_probable_latents for one batch, all on one device: every pass scores the still
    active examples' z and steps them, until each has stopped. Returns (the lowest-energy
    latents, steps per example)."""
    n = len(z)
    z = z.detach().clone()
    best_z, best_energy = z.clone(), torch.full((n,), math.inf, device=z.device)
    energy_at_last_check = best_energy.clone()
    active = torch.ones(n, dtype=torch.bool, device=z.device)
    steps = torch.zeros(n, dtype=torch.long, device=z.device)
    # The active examples change only at a check: reading them then (a host sync) keeps
    # the passes between checks free of syncs.
    index = torch.arange(n, device=z.device)
    for step in range(max_steps + 1):  # the last pass only scores the final step's z
        descending = step < max_steps
        z_active = z[index].requires_grad_(descending)
        with torch.set_grad_enabled(descending):
            e = energy(
                generator, z_active, y[index], sigma=sigma, observation=observation.select(index)
            )
            if descending:
                (grad,) = torch.autograd.grad(e.sum(), z_active)
                z[index] = z_active.detach() - half_step * grad
        e, z_active = e.detach(), z_active.detach()
        better = e < best_energy[index]
        best_energy[index] = torch.where(better, e, best_energy[index])
        rows_better = better.view(-1, *[1] * (z.dim() - 1))
        best_z[index] = torch.where(rows_better, z_active, best_z[index])
        if descending:
            steps[index] += 1
        if (step + 1) % patience == 0:
            stalled = energy_at_last_check - best_energy <= tolerance * best_energy.abs()
            active &= ~stalled
            energy_at_last_check = best_energy.clone()
            index = active.nonzero().squeeze(1)
            if len(index) == 0:
                break
    return best_z, steps


def device_of(generator: torch.nn.Module) -> torch.device:
    """Where the generator's weights are (the CPU for one without weights)."""
    weight = next(generator.parameters(), None)
    return weight.device if weight is not None else torch.device("cpu")


def errors(split: str, estimate: torch.Tensor, truth: Split) -> dict[str, float]:
    """<split>_mae over all entries, and <split>_hidden_mae over the hidden ones if some are."""
    found = {f"{split}_mae": mean_absolute_error(estimate, truth.x)}
    if truth.mask is not None:
        found[f"{split}_hidden_mae"] = mean_absolute_error(estimate, truth.x, where=~truth.mask)
    return found


def scored(
    prefix: str,
    fitted: torch.Tensor,
    recovered: torch.Tensor | None,
    train: Split,
    test: Split | None,
) -> dict[str, float]:
    """One method's errors on the training signals and (if any) the test signals, the keys
    prefixed ("" for ABP, "vae_", "vae_refined_", "pca_", "trivial_"): every method is scored
    by the same code."""
    found = errors("train", fitted, train)
    if recovered is not None and test is not None:
        found.update(errors("heldout", recovered, test))
    return {prefix + key: value for key, value in found.items()}


def consistent(x_hat: torch.Tensor, split: Split) -> torch.Tensor:
    """Keep what the data say: x̂ + A⁺(y − A x̂). Observed pixels take their observed values
    and compressed recoveries agree with their measurements, exactly as the baselines'
    do, so every method is scored on what it adds to the data."""
    if isinstance(split.observation, Identity):
        return x_hat
    return x_hat + split.observation.pseudo_inverse(
        split.y - split.observation(x_hat), split.signal_shape
    )


def sample_latents(
    generator, n: int, *, seed: int = SAMPLES_SEED, latent_shape: Sequence[int] | None = None
) -> torch.Tensor:
    """n latents from the prior, the same on every device (drawn on the CPU, then moved to
    the generator's): the fixed batch that training's sample media and evaluation's samples
    figure are both made from, so they compare."""
    shape = tuple(latent_shape) if latent_shape is not None else tuple(generator.latent_shape)
    weight = next(generator.parameters())
    z = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    return z.to(weight.device, weight.dtype)


def large_texture_latents(generator) -> torch.Tensor:
    """One latent map 2×3 times the training one's (a texture generator's): the larger
    texture the evaluation shows and scores."""
    c, h, w = generator.latent_shape
    return sample_latents(generator, 1, seed=1, latent_shape=(c, 2 * h, 3 * w))


def texture_scores(
    generator, examples: torch.Tensor, n_samples: int, prefix: str = ""
) -> dict[str, float]:
    """How far a texture generator's syntheses are from its training examples
    (abp.texture_stats): `n_samples` from the prior at the training size (the samples
    figure's), one from a latent map 2×3 times the training one's (the large texture's), and
    the baseline, the examples' own pixels shuffled (their histogram, no structure). With a
    `prefix` (another model's decoder: "vae_") its keys carry it, and the baseline, the same
    for every model, is left out."""
    with torch.no_grad():
        samples = generator(sample_latents(generator, n_samples)).cpu()
        large = generator(large_texture_latents(generator)).cpu()
    examples = examples.cpu()
    found = {
        "texture_spectrum_distance": texture_stats.spectrum_distance(samples, examples),
        "texture_spectrum_distance_large": texture_stats.spectrum_distance(large, examples),
        "texture_histogram_distance": texture_stats.histogram_distance(samples, examples),
        "texture_histogram_distance_large": texture_stats.histogram_distance(large, examples),
    }
    if prefix:
        return {prefix + key: value for key, value in found.items()}
    shuffled = texture_stats.shuffled_pixels(examples)
    return {
        **found,
        "shuffled_spectrum_distance": texture_stats.spectrum_distance(shuffled, examples),
    }


@dataclass
class Scores:
    """What `score` found: the errors of ABP and of every baseline (flat numbers), the
    descent steps each inferred latent took ({"train": …, "test": …}), and, for the split the
    comparisons show (test if there is one, else train), each method's signals."""

    metrics: dict[str, float]
    descent_steps: dict[str, torch.Tensor]
    shown_split: Split
    signals: dict[str, torch.Tensor]


def recover(
    generator,
    split: Split,
    start: torch.Tensor,
    config: ABPConfig,
    evaluation: EvaluationConfig,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signals from what is seen of them: g at their most probable latents (descent from
    `start`), keeping what the data say. Returns (signals, descent steps per example), on
    the host (where the split is); the descent and g run on `device` (default: the
    generator's), evaluation.batch_size examples at a time."""
    device = torch.device(device) if device is not None else device_of(generator)
    z, steps = most_probable_latents(
        generator,
        split.y,
        start,
        sigma=config.sigma,
        step_size=evaluation.step_size or config.step_size,
        max_steps=evaluation.n_steps,
        observation=split.observation,
        batch_size=evaluation.batch_size,
        device=device,
    )
    return consistent(generate(generator, z, evaluation.batch_size, device), split), steps


def generate(generator, z: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """g(z), `batch_size` latents at a time on `device`, returned where z is."""
    with torch.no_grad():
        return torch.cat(
            [generator(batch.to(device)).to(z.device) for batch in z.split(batch_size)]
        )


def score_vae(
    vae: VAE,
    train: Split,
    test: Split | None,
    config: ABPConfig,
    evaluation: EvaluationConfig,
) -> tuple[dict[str, float], dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]]:
    """The VAE scored as ABP is (abp.vae): vae_* from the encoder's guesses (q's means, one
    pass, no inference), and vae_refined_* from the most probable latents of its decoder,
    descended from those guesses exactly as ABP's are: the difference is the amortisation
    gap. The descent runs where the comparisons are made: on the test split, and on the
    training split when it is recovered from incomplete or indirect data (or there is no
    test split). It all runs where the VAE is, evaluation.batch_size examples at a time; the
    splits stay on the host. Returns the metrics and {"VAE" | "VAE + descent": (training
    signals or None, test signals or None)}."""
    device, decoder = device_of(vae.decoder), vae.decoder
    refine_train = test is None or not isinstance(train.observation, Identity)
    guessed: dict[str, torch.Tensor] = {}
    refined: dict[str, torch.Tensor] = {}
    for name, split in (("train", train), ("test", test)):
        if split is None:
            continue
        z = vae.encode(split.y, split.observation, batch_size=evaluation.batch_size)
        guessed[name] = consistent(generate(decoder, z, evaluation.batch_size, device), split)
        if name == "test" or refine_train:
            refined[name], _ = recover(decoder, split, z, config, evaluation, device)
    metrics: dict[str, float] = {}
    for prefix, found in (("vae_", guessed), ("vae_refined_", refined)):
        for name, signals in found.items():
            split, error_name = (train, "train") if name == "train" else (test, "heldout")
            assert split is not None  # found only for the splits there are
            metrics.update({prefix + k: v for k, v in errors(error_name, signals, split).items()})
    return metrics, {
        "VAE": (guessed.get("train"), guessed.get("test")),
        "VAE + descent": (refined.get("train"), refined.get("test")),
    }


def starting_latents(generator, n: int, init: str) -> torch.Tensor:
    """Where the test latents' descent starts: z = 0, or a seeded draw from the prior."""
    shape = (n, *generator.latent_shape)
    if init == "zeros":
        return torch.zeros(shape)
    return torch.randn(shape, generator=torch.Generator().manual_seed(PRIOR_START_SEED))


def score(
    generator,
    train: Split,
    test: Split | None,
    *,
    latent_bank: torch.Tensor,
    config: ABPConfig,
    evaluation: EvaluationConfig | None = None,
    device: torch.device | str | None = None,
    vae: VAE | None = None,
) -> Scores:
    """The evaluation protocol: ABP's errors beside those of PCA and of the trivial baseline,
    each learned from exactly the training data ABP learned from and scored alike.

    - train_mae (and train_hidden_mae for occluded data, the paper's recovery error): g at
      each training example's most probable latent, descended from its latent bank entry
      (the last Langevin sample), against the complete training signals;
    - heldout_mae (and heldout_hidden_mae): test signals recovered from what is seen of
      them, from latents descended from `evaluation.init`, against the complete truth;
    - pca_*: PCA with d = pca_components, ABP's latent size unless the training data allow
      fewer (pca_size); missing-data PCA for occluded or compressed data;
    - trivial_*: the training mean signal, or silence for sound (the mean of clips cut
      anywhere in a recording is silence plus noise);
    - vae_* and vae_refined_*, given a VAE learned from the same training data
      (abp.vae.train_vae): its encoder's guesses, and its decoder's most probable latents
      descended from them (score_vae).

    Every recovered signal keeps what the data say (consistent). The weights stay fixed.
    The splits and the latent bank stay on the host, where the errors and the baselines are
    computed; ABP's descent runs on `device` (default: the generator's, where the generator
    must be), evaluation.batch_size examples at a time, so the device holds one batch."""
    evaluation = evaluation or EvaluationConfig()
    generator = generator.eval()
    device = torch.device(device) if device is not None else device_of(generator)
    test = test if test is not None and len(test) > 0 else None
    shape = train.signal_shape
    fitted, train_steps = recover(generator, train, latent_bank, config, evaluation, device)
    steps = {"train": train_steps}
    recovered = None
    if test is not None:
        start = starting_latents(generator, len(test), evaluation.init)
        recovered, steps["test"] = recover(generator, test, start, config, evaluation, device)
    metrics = scored("", fitted, recovered, train, test)

    latent_size = math.prod(generator.latent_shape)
    d = pca_size(latent_size, len(train), math.prod(shape))
    pca_fitted, pca_recovered = linear_baseline(d, train, test)
    metrics.update(scored("pca_", pca_fitted, pca_recovered, train, test))
    # One rule per kind: the mean signal, except for sound, whose mean is silence.
    sound = train.x.dim() == 3  # N×1×L (abp.datasets)
    trivial = PCA.constant(torch.zeros(shape)) if sound else 0
    trivial_fitted, trivial_recovered = linear_baseline(trivial, train, test)
    metrics.update(scored("trivial_", trivial_fitted, trivial_recovered, train, test))
    metrics.update(pca_components=d, latent_size=latent_size, train_examples=len(train))

    vae_signals: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
    if vae is not None:
        vae_metrics, vae_signals = score_vae(vae, train, test, config, evaluation)
        metrics.update(vae_metrics)

    if test is not None:
        # With a test split every method recovered it.
        assert recovered is not None and pca_recovered is not None
        assert trivial_recovered is not None
        shown = test
        signals = {"ABP": recovered, "PCA": pca_recovered, "trivial": trivial_recovered}
    else:
        shown, signals = train, {"ABP": fitted, "PCA": pca_fitted, "trivial": trivial_fitted}
    side = 1 if test is not None else 0
    for name, pair in vae_signals.items():
        shown_signals = pair[side]
        if shown_signals is not None:
            signals[name] = shown_signals
    return Scores(metrics, steps, shown, signals)


def what_is_seen(split: Split) -> tuple[str, torch.Tensor] | None:
    """What a model sees of a split, as signals a figure can show beside the truth: the
    observed entries (occlusion), or A⁺y (compressed measurements); None for complete data.
    (A⁺y is spelled pinv(A)·y: the figures' font has no superscript plus.)"""
    if isinstance(split.observation, Mask):
        return "observed", split.y
    if isinstance(split.observation, Identity):
        return None
    return "pinv(A)·y", split.observation.pseudo_inverse(split.y, split.signal_shape)
