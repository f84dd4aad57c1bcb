"""Where the training examples live, and how a batch of them reaches the device.

A data set too large for the device stays on the host, often memory-mapped from the
prepared `.npy` files (abp.datasets.open_split), and each batch is gathered by example id:

- `Examples`: anything with `len()` and `rows(ids) -> float32 rows on the host`: a tensor
  (`InMemory`), a memory-mapped stored array (abp.datasets.Stored), or occluded data whose
  observations are built per batch (`Occluded`: x ⊙ mask, never the whole split at once);
- `Prefetcher`: gathers the next batch on a worker thread (into pinned memory on CUDA, so
  the copy to the device runs without blocking) while the device works on the current one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

import torch

# What `auto` may put on a CUDA device: this fraction of its free memory, the rest being
# for the generator's activations.
DEVICE_SHARE = 0.5


class Examples(Protocol):
    """Training examples addressed by id (0 … len − 1)."""

    def __len__(self) -> int: ...

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The examples `ids` (a 1-D int64 tensor on the host), decoded: float32 signals
        where the data are (the host for files; a tensor's own device)."""
        ...


class InMemory:
    """Examples held in a tensor."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __len__(self) -> int:
        return len(self.tensor)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tensor[ids.to(self.tensor.device)].to(torch.float32)


class Occluded:
    """What a model sees of occluded examples, m ⊙ x, built per batch from the complete
    signals and the masks (True: observed)."""

    def __init__(self, signals: Examples, masks: Examples):
        if len(signals) != len(masks):
            raise ValueError(f"{len(signals)} signals but {len(masks)} masks")
        self.signals, self.masks = signals, masks

    def __len__(self) -> int:
        return len(self.signals)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.signals.rows(ids) * self.masks.rows(ids)


def as_examples(data: torch.Tensor | Examples) -> Examples:
    return InMemory(data) if isinstance(data, torch.Tensor) else data


def all_rows(examples: Examples) -> torch.Tensor:
    """Every example, as one float32 tensor on the host (or where a tensor already is)."""
    if isinstance(examples, InMemory):
        return examples.tensor.to(torch.float32)
    return examples.rows(torch.arange(len(examples)))


def fits_on_device(n_examples: int, example_shape: Sequence[int], device: torch.device) -> bool:
    """Whether the examples as float32 take at most DEVICE_SHARE of a CUDA device's free
    memory; on the CPU the device is the host, and holding them decoded is today's way."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return n_examples * math.prod(example_shape) * 4 <= DEVICE_SHARE * free


T = TypeVar("T")


class Prefetcher(Generic[T]):
    """Runs `gather(batch)` for the batches in order, one ahead of the consumer, on a
    worker thread (reading memory-mapped rows releases the GIL while pages come in). The
    thread lives as long as one pass over the batches."""

    def __init__(self, gather: Callable[[torch.Tensor], T]):
        self.gather = gather

    def __call__(self, batches: Sequence[torch.Tensor]) -> Iterator[T]:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="abp-prefetch") as pool:
            pending: Future[T] | None = None
            for i in range(len(batches)):
                current = pending.result() if pending else self.gather(batches[i])
                if i + 1 < len(batches):
                    pending = pool.submit(self.gather, batches[i + 1])
                yield current
