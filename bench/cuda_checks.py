"""Correctness of the speed switches on the device they are meant for (a GPU machine may have
torch alone, no pytest): each switch trains like the plain path within a stated tolerance.

    python -m bench.cuda_checks                 # on CUDA when there is one
    python -m bench.cuda_checks --device cpu    # the checks that mean something on a CPU

- cuda_graphs: the Langevin loop replayed from CUDA graphs gives the eager loop's weights
  and latents within float tolerance, and leaves the trainer's random generator at exactly
  the same state (the replays drew the same number of noise values from it). CUDA only.
- channels_last, compile: the same training within float tolerance (compile: CUDA only by
  default, it takes minutes on a CPU).
- bf16: every example's energy within 2 % of the float32 energy.
- data off the device (`data_on_device=False`): batches gathered on the host, moved per
  batch (pinned, staged into fixed buffers for CUDA graphs): the same training.

"Float tolerance" is measured, not guessed: Langevin chains amplify rounding differences
(three epochs turn a one-ulp change of the initial weights into about 1e-2 of the weights'
movement), so each check first measures this rounding floor on its device, and a switch
passes within the larger of the fixed tolerances and FLOOR_FACTOR floors. A real fault moves
the result far more: another noise draw by 140 % of the weights' movement, a σ 3 % off by
14 % (tests/bench). The checks run with TF32 off and deterministic cuDNN, so the eager path
repeats itself exactly (checked first).

Prints one line per check and exits with 1 if any fails.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any

import torch

from abp.energy import energy
from abp.fast import fast_forward
from abp.models import ImageGenerator
from abp.observe import Mask
from abp.train import ABPConfig, ABPTrainer, ExecutionConfig

# Tolerances for float differences (TF32 convolutions, another memory layout, fused kernels)
# after 3 epochs; a real fault (other noise, a stale weight or mask) is far above them.
WEIGHT_TOLERANCE = 0.01  # ‖ΔW‖ as a fraction of ‖W − W₀‖, how far training moved them
LATENT_TOLERANCE = 1e-3  # mean |Δz| (latents are of order 1)
BF16_RELATIVE = 0.02
FLOOR_FACTOR = 2  # how many rounding floors a switch may differ by
PERTURBATION = 2.0**-23  # one float32 ulp: the relative change that measures the floor


def train(
    device: torch.device, epochs: int = 3, perturb: bool = False, **switches: Any
) -> tuple[ABPTrainer, list[torch.Tensor]]:
    """A small occluded-image training whose epoch has two batch sizes (8, 8, 4). The
    Langevin step is half the usual one: at s = 0.1 this generator's chains are unstable
    enough to blow rounding differences up to 1e-2 within three epochs, which would hide
    what the checks look for. `perturb` changes every initial weight by one ulp (the
    rounding floor's run). Returns the trainer and its initial weights."""
    torch.manual_seed(0)
    data = torch.rand(20, 3, 32, 32) * 2 - 1
    mask = Mask((torch.rand(20, 3, 32, 32) > 0.3).float())
    generator = ImageGenerator(latent_dim=16, image_size=32, channels=3, widths=(64, 32))
    if perturb:
        signs = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for weight in generator.parameters():
                flips = torch.randint(0, 2, weight.shape, generator=signs) * 2 - 1
                weight.mul_(1 + PERTURBATION * flips)
    settings: dict[str, Any] = {
        "sigma": 0.3,
        "step_size": 0.05,
        "langevin_steps": 10,
        "batch_size": 8,
        "seed": 0,
        "learning_rate": 3e-3,
    }
    # A switch is an ExecutionConfig field; anything else changes the algorithm's settings
    # (what a check must catch: tests/bench/test_cuda_checks.py).
    # `data_on_device` is the trainer's own: False moves each batch from the host.
    on_device = switches.pop("data_on_device", None)
    execution = {k: v for k, v in switches.items() if k in ExecutionConfig.__dataclass_fields__}
    settings.update({k: v for k, v in switches.items() if k not in execution})
    trainer = ABPTrainer(
        generator,
        data,
        ABPConfig(**settings),
        execution=ExecutionConfig(**execution),
        observation=mask,
        device=device,
        data_on_device=on_device,
    )
    initial_weights = [p.detach().clone() for p in trainer.generator.parameters()]
    trainer.fit(epochs)
    return trainer, initial_weights


def norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.stack([t.double().pow(2).sum() for t in tensors]).sum().sqrt())


def difference(
    reference: ABPTrainer, initial_weights: list[torch.Tensor], other: ABPTrainer
) -> tuple[float, float]:
    """How far `other` ended from `reference`: the weights' difference as a fraction of how
    far training moved them, and the mean absolute latent difference."""
    with torch.no_grad():
        ref_weights = list(reference.generator.parameters())
        moved = norm([w - w0 for w, w0 in zip(ref_weights, initial_weights)])
        weights = norm([a - b for a, b in zip(ref_weights, other.generator.parameters())]) / moved
        latents = float((reference.latent_bank.latents - other.latent_bank.latents).abs().mean())
    return weights, latents


