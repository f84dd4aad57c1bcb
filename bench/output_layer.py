"""A generator's last layer on the CPU: oneDNN (plain nn.ConvTranspose*d) against the GEMM
kernel abp.conv gives it, in whole ABP epochs of the default experiments' shapes.

    python -m bench.output_layer               # every case, median of 5, alternated
    python -m bench.output_layer --cases faces,speech --repeats 5

Each case is a default experiment's generator, training-set size and batch size (params.yaml;
random data of the right shape: the speed does not depend on the values). Both columns train
the same weights from the same state: "oneDNN" with the last layer turned back into a plain
nn.ConvTranspose*d, "ours" as abp.models builds it. The table gives milliseconds per epoch
(l = 10 Langevin steps and one learning step per batch; each sample a second or more of
epochs) and their ratio. Needs torch and abp.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from abp.conv import TO_SIGNAL
from abp.models import Generator, generator_for
from abp.train import ABPConfig, ABPTrainer


@dataclass(frozen=True)
class Case:
    name: str
    generator: dict
    signal_shape: tuple[int, ...]
    examples: int
    batch_size: int


# The default experiments' generators (params.yaml), with their training splits' sizes.
CASES = [
    Case("digits", dict(kind="image", latent_dim=10, widths=[128, 64]), (1, 8, 8), 1438, 64),
    Case("faces", dict(kind="image", latent_dim=20, widths=[128, 64, 32]), (1, 32, 32), 80, 20),
    Case(
        "brick",
        dict(kind="texture", latent_channels=4, latent_size=5, widths=[64, 32, 16]),
        (1, 80, 80),
        32,
        8,
    ),
    Case(
        "bikes",
        dict(
            kind="video",
            latent_channels=8,
            latent_frames=2,
            latent_size=4,
            widths=[64, 32],
            temporal_layers=2,
        ),
        (3, 8, 32, 32),
        46,
        16,
    ),
    Case(
        "speech",
        dict(kind="audio", latent_channels=16, latent_length=64, widths=[64, 32], stride=4),
        (1, 4096),
        90,
        16,
    ),
]
PLAIN = {ours: plain for plain, ours in TO_SIGNAL.items()}


def with_plain_last_layer(generator: Generator) -> Generator:
    """A copy whose last layer is the plain nn.ConvTranspose*d (oneDNN's), same weights."""
    plain = copy.deepcopy(generator)
    for module in plain.modules():
        if type(module) in PLAIN:
            module.__class__ = PLAIN[type(module)]
    return plain


def epoch_timer(case: Case, generator: nn.Module) -> Callable[[], float]:
    data = torch.randn(case.examples, *case.signal_shape).clamp(-1, 1)
    config = ABPConfig(learning_rate=1e-3, batch_size=case.batch_size)
    trainer = ABPTrainer(generator, data, config, device="cpu")  # type: ignore[arg-type]
    started = time.perf_counter()
    trainer.train_epoch()  # warm-up: oneDNN's kernels, the allocator
    # Each sample a second or more of epochs: the machine's speed wanders within seconds.
    epochs = max(1, round(1 / (time.perf_counter() - started)))

    def seconds() -> float:
        started = time.perf_counter()
        for _ in range(epochs):
            trainer.train_epoch()
        return (time.perf_counter() - started) / epochs

    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default=",".join(c.name for c in CASES))
    args = parser.parse_args(argv)
    wanted = args.cases.split(",")
    print(f"{'case':8} {'oneDNN ms':>10} {'ours ms':>8} {'ratio':>6}")
    for case in (c for c in CASES if c.name in wanted):
        ours = generator_for(case.generator, case.signal_shape, seed=0)
        timers = {
            "oneDNN": epoch_timer(case, with_plain_last_layer(ours)),
            "ours": epoch_timer(case, ours),
        }
        times: dict[str, list[float]] = {name: [] for name in timers}
        for _ in range(args.repeats):  # alternated: a drift in speed touches both alike
            for name, timer in timers.items():
                times[name].append(timer())
        plain, fast = (statistics.median(times[n]) * 1000 for n in ("oneDNN", "ours"))
        print(f"{case.name:8} {plain:10.0f} {fast:8.0f} {fast / plain:5.2f}×", flush=True)


if __name__ == "__main__":
    main()
