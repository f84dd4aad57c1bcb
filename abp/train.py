"""Learning back-prop and the ABP training loop.

Each epoch visits every training example once, in a shuffled order. For a batch:

1. inferential back-prop: l Langevin steps on the batch's latents, warm-started from the
   latent bank where the last epoch left them (persistent chains), written back afterwards;
2. learning back-prop: one optimizer step on the weights W for the same energy at those z.

Everything random (initial latents, shuffling, Langevin noise) draws from the trainer's own
torch.Generator, whose state is checkpointed with the weights, the optimizer and the latent
bank, so training resumed from a checkpoint continues exactly as if it had never stopped. On
several ranks (abp.distributed) the Langevin noise draws from one generator per rank, whose
states are all checkpointed: a resume at the same world size is exact, at another it is not
(a warning says so).

    trainer = ABPTrainer(generator, data, ABPConfig(sigma=0.3, step_size=0.1))
    trainer.fit(epochs=100, callbacks=[Checkpointer("ckpt.pt", every=10)])

A diverging epoch (abp.divergence) raises DivergenceError before its callbacks run: a
diverged state never reaches a Checkpointer, so the last checkpoint on disk stays good.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from annotated_types import Ge, Gt, Lt

from abp.data import Examples, Prefetcher, all_rows, as_examples, fits_on_device
from abp.distributed import (
    barrier,
    current_world,
    gather_objects,
    gather_rows,
    share,
    share_sizes,
    sum_over_ranks,
)
from abp.divergence import ENERGY_RISE_LIMIT, DivergenceWatch, diagnose_divergence
from abp.energy import energy_of_residual
from abp.fast import fast_forward
from abp.files import atomic_path
from abp.graphs import CUDAGraphed
from abp.langevin import infer
from abp.models import Generator
from abp.observe import Identity, Mask, Observation, SeededProjections
from abp.settings import as_dict, check_fields

CHECKPOINT_FORMAT = 1
Beta = Annotated[float, Ge(0), Lt(1)]  # Adam's decay rates


@dataclass(frozen=True)
class ABPConfig:
    """What the algorithm computes. `sigma` is σ, `step_size` is s, `langevin_steps` is l.

    The one definition of these settings: params.yaml's `experiments.<name>.abp` is
    validated into this class (flows/config.py), with the bounds annotated here."""

    sigma: Annotated[float, Gt(0)] = 0.3
    step_size: Annotated[float, Gt(0)] = 0.1
    langevin_steps: Annotated[int, Ge(0)] = 10
    noise: bool = True  # off: the l steps are gradient descent on the energy
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: Annotated[float, Gt(0)] = 3e-4
    adam_betas: tuple[Beta, Beta] = (0.5, 0.999)
    sgd_momentum: Annotated[float, Ge(0)] = 0.0
    batch_size: Annotated[int, Ge(1)] = 64  # examples per learning step
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


@dataclass(frozen=True)
class ExecutionConfig:
    """How the iteration runs on the hardware, not what it computes: a checkpoint resumes
    whatever these are, and the pipeline's checkpoint fingerprint leaves them out. Each
    computes the same iteration up to floating-point rounding (bf16: the generator's
    arithmetic in bfloat16; inference_batch_size: Langevin on larger batches, so the
    learning steps within one inference batch see latents inferred before them), as
    bench.cuda_checks and the tests check (README, Performance)."""

    # Examples whose Langevin steps run at once (None: the learning batch_size); at least
    # batch_size (check_batches).
    inference_batch_size: Annotated[int, Ge(1)] | None = None
    channels_last: bool = False  # NHWC memory order for the generator's 4-D activations
    bf16: bool = False  # bfloat16 autocast of the generator (abp.fast)
    compile: bool = False  # torch.compile of the generator
    cuda_graphs: bool = False  # the Langevin loop replayed from CUDA graphs (CUDA only)

    def __post_init__(self) -> None:
        check_fields(self)

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


def check_batches(config: ABPConfig, execution: ExecutionConfig) -> None:
    """The rule across the two: an inference batch holds whole learning batches."""
    if (
        execution.inference_batch_size is not None
        and execution.inference_batch_size < config.batch_size
    ):
        raise ValueError(
            f"inference_batch_size ({execution.inference_batch_size}) must be at "
            f"least batch_size ({config.batch_size})"
        )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def noise_seed(seed: int, rank: int, resumed_at: int = -1) -> int:
    """The seed of a rank's Langevin noise: mixed from (seed, rank, the epoch a resume at
    another world size began), so that no rank's stream is the shuffling stream (seeded by
    `seed`) nor another run's (seed + 1, …)."""
    words = [seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, rank, resumed_at + 1, 0x4E015E]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