def rounding_floor(device: torch.device, baseline: dict[str, bool]) -> tuple[float, float]:
    """The difference that changing the initial weights by one ulp makes: what
    rounding alone does to this training on this device."""
    reference, initial_weights = train(device, **baseline)
    perturbed, _ = train(device, perturb=True, **baseline)
    return difference(reference, initial_weights, perturbed)


def check_switch(
    device: torch.device, switches: dict[str, bool], baseline: dict[str, bool]
) -> tuple[bool, str]:
    """Training with `switches` on top of `baseline` against training with `baseline`,
    within the fixed tolerances or FLOOR_FACTOR rounding floors, whichever is larger."""
    reference, initial_weights = train(device, **baseline)
    fast, _ = train(device, **baseline, **switches)
    weights, latents = difference(reference, initial_weights, fast)
    floor_weights, floor_latents = rounding_floor(device, baseline)
    weight_tolerance = max(WEIGHT_TOLERANCE, FLOOR_FACTOR * floor_weights)
    latent_tolerance = max(LATENT_TOLERANCE, FLOOR_FACTOR * floor_latents)
    same_rng = torch.equal(reference.rng.get_state(), fast.rng.get_state())
    passed = weights < weight_tolerance and latents < latent_tolerance and same_rng
    return passed, (
        f"‖ΔW‖ {weights:.1e} of the weights' movement (< {weight_tolerance:.1e}; "
        f"rounding floor {floor_weights:.1e}), mean |Δz| {latents:.1e} "
        f"(< {latent_tolerance:.1e}; floor {floor_latents:.1e}), "
        f"same generator state: {same_rng}"
    )


def check_eager_repeats(device: torch.device) -> tuple[bool, str]:
    """The plain path run twice gives the same result bit for bit (TF32 off, deterministic
    cuDNN); if not, every other check compares against a moving target."""
    first, initial_weights = train(device)
    second, _ = train(device)
    weights, latents = difference(first, initial_weights, second)
    return weights == 0 and latents == 0, f"‖ΔW‖ {weights:.1e}, mean |Δz| {latents:.1e} (= 0)"


def deterministic_kernels() -> None:
    """TF32 off and deterministic cuDNN algorithms: without them two eager runs differ by
    as much as the switches do, and the checks could not tell the switches' own effect."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@torch.no_grad()
def check_bf16(device: torch.device) -> tuple[bool, str]:
    torch.manual_seed(0)
    generator = ImageGenerator(latent_dim=16, image_size=32, channels=3, widths=(64, 32)).to(device)
    z = torch.randn(64, 16, device=device)
    y = torch.rand(64, 3, 32, 32, device=device) * 2 - 1
    exact = energy(generator, z, y, sigma=0.3)
    approximate = energy(fast_forward(generator, bf16=True), z, y, sigma=0.3)
    relative = float(((approximate - exact).abs() / exact).max())
    return (
        relative < BF16_RELATIVE,
        f"max relative energy error {relative:.2%} (< {BF16_RELATIVE:.0%})",
    )


def report(name: str, result: tuple[bool, str]) -> None:
    print(f"{'PASS' if result[0] else 'FAIL'} {name:<14} {result[1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="check torch.compile too (default: on CUDA only)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if on_cuda else "CPU"
    print(f"device: {name}, torch {torch.__version__}")
    deterministic_kernels()

    # (name, switches, baseline they are compared with); the CUDA-graph checks come last,
    # so that a failed capture cannot spoil the checks after it.
    checks: list[tuple[str, dict[str, bool], dict[str, bool]]] = [
        ("channels_last", {"channels_last": True}, {}),
        ("data off the device", {"data_on_device": False}, {}),
    ]
    if args.compile if args.compile is not None else on_cuda:
        checks.append(("compile", {"compile": True}, {}))
    if on_cuda:
        checks += [
            ("cuda_graphs", {"cuda_graphs": True}, {}),
            # Batches staged into fixed buffers from pinned host memory, replayed.
            ("cuda_graphs+data off the device", {"data_on_device": False}, {"cuda_graphs": True}),
            (
                "cuda_graphs+bf16+channels_last (the benchmark's)",
                {"cuda_graphs": True},
                {"bf16": True, "channels_last": True},
            ),
        ]
        if args.compile is not False:
            checks.append(("cuda_graphs+compile", {"cuda_graphs": True}, {"compile": True}))
    results = {"eager repeats": check_eager_repeats(device), "bf16": check_bf16(device)}
    report("eager repeats", results["eager repeats"])
    report("bf16", results["bf16"])
    for name, switches, baseline in checks:
        try:
            results[name] = check_switch(device, switches, baseline)
        except Exception:  # noqa: BLE001 - report and go on: one run should tell about every switch
            results[name] = (False, "\n" + traceback.format_exc())
        report(name, results[name])
    if not on_cuda:
        print("n/a  cuda_graphs    needs a CUDA device")
    return 0 if all(passed for passed, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
