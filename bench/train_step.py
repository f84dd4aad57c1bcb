"""One full ABP iteration (l Langevin steps + one learning step): ours against the usual way.

    python -m bench.train_step                  # CPU: batches 64, 256; CUDA: 64 … 1024
    python -m bench.train_step --speedups       # ours without the speed switches

"reference" is ABP as public code usually writes it: `loss.backward()` inside every Langevin
step (so weight gradients are computed and thrown away), a batch-mean loss rescaled to the
summed energy, the data copied host → device every batch and the latents kept on the host.
"ours" is abp.train.ABPTrainer: weights frozen during inference (gradients to z only), data
and latent bank resident on the device, no host sync inside the Langevin loop. Both run the
same settings from the same weights, data and seed; the table gives examples/s, Langevin
steps/s (chains × steps per second), peak memory (CUDA: reserved by a fresh
trainer's first iteration) and the ratio. On CUDA it also gives
TFLOP/s from a FLOP count of the iteration and the fraction of the device's bf16 peak.

The last line is `speedup_vs_reference=<x>` for the face preset at the largest batch.
Needs torch (and abp) only.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from abp.models import AudioGenerator, Generator, TextureGenerator, face_generator
from abp.train import ABPConfig, ABPTrainer, ExecutionConfig

# The algorithm's defaults (σ = 0.3, s = 0.1, l = 10, Adam at 3e-4), for ours and the
# reference alike; the batch size is each row's.
DEFAULTS = ABPConfig()
SIGMA, STEP_SIZE, LANGEVIN_STEPS = DEFAULTS.sigma, DEFAULTS.step_size, DEFAULTS.langevin_steps
# ExecutionConfig's on/off switches (channels_last, bf16, compile, cuda_graphs).
SWITCHES = tuple(f.name for f in dataclasses.fields(ExecutionConfig) if f.default is False)

# Dense bf16 tensor-core peaks (TFLOP/s) of the cards we expect, by name fragment; the first
# fragment found in the device name wins, so the specific ones come first.
BF16_PEAK = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
}


@dataclass
class Case:
    name: str
    build: Callable[[], Generator]


CASES = [
    Case("face 64×64 (d=100)", lambda: face_generator(channels=3)),
    Case(
        "texture 112×112",
        lambda: TextureGenerator(latent_channels=4, latent_size=7, channels=3, widths=(64, 32, 16)),
    ),
    Case("audio 4096 samples", AudioGenerator),
]


def reference_iteration(
    generator: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_host: torch.Tensor,
    z_host: torch.Tensor,
    device: torch.device,
    rng: torch.Generator,
) -> None:
    """One ABP iteration written the usual way (see the module docstring)."""
    x = x_host.to(device, copy=True)  # host → device every batch
    z = z_host.to(device, copy=True).requires_grad_(True)  # latents live on the host
    n, size = x.shape[0], x[0].numel()
    for _ in range(LANGEVIN_STEPS):
        generator.zero_grad()
        mse = ((x - generator(z)) ** 2).mean()  # batch-mean loss …
        loss = mse * n * size / (2 * SIGMA**2) + (z**2).sum() / 2  # … rescaled to the sum
        loss.backward()  # weight gradients too
        assert z.grad is not None  # z is a leaf that requires grad: backward() filled it
        with torch.no_grad():
            z -= STEP_SIZE**2 / 2 * z.grad
            z += STEP_SIZE * torch.randn(z.shape, generator=rng, device=device)
        z.grad = None
    optimizer.zero_grad()
    mse = ((x - generator(z.detach())) ** 2).mean()
    (mse * size / (2 * SIGMA**2)).backward()
    optimizer.step()
    z_host.copy_(z.detach().cpu())  # back to the host


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocations, kernels, autotuning)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_memory(run_fresh: Callable[[], object], device: torch.device) -> str:
    """Peak memory a fresh trainer needs for its first iteration (MB): reserved rather than
    allocated, because a CUDA graph's temporaries live in a private pool that
    max_memory_allocated does not count."""
    if device.type != "cuda":
        return "-"
    gc.collect()  # a trainer and its graphs form a cycle: free the ones already finished
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_fresh()
    torch.cuda.synchronize(device)
    return f"{(torch.cuda.max_memory_reserved(device) - before) / 2**20:.0f}"


def run_case(
    case: Case, batch: int, device: torch.device, repeats: int, fast: dict[str, bool]
) -> dict[str, float | str]:
    torch.manual_seed(0)
    generator = case.build()
    data = torch.rand((batch, *generator(generator.sample_latent(1)).shape[1:])) * 2 - 1
    config = dataclasses.replace(DEFAULTS, batch_size=batch, seed=0)
    execution = ExecutionConfig(**fast)

    def make_ours() -> ABPTrainer:
        return ABPTrainer(
            copy.deepcopy(generator), data, config, execution=execution, device=device
        )

    def make_reference() -> Callable[[], None]:
        ref_generator = copy.deepcopy(generator).to(device)
        optimizer = torch.optim.Adam(
            ref_generator.parameters(), lr=config.learning_rate, betas=config.adam_betas
        )
        z_host = torch.randn((batch, *generator.latent_shape))
        rng = torch.Generator(device).manual_seed(0)
        return lambda: reference_iteration(ref_generator, optimizer, data, z_host, device, rng)

    ours_time = timed(make_ours().train_epoch, device, repeats)
    ref_time = timed(make_reference(), device, repeats)
    row: dict[str, float | str] = {
        "case": case.name,
        "batch": batch,
        "ours_ex_s": batch / ours_time,
        "ref_ex_s": batch / ref_time,
        "ours_chain_steps_s": batch * LANGEVIN_STEPS / ours_time,
        "ref_chain_steps_s": batch * LANGEVIN_STEPS / ref_time,
        "ours_mem_mb": peak_memory(lambda: make_ours().train_epoch(), device),
        # A fresh reference inside the measurement: its setup is part of its memory.
        "ref_mem_mb": peak_memory(lambda: make_reference()(), device),  # noqa: PLW0108
        "speedup": ref_time / ours_time,
    }
    if device.type == "cuda":
        row["tflops"] = iteration_flops(generator, data, config, device) / ours_time / 1e12
    return row


class _NoModuleTracking:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks break
    `torch.autograd.grad` with respect to a leaf (the latents: "A leaf node was passed to
    _will_engine_execute_node", torch 2.11 to 2.14). The total needs no per-module split:
    every FLOP is counted once, under "Global"."""

    parents: ClassVar[frozenset[str]] = frozenset({"Global"})

    def __enter__(self) -> _NoModuleTracking:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def iteration_flops(
    generator: Generator, data: torch.Tensor, config: ABPConfig, device: torch.device
) -> int:
    """FLOPs of one iteration, counted on an eager fp32 trainer of the same shapes (the
    default ExecutionConfig: a CUDA graph replay dispatches no operators for a counter to
    see; bf16 does the same FLOPs)."""
    trainer = ABPTrainer(copy.deepcopy(generator), data, config, device=device)
    counter = FlopCounterMode(display=False)
    # A deliberate duck-typed stand-in (see _NoModuleTracking), not a ModuleTracker subclass.
    counter.mod_tracker = _NoModuleTracking()  # type: ignore[assignment]
    with counter:
        trainer.train_epoch()
    return counter.get_total_flops()