class LatentBank:
    """One latent per training example, addressed by example id, on the training device."""

    def __init__(self, latents: torch.Tensor):
        self.latents = latents

    @classmethod
    def from_prior(
        cls,
        n_examples: int,
        latent_shape: Sequence[int],
        *,
        rng: torch.Generator,
        device: torch.device,
    ) -> LatentBank:
        return cls(torch.randn((n_examples, *latent_shape), generator=rng, device=device))

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.latents[ids]

    def __setitem__(self, ids: torch.Tensor, z: torch.Tensor) -> None:
        self.latents[ids] = z


@dataclass(frozen=True)
class Share:
    """A rank's part of an inference batch: its example ids; its learning batches as
    (start in ids, size, size of the global learning batch); and every rank's count."""

    ids: torch.Tensor
    parts: list[tuple[int, int, int]]
    rank_sizes: list[int]


EpochCallback = Callable[["ABPTrainer", dict[str, float]], None]


class ABPTrainer:
    """Alternating back-propagation, on one process or on every rank of a torchrun world.

    Args:
        generator: the generator g(z; W); needs a `latent_shape` attribute (abp.models).
        data: observations y of every training example, example id = row index: a tensor,
            or any abp.data.Examples (memory-mapped prepared arrays, read per batch).
        config: what the algorithm computes (σ, s, l, the optimizer, …).
        execution: how the iteration runs (speed switches; defaults: all off).
        observation: the operator A for the whole data set (identity if None).
        device: defaults to CUDA when available, else CPU.
        data_on_device: hold the whole data set on the device (True), or leave it where it
            is (on the host, memory-mapped) and move each batch there as it is needed
            (False); None: on the device when it fits (abp.data.fits_on_device; always on
            the CPU, where holding it decoded is fastest).

    In a torchrun world (torch.distributed initialised: abp.distributed), every rank holds
    the whole latent bank; each batch of ids is shared out to the ranks, their new latents
    gathered into every replica, and the learning step goes through DistributedDataParallel.
    A global batch of B examples over k ranks computes the update of B on one process.
    """

    def __init__(
        self,
        generator: Generator,
        data: torch.Tensor | Examples,
        config: ABPConfig,
        *,
        execution: ExecutionConfig | None = None,
        observation: Observation | None = None,
        device: torch.device | str | None = None,
        data_on_device: bool | None = None,
    ):
        self.config = config
        self.execution = execution = execution or ExecutionConfig()
        check_batches(config, execution)
        self.world = current_world()
        self.device = torch.device(device) if device is not None else default_device()
        self.generator = generator.to(self.device)
        # What computes g(z): the generator itself, or it with speed-ups (same weights).
        self.forward = fast_forward(
            self.generator,
            channels_last=execution.channels_last,
            bf16=execution.bf16,
            compile=execution.compile,
        )
        # The learning step's forward: through DDP on several ranks (gradients averaged).
        self.learn_forward = self.forward
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.learn_forward = DistributedDataParallel(self.forward, device_ids=ids)
        examples = as_examples(data)
        self.n_examples = len(examples)
        self._place_data(examples, observation or Identity(), data_on_device)
        # Shuffling and the initial latents draw from `rng`, the same stream on every rank;
        # the Langevin noise from `noise_rng`, each rank its own (noise_seed).
        self.rng = torch.Generator(self.device).manual_seed(config.seed)
        self.noise_rng = self.rng
        if self.world.distributed:
            self.noise_rng = torch.Generator(self.device).manual_seed(
                noise_seed(config.seed, self.world.rank)
            )
        self.latent_bank = LatentBank.from_prior(
            self.n_examples, generator.latent_shape, rng=self.rng, device=self.device
        )
        self.optimizer = self._make_optimizer()
        self.langevin = self._make_langevin()
        self.epoch = 0
        self.history: list[dict[str, float]] = []

    def _place_data(
        self, examples: Examples, observation: Observation, on_device: bool | None
    ) -> None:
        """The data set on the device (`self.data`), or left where it is and read per batch
        (`self.examples`, a Prefetcher, and staging buffers on CUDA)."""
        example_shape = tuple(examples.rows(torch.arange(1)).shape[1:])
        per_example = isinstance(observation, Mask) and observation.per_example
        # Each example's own matrix (M×D floats: D times its M measurements) goes along too.
        projections = isinstance(observation, SeededProjections)
        if on_device is None:  # a per-example mask goes along, as float32 too
            arrays = 2 if per_example else 1
            if isinstance(observation, SeededProjections):
                arrays = 1 + observation.size
            on_device = fits_on_device(self.n_examples * arrays, example_shape, self.device)
        self.data_on_device = on_device
        self.data: torch.Tensor | None = None
        self.examples: Examples | None = None
        if on_device:
            self.data = all_rows(examples).to(self.device, torch.float32)
            self.observation = observation.to(self.device)
            return
        self.examples = examples
        # A per-example operator (masks, matrices) stays with the data and is selected with
        # each batch on the host; a shared one goes to the device.
        own = per_example or projections
        self.observation = observation if own else observation.to(self.device)
        self.prefetch: Prefetcher[tuple[torch.Tensor, Observation]] = Prefetcher(self._host_batch)
        self._staged: tuple[torch.Tensor, Observation] | None = None
        self._staging: tuple[torch.Tensor, torch.Tensor | None] | None = None
        # Per-example matrices are moved with each batch (`_staged`), not into fixed buffers.
        if self.device.type == "cuda" and not projections:
            # Fixed buffers the batches are copied into: what a CUDA graph reads. Rank 0's
            # share of a full inference batch is the largest share any batch gives a rank.
            full = self.execution.inference_batch_size or self.config.batch_size
            rows = max(self._share(torch.arange(full)).rank_sizes)
            y = torch.zeros((rows, *example_shape), device=self.device)
            mask = torch.zeros_like(y) if per_example else None
            self._staging = (y, mask)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = self.generator.parameters()
        if self.config.optimizer == "adam":
            return torch.optim.Adam(
                params, lr=self.config.learning_rate, betas=self.config.adam_betas
            )
        return torch.optim.SGD(
            params, lr=self.config.learning_rate, momentum=self.config.sgd_momentum
        )

    def _make_langevin(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """What runs the Langevin steps for a batch of example ids: eagerly, or replayed
        from CUDA graphs of the very same code."""
        projections = isinstance(self.observation, SeededProjections)
        if self.execution.cuda_graphs and self.device.type == "cuda" and not projections:
            return CUDAGraphed(self.langevin_on, self.noise_rng)
        if self.execution.cuda_graphs and projections:
            # A batch's matrices are gathered anew for each batch (new tensors), which a
            # replayed graph would not see.
            warnings.warn(
                "cuda_graphs is on but each example has its own measurement matrix: "
                "running the Langevin loop without CUDA graphs",
                stacklevel=3,
            )
            return lambda ids: self.langevin_on(ids, self.noise_rng)
        if self.execution.cuda_graphs:
            warnings.warn(
                f"cuda_graphs is on but training runs on {self.device}: "
                "running the Langevin loop without CUDA graphs",
                stacklevel=3,
            )
        return lambda ids: self.langevin_on(ids, self.noise_rng)

    def langevin_on(self, ids: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Inferential back-prop for the training examples `ids`, starting from their
        latents in the bank; returns the new latents (the bank is left as it is).
        Free of host syncs, so it can be captured into a CUDA graph."""
        cfg = self.config
        y, observation = self._batch(ids)
        return infer(
            self.forward,
            y,
            self.latent_bank[ids],
            sigma=cfg.sigma,
            step_size=cfg.step_size,
            n_steps=cfg.langevin_steps,
            noise=cfg.noise,
            observation=observation,
            rng=rng,
        )

    def _batch(self, ids: torch.Tensor) -> tuple[torch.Tensor, Observation]:
        """The observations and operator of the examples `ids`, on the device: rows of the
        data set there, or the batch staged from the host (`_stage`)."""
        if self.data is not None:
            return self.data[ids], self.observation.select(ids)
        if self._staging is not None:  # fixed buffers: a CUDA graph replays these addresses
            y, mask = self._staging
            n = len(ids)
            return y[:n], self.observation if mask is None else Mask(mask[:n], validate=False)
        assert self._staged is not None, "a batch is staged before its steps run"
        return self._staged

    def _host_batch(self, ids: torch.Tensor) -> tuple[torch.Tensor, Observation]:
        """Gather the examples `ids` (on the host) from where the data set lives: on the
        prefetch thread, into pinned memory on CUDA."""
        assert self.examples is not None
        y = self.examples.rows(ids)
        observation = self.observation.select(ids)
        if self.device.type == "cuda":
            y = y.pin_memory()
            if isinstance(observation, Mask) and observation.per_example:  # else on the device
                observation = Mask(observation.mask.pin_memory(), validate=False)
        return y, observation

    def _stage(self, host_batch: tuple[torch.Tensor, Observation]) -> None:
        """Move a gathered batch to where `_batch` reads it (copies that do not block)."""
        y, observation = host_batch
        if self._staging is None:
            self._staged = (y.to(self.device), observation.to(self.device))
            return
        y_buffer, mask_buffer = self._staging
        y_buffer[: len(y)].copy_(y, non_blocking=True)
        if mask_buffer is not None:
            assert isinstance(observation, Mask)
            mask_buffer[: len(y)].copy_(observation.mask, non_blocking=True)

    def learning_step(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        observation: Observation,
        global_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on W for the energy at the inferred z (the batch mean of the
        per-example energies: a Monte Carlo estimate of the expected gradient).
        Returns the per-example energies and the residual, detached.

        On several ranks z is this rank's share of a global batch of `global_size`: the
        loss is scaled so that DDP's average over the ranks is the global batch's mean."""
        self.optimizer.zero_grad(set_to_none=True)
        residual = observation.residual(y, self.learn_forward(z))
        energies = energy_of_residual(residual, z, sigma=self.config.sigma)
        if self.world.distributed:
            if not global_size:
                raise ValueError("on several ranks a learning step needs its global batch size")
            (energies.sum() * (self.world.size / global_size)).backward()
        else:
            energies.mean().backward()
        self.optimizer.step()
        return energies.detach(), residual.detach()

    def _share(self, ids: torch.Tensor) -> Share:
        """This rank's part of an inference batch `ids`: the batch is cut into learning
        batches of batch_size, and each of those shared out to the ranks, so that every
        rank takes the same number of learning steps (uneven counts hang DDP)."""
        world, size = self.world, self.config.batch_size
        learning = [ids] if len(ids) <= size else list(ids.split(size))
        mine = [share(part, world) for part in learning]
        parts, start = [], 0
        for part, my_part in zip(learning, mine, strict=True):
            parts.append((start, len(my_part), len(part)))
            start += len(my_part)
        rank_sizes = [0] * world.size
        for part in learning:
            for rank, n in enumerate(share_sizes(len(part), world)):
                rank_sizes[rank] += n
        return Share(torch.cat(mine) if len(mine) > 1 else mine[0], parts, rank_sizes)

    def _write_bank(self, ids: torch.Tensor, z: torch.Tensor, rank_sizes: list[int]) -> None:
        """The batch's new latents into the bank: every rank's, on every rank."""
        if self.world.distributed:
            ids = gather_rows(ids, rank_sizes, self.world)
            z = gather_rows(z, rank_sizes, self.world)
        self.latent_bank[ids] = z

    def train_epoch(self) -> dict[str, float]:
        """One pass over the data; returns the epoch's statistics (also kept in `history`)."""
        cfg = self.config
        started = time.perf_counter()
        order = torch.randperm(self.n_examples, generator=self.rng, device=self.device)
        if self.data is None:
            order = order.cpu()  # the batches are gathered on the host: one sync per epoch
        # Sums stay on the device: one host sync per epoch, not per batch.
        total_energy = torch.zeros((), device=self.device)
        squared_error = torch.zeros((), device=self.device)
        observed = torch.zeros((), device=self.device)
        # The divergence watch, on the device too: the first batch whose latents (then
        # energies) are not finite, and the last finite batch energy before it.
        watch = DivergenceWatch(self.device)
        batches = order.split(self.execution.inference_batch_size or cfg.batch_size)
        shares = [self._share(ids) for ids in batches]
        gathered: Iterator[tuple[torch.Tensor, Observation]] | None = None
        if self.data is None:
            gathered = self.prefetch([s.ids for s in shares])
        for batch, mine in enumerate(shares):
            if gathered is not None:
                self._stage(next(gathered))
            ids = mine.ids.to(self.device)
            z = self.langevin(ids)
            watch.latents(batch, z)
            self._write_bank(ids, z, mine.rank_sizes)
            y, observation = self._batch(ids)
            whole = len(mine.parts) == 1 and not self.world.distributed
            for start, size, global_size in mine.parts:
                part_z, part_y, part_observation = z, y, observation
                if not whole:
                    part = torch.arange(start, start + size, device=self.device)
                    part_z, part_y = z[part], y[part]
                    part_observation = observation.select(part)
                energies, residual = self.learning_step(
                    part_z, part_y, part_observation, global_size
                )
                if size:  # the mean of no energies is no energy
                    watch.energies(batch, energies)
                watch.weights(batch, self.generator.parameters())
                total_energy += energies.sum()
                squared_error += residual.pow(2).sum()
                observed += part_observation.observed_count(part_y)
        if self.world.distributed:
            total_energy, squared_error, observed = sum_over_ranks(
                torch.stack([total_energy, squared_error, observed]), self.world
            ).unbind()
        divergence = self._verdict(watch)  # the epoch's one host sync for it
        if divergence is not None:
            batch, cause, energy_before = divergence
            if energy_before is None and self.history:
                energy_before = self.history[-1]["energy"]
            raise diagnose_divergence(
                cfg,
                epoch=self.epoch + 1,
                batch=batch,
                n_batches=len(batches),
                cause=cause,
                energy_before=energy_before,
            )
        energy = float(total_energy) / self.n_examples
        lowest = min((h["energy"] for h in self.history), default=None)
        if lowest is not None and lowest > 0 and energy > ENERGY_RISE_LIMIT * lowest:
            raise diagnose_divergence(
                cfg,
                epoch=self.epoch + 1,
                batch=len(batches) - 1,
                n_batches=len(batches),
                cause="learning",
                energy_before=self.history[-1]["energy"],
                what=f"the energy rose {energy / lowest:.3g}-fold above its lowest "
                f"({lowest:.4g} → {energy:.4g} per example)",
            )
        self.epoch += 1
        stats = {
            "epoch": self.epoch,
            "energy": energy,
            "reconstruction_mse": float(squared_error / observed),
            "seconds": time.perf_counter() - started,
        }
        self.history.append(stats)
        return stats

    def _verdict(self, watch: DivergenceWatch) -> tuple[int, str, float | None] | None:
        """The epoch's divergence, the first of any rank's: every rank raises alike."""
        verdicts = gather_objects(watch.verdict(), self.world)
        found = [v for v in verdicts if v is not None]
        # A rank's inf latents make every rank's weights inf in the same batch (DDP's
        # all-reduce): there the Langevin cause comes first, as on one process.
        return min(found, key=lambda v: (v[0], v[1] != "langevin")) if found else None

    def fit(self, epochs: int, callbacks: Sequence[EpochCallback] = ()) -> list[dict[str, float]]:
        """Train until `epochs` epochs in total are done (a resumed trainer continues from
        its epoch); each callback is called as callback(trainer, stats) after every epoch."""
        while self.epoch < epochs:
            stats = self.train_epoch()
            for callback in callbacks:
                callback(self, stats)
        return self.history

    # --- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The full training state. On several ranks a collective: every rank calls it."""
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "config": self.config.as_dict(),
            "generator_config": getattr(self.generator, "config", None),
            "generator": self.generator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "latent_bank": self.latent_bank.latents,
            "rng_state": self.rng.get_state(),
            "history": list(self.history),
            # Every rank's Langevin noise stream (a collective on several ranks: every
            # rank calls state_dict, rank 0 writes it).
            "world_size": self.world.size,
            "rank_rng_states": gather_objects(self.noise_rng.get_state(), self.world),
        }

    def retune(self, **settings: Any) -> None:
        """Change settings in place, e.g. the step size or learning rate a retry after
        divergence lowers; then load the last good state with load_state_dict(state,
        retuned=...). The Langevin loop is rebuilt (CUDA graphs hold the step size)."""
        self.config = dataclasses.replace(self.config, **settings)
        self.langevin = self._make_langevin()

    def load_state_dict(self, state: dict[str, Any], *, retuned: Sequence[str] = ()) -> None:
        """Continue from `state`. Settings named in `retuned` may differ from the state's
        (a retry after divergence lowers the step size or learning rate); every other
        setting of ABPConfig must be the same, or it would not continue the same run (the
        ExecutionConfig may differ: it changes how the iteration runs, not what it is)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}"
            )
        changed = sorted(
            k
            for k, v in self.config.as_dict().items()
            if state["config"].get(k) != v and k not in retuned
        )
        if changed:
            raise ValueError(
                f"the checkpoint was made with other settings ({', '.join(changed)}); "
                "resuming it would not continue the same run"
            )
        bank = state["latent_bank"]
        if bank.shape != self.latent_bank.latents.shape:
            raise ValueError(
                f"the checkpoint's latent bank has shape {tuple(bank.shape)}, but this "
                f"data set needs {tuple(self.latent_bank.latents.shape)}"
            )
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the state's rate, unless retuned
            group["lr"] = self.config.learning_rate
        self.latent_bank.latents.copy_(bank)
        self.rng.set_state(state["rng_state"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        self._restore_noise(state)

    def _restore_noise(self, state: dict[str, Any]) -> None:
        """Each rank's Langevin noise stream where the checkpoint left it. At another world
        size there is no such stream: on several ranks fresh ones (seeded by seed, rank and
        epoch) continue, on one process the noise continues from `rng`; either way the run is
        no longer the one an uninterrupted training would have been."""
        saved_size = state.get("world_size", 1)
        if saved_size == self.world.size:
            if self.world.distributed:
                self.noise_rng.set_state(state["rank_rng_states"][self.world.rank])
            return  # one process: the noise stream is `rng`, restored above
        warnings.warn(
            f"resuming a checkpoint of {saved_size} process(es) on {self.world.size}: the "
            "Langevin noise continues from new seeds, so the run goes on, but not exactly "
            "as it would have without the interruption",
            stacklevel=3,
        )
        if self.world.distributed:
            self.noise_rng.manual_seed(noise_seed(self.config.seed, self.world.rank, self.epoch))

    def save_checkpoint(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write a full checkpoint atomically (a temporary file, then a rename): a crash while
        saving never leaves a truncated checkpoint under `path`; on several ranks, rank 0
        writes it. `extra` (plain values) is stored beside the state, e.g. to tell which run
        the checkpoint belongs to."""
        state = self.state_dict()  # on every rank: it gathers every rank's noise stream
        if self.world.is_main:
            with atomic_path(path) as tmp:
                torch.save({**state, "extra": dict(extra or {})}, tmp)
        barrier(self.world)  # no rank runs ahead of a checkpoint not yet on disk
        return Path(path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        # Loaded on the CPU: the RNG state must stay a CPU tensor; load_state_dict moves
        # the rest to the training device.
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class Checkpointer:
    """Epoch callback: save a checkpoint every `every` epochs (and never lose the last one)."""

    def __init__(
        self, path: str | os.PathLike, every: int = 1, extra: dict[str, Any] | None = None
    ):
        if every < 1:
            raise ValueError(f"every={every} must be ≥ 1")
        self.path, self.every, self.extra = Path(path), every, dict(extra or {})

    def __call__(self, trainer: ABPTrainer, stats: dict[str, float]) -> None:
        if trainer.epoch % self.every == 0:
            trainer.save_checkpoint(self.path, extra=self.extra)
