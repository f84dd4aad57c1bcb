"""CUDA graphs for the fixed-shape Langevin loop (the `cuda_graphs` switch of ABPConfig).

The l Langevin steps of a batch are many small kernels (a forward and a backward pass of the
generator per step); at small batches a GPU spends more time launching them than running
them. A CUDA graph records the whole loop once and replays it with one launch.

`CUDAGraphed(step, rng)` wraps a function `step(ids, rng) -> new latents` that reads
everything else (data, latent bank, operator, weights) from tensors whose memory never
moves. One graph is captured per batch size (an epoch's last batch may be shorter) the first
time that size is seen; a replay copies the batch's example ids into the graph's own id
buffer, replays, and returns a copy of the graph's output.

What makes the replay compute the same chains as the eager loop:
- the trainer's generator is registered with each graph, so a replay draws the Langevin
  noise from it at its current offset and advances it, as the eager loop would (and its
  state in checkpoints stays meaningful);
- the weights are updated in place by the optimizer and loaded in place from checkpoints, so
  the graph always reads the current weights;
- the warm-up runs before capture (as CUDA graphs require) use a scratch generator and
  write nothing, so they change no state of the training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

LangevinStep = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

WARMUP_RUNS = 2


class CUDAGraphed:
    """Replays `step(ids, rng)` from CUDA graphs, one captured per batch size."""

    def __init__(self, step: LangevinStep, rng: torch.Generator):
        if rng.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA generator, got one on {rng.device}")
        self.step, self.rng = step, rng
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if len(ids) not in self.graphs:
            self.graphs[len(ids)] = self._capture(len(ids), ids.device)
        graph, static_ids, static_out = self.graphs[len(ids)]
        static_ids.copy_(ids)
        graph.replay()
        return static_out.clone()  # the next replay overwrites static_out

    def _capture(self, size: int, device: torch.device):
        static_ids = torch.zeros(size, dtype=torch.long, device=device)  # example 0, repeated
        scratch = torch.Generator(device).manual_seed(0)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
            for _ in range(WARMUP_RUNS):
                self.step(static_ids, scratch)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with warnings.catch_warnings():
            # Needed before torch 2.14; from then on a generator registers itself when a
            # capture first uses it, and this call warns that it is a no-op.
            warnings.filterwarnings("ignore", message=r"CUDAGraph\.register_generator_state")
            graph.register_generator_state(self.rng)
        # Graphs of other batch sizes share one memory pool: replays never overlap and
        # each output is copied out at once, so their temporaries can share memory.
        pool = next(iter(self.graphs.values()))[0].pool() if self.graphs else None
        with torch.cuda.graph(graph, pool=pool):
            static_out = self.step(static_ids, self.rng)
        return graph, static_ids, static_out
