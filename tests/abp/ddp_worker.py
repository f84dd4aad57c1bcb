"""One rank of a small ABP training, under torchrun or alone (tests/abp/test_distributed.py).

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py '{json}'

Trains an 8×8 image generator on seeded synthetic data, resuming `<out>/last.pt` when it is
there and saving it every epoch; after every epoch rank 0 records whether the epoch's
Langevin steps visited every example exactly once over all ranks and whether every rank's
latent bank is the same. Rank 0 writes `<out>/final.pt` and `<out>/checks.json` at the end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from abp.distributed import gather_objects, join_from_environment, leave
from abp.models import ImageGenerator
from abp.train import ABPConfig, ABPTrainer, Checkpointer, ExecutionConfig


def synthetic_images(n: int) -> torch.Tensor:
    return torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(7)) * 2 - 1


def main(args: dict) -> None:
    device = torch.device("cpu")
    world = join_from_environment(device)
    out = Path(args["out"])
    torch.manual_seed(1)
    generator = ImageGenerator(latent_dim=4, image_size=8, channels=1, widths=(8,))
    config = ABPConfig(
        sigma=0.3,
        step_size=0.1,
        langevin_steps=3,
        batch_size=args["batch_size"],
        seed=3,
        noise=args["noise"],
    )
    execution = ExecutionConfig(inference_batch_size=args.get("inference_batch_size"))
    trainer = ABPTrainer(
        generator,
        synthetic_images(args["n"]),
        config,
        execution=execution,
        device=device,
        data_on_device=args.get("data_on_device"),
    )
    checkpoint = out / "last.pt"
    if checkpoint.exists():
        trainer.load_checkpoint(checkpoint)

    visited: list[torch.Tensor] = []
    langevin = trainer.langevin

    def counted(ids: torch.Tensor) -> torch.Tensor:
        visited.append(ids.cpu())
        return langevin(ids)

    trainer.langevin = counted
    checks = []

    def check(trainer: ABPTrainer, stats: dict) -> None:
        ids = torch.cat(gather_objects(torch.cat(visited), world))
        visited.clear()
        banks = gather_objects(trainer.latent_bank.latents.clone(), world)
        checks.append(
            {
                "epoch": trainer.epoch,
                "each_example_once": sorted(ids.tolist()) == list(range(args["n"])),
                "replicas_equal": all(torch.equal(bank, banks[0]) for bank in banks),
            }
        )
        time.sleep(args.get("epoch_pause", 0))  # time for a test to kill a rank mid-way

    trainer.fit(args["epochs"], callbacks=[check, Checkpointer(checkpoint)])
    if world.is_main:
        final = {"generator": trainer.generator.state_dict(), "bank": trainer.latent_bank.latents}
        torch.save(final, out / "final.pt")
        (out / "checks.json").write_text(json.dumps(checks))
    leave()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