def check_same_result(device: torch.device) -> float:
    """Ours and the reference compute the same iteration: the largest weight difference
    after one iteration (SGD, fp32) from the same weights, latents, order and noise."""
    torch.manual_seed(0)
    generator = CASES[2].build()
    data = torch.rand((8, 1, 4096)) * 2 - 1
    config = dataclasses.replace(
        DEFAULTS, optimizer="sgd", learning_rate=1e-4, batch_size=8, seed=0
    )
    ours = ABPTrainer(copy.deepcopy(generator), data, config, device=device)
    before = [p.detach().clone() for p in ours.generator.parameters()]
    # Replay the trainer's random draws: initial latents, the epoch's order, then the noise.
    rng = torch.Generator(device).manual_seed(0)
    z0 = torch.randn((8, *generator.latent_shape), generator=rng, device=device)
    order = torch.randperm(8, generator=rng, device=device)
    ref_generator = copy.deepcopy(generator).to(device)
    optimizer = torch.optim.SGD(ref_generator.parameters(), lr=1e-4)
    reference_iteration(ref_generator, optimizer, data[order.cpu()], z0[order].cpu(), device, rng)
    ours.train_epoch()
    moved = max(
        float((a - b).detach().abs().max()) for a, b in zip(ours.generator.parameters(), before)
    )
    assert moved > 0, "the iteration did not change the weights: nothing was compared"
    return max(
        float((a - b).detach().abs().max())
        for a, b in zip(ours.generator.parameters(), ref_generator.parameters())
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument(
        "--repeats",
        type=int,
        help="timed runs after a warm-up "
        "(default: 5 on CUDA, 2 on the CPU, whose largest batch takes seconds)",
    )
    parser.add_argument(
        "--speedups",
        nargs="*",
        choices=SWITCHES,
        help="ours with these switches (default: channels_last on the CPU; "
        "channels_last, bf16 and cuda_graphs on CUDA; none if given empty)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    batches = args.batch_sizes or ([64, 256, 1024] if on_cuda else [64, 256])
    repeats = args.repeats or (5 if on_cuda else 2)
    chosen = (
        args.speedups
        if args.speedups is not None
        else (["channels_last", "bf16", "cuda_graphs"] if on_cuda else ["channels_last"])
    )
    fast = {k: k in chosen for k in SWITCHES}
    name = torch.cuda.get_device_name(device) if on_cuda else "CPU"
    print(
        f"device: {name} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"l={LANGEVIN_STEPS}, σ={SIGMA}, s={STEP_SIZE}, ours with {fast}"
    )
    print(f"same iteration check: max |W_ours − W_reference| = {check_same_result(device):.2e}")
    header = (
        f"{'case':<20} {'batch':>5} {'ours ex/s':>10} {'ref ex/s':>10} "
        f"{'ours steps/s':>12} {'ref steps/s':>12} {'ours MB':>8} {'ref MB':>8} {'speedup':>8}"
    )
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    if device.type == "cuda":
        header += f" {'TFLOP/s':>8} {'of bf16 peak':>12}"
    print(header)
    rows = []
    for case in CASES:
        for batch in batches:
            row = run_case(case, batch, device, repeats, fast)
            rows.append(row)
            line = (
                f"{row['case']:<20} {batch:>5} {row['ours_ex_s']:>10.1f} {row['ref_ex_s']:>10.1f} "
                f"{row['ours_chain_steps_s']:>12.0f} {row['ref_chain_steps_s']:>12.0f} "
                f"{row['ours_mem_mb']:>8} {row['ref_mem_mb']:>8} {row['speedup']:>7.2f}×"
            )
            if "tflops" in row:
                tflops = row["tflops"]
                assert isinstance(tflops, float)  # run_case stores FLOPs / seconds / 1e12
                fraction = f"{tflops / peak:.1%}" if peak else "unknown"
                line += f" {tflops:>8.1f} {fraction:>12}"
            print(line, flush=True)
    face = [r for r in rows if r["case"] == CASES[0].name]
    print(f"speedup_vs_reference={face[-1]['speedup']:.2f}")


if __name__ == "__main__":
    main()
