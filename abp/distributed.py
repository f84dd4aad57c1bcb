"""Training on several processes (torchrun, torch.distributed): who is who, and the few
collectives ABP needs.

The pattern for per-example state (MoCo's queue, memory banks): every rank holds the whole
latent bank. Each batch of example ids is shared out to the ranks (`share`); each rank runs
the Langevin steps of its share, then the new (ids, z) of every rank are gathered into every
replica of the bank (`gather_rows`); the learning step goes through DistributedDataParallel,
which averages the gradients. NCCL on CUDA, gloo on the CPU.

    world = join_from_environment(device)   # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, …
    trainer = ABPTrainer(generator, data, config, device=device)  # sees the world itself
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    # The machine (torchrun's node, GROUP_RANK) and how many take part (GROUP_WORLD_SIZE).
    node: int = 0
    nodes: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The process group this process joined, or a world of one."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    launched = launched_world()
    return World(
        dist.get_rank(), dist.get_world_size(), launched.local_rank, launched.node, launched.nodes
    )


def launched_world() -> World:
    """What torchrun's environment says this process is (a world of one without it),
    before any process group is joined."""

    def number(name: str, default: int) -> int:
        return int(os.environ.get(name, str(default)))

    return World(
        number("RANK", 0),
        number("WORLD_SIZE", 1),
        number("LOCAL_RANK", 0),
        number("GROUP_RANK", 0),
        number("GROUP_WORLD_SIZE", 1),
    )


def process_device(world: World) -> torch.device:
    """The device of this rank: its local GPU (LOCAL_RANK) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def join_from_environment(device: torch.device) -> World:
    """Join the process group torchrun described in the environment (NCCL on CUDA, gloo on
    the CPU); a process started without torchrun stays a world of one."""
    world = launched_world()
    if not world.distributed or (dist.is_available() and dist.is_initialized()):
        return current_world() if world.distributed else world
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Rank 0 alone talks to MLflow while the others wait in a collective: a slow tracking
    # server must not trip NCCL's watchdog (10 minutes by default).
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT
    )
    return current_world()


def leave() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def share(ids: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's share of a batch of example ids: contiguous parts whose sizes differ by
    at most one (a part may be empty when the batch is smaller than the world)."""
    if not world.distributed:
        return ids
    return torch.tensor_split(ids, world.size)[world.rank]


def share_sizes(n: int, world: World) -> list[int]:
    """The size of every rank's share of n ids (as `share` cuts them)."""
    return [n // world.size + (1 if r < n % world.size else 0) for r in range(world.size)]


def gather_rows(rows: torch.Tensor, sizes: list[int], world: World) -> torch.Tensor:
    """Every rank's `rows` (rank r holding sizes[r] of them), concatenated in rank order on
    every rank. all_gather needs equal sizes, so each share is padded to the largest."""
    if not world.distributed:
        return rows
    largest = max(sizes)
    padded = rows.new_zeros((largest, *rows.shape[1:]))
    padded[: len(rows)] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def sum_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of `values` over the ranks, on every rank (a copy; `values` is unchanged)."""
    if not world.distributed:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total


def gather_objects(value: Any, world: World) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(value: Any, world: World) -> Any:
    """Rank 0's `value` (picklable), on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
