"""Correctness of the speed switches on the device they are meant for (a GPU machine may have
torch alone, no pytest): each switch trains like the plain path within a stated tolerance.

    python -m bench.cuda_checks                 # on CUDA when there is one
    python -m bench.cuda_checks --device cpu    # the checks that mean something on a CPU

- cuda_graphs: the Langevin loop replayed from CUDA graphs gives the eager loop's weights
  and latents (float tolerance: GPU kernels need not be bitwise reproducible), and leaves
  the trainer's random generator at exactly the same state (the replays drew the same
  number of noise values from it). CUDA only.
- channels_last, compile: the same training within float tolerance (compile: CUDA only by
  default, it takes minutes on a CPU).
- bf16: every example's energy within 2 % of the float32 energy.

Prints one line per check and exits with 1 if any fails.
"""

from __future__ import annotations

import argparse
import sys
import traceback

import torch

from abp.energy import energy
from abp.fast import fast_forward
from abp.models import ImageGenerator
from abp.observe import Mask
from abp.train import ABPConfig, ABPTrainer

# Tolerances for float differences (TF32 convolutions, another memory layout, fused kernels)
# after 3 epochs; a real fault (other noise, a stale weight or mask) is far above them.
WEIGHT_TOLERANCE = 0.01   # ‖ΔW‖ as a fraction of ‖W − W₀‖, how far training moved them
LATENT_TOLERANCE = 1e-3   # mean |Δz| (latents are of order 1)
BF16_RELATIVE = 0.02


def train(device: torch.device, epochs: int = 3,
          **switches: bool) -> tuple[ABPTrainer, list[torch.Tensor]]:
    """A small occluded-image training whose epoch has two batch sizes (8, 8, 4). The
    Langevin step is half the usual one: at s = 0.1 this generator's chains are unstable
    enough to blow rounding differences up to 1e-2 within three epochs, which would hide
    what the checks look for. Returns the trainer and its initial weights."""
    torch.manual_seed(0)
    data = torch.rand(20, 3, 32, 32) * 2 - 1
    mask = Mask((torch.rand(20, 3, 32, 32) > 0.3).float())
    generator = ImageGenerator(latent_dim=16, image_size=32, channels=3, widths=(64, 32))
    config = ABPConfig(sigma=0.3, step_size=0.05, langevin_steps=10, batch_size=8, seed=0,
                       learning_rate=3e-3, **switches)
    trainer = ABPTrainer(generator, data, config, observation=mask, device=device)
    initial_weights = [p.detach().clone() for p in trainer.generator.parameters()]
    trainer.fit(epochs)
    return trainer, initial_weights


def norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.stack([t.double().pow(2).sum() for t in tensors]).sum().sqrt())


def check_switch(device: torch.device, switches: dict[str, bool],
                 baseline: dict[str, bool]) -> tuple[bool, str]:
    """Training with `switches` on top of `baseline` against training with `baseline`."""
    reference, initial_weights = train(device, **baseline)
    fast, _ = train(device, **baseline, **switches)
    with torch.no_grad():
        ref_weights = list(reference.generator.parameters())
        moved = norm([w - w0 for w, w0 in zip(ref_weights, initial_weights)])
        weights = norm([a - b for a, b in zip(ref_weights, fast.generator.parameters())]) / moved
        latents = float((reference.latent_bank.latents - fast.latent_bank.latents).abs().mean())
    same_rng = torch.equal(reference.rng.get_state(), fast.rng.get_state())
    passed = weights < WEIGHT_TOLERANCE and latents < LATENT_TOLERANCE and same_rng
    return passed, (f"‖ΔW‖ {weights:.1e} of the weights' movement (< {WEIGHT_TOLERANCE}), "
                    f"mean |Δz| {latents:.1e} (< {LATENT_TOLERANCE:.0e}), "
                    f"same generator state: {same_rng}")


@torch.no_grad()
def check_bf16(device: torch.device) -> tuple[bool, str]:
    torch.manual_seed(0)
    generator = ImageGenerator(latent_dim=16, image_size=32, channels=3, widths=(64, 32)).to(device)
    z = torch.randn(64, 16, device=device)
    y = torch.rand(64, 3, 32, 32, device=device) * 2 - 1
    exact = energy(generator, z, y, sigma=0.3)
    approximate = energy(fast_forward(generator, bf16=True), z, y, sigma=0.3)
    relative = float(((approximate - exact).abs() / exact).max())
    return relative < BF16_RELATIVE, f"max relative energy error {relative:.2%} (< {BF16_RELATIVE:.0%})"


def report(name: str, result: tuple[bool, str]) -> None:
    print(f"{'PASS' if result[0] else 'FAIL'} {name:<14} {result[1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="check torch.compile too (default: on CUDA only)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if on_cuda else "CPU"
    print(f"device: {name}, torch {torch.__version__}")

    # (name, switches, baseline they are compared with); the CUDA-graph checks come last,
    # so that a failed capture cannot spoil the checks after it.
    checks = [("channels_last", {"channels_last": True}, {})]
    if args.compile if args.compile is not None else on_cuda:
        checks.append(("compile", {"compile": True}, {}))
    if on_cuda:
        checks += [("cuda_graphs", {"cuda_graphs": True}, {}),
                   ("cuda_graphs+bf16+channels_last (the benchmark's)", {"cuda_graphs": True},
                    {"bf16": True, "channels_last": True})]
        if args.compile is not False:
            checks.append(("cuda_graphs+compile", {"cuda_graphs": True}, {"compile": True}))
    results = {"bf16": check_bf16(device)}
    report("bf16", results["bf16"])
    for name, switches, baseline in checks:
        try:
            results[name] = check_switch(device, switches, baseline)
        except Exception:  # report and go on: one run should tell about every switch
            results[name] = (False, "\n" + traceback.format_exc())
        report(name, results[name])
    if not on_cuda:
        print("n/a  cuda_graphs    needs a CUDA device")
    return 0 if all(passed for passed, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
