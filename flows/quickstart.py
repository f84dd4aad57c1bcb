"""Quickstart: learn a generator with ABP on real digits and compare it with PCA.

    python -m flows.quickstart [--epochs 40] [--latent-dim 10] [--metrics FILE.json]

Trains on 1438 of scikit-learn's 1797 bundled 8×8 digit images (no download), then
reconstructs the 359 held-out digits with the weights fixed (gradient descent on the
latents from z = 0) and prints the mean absolute error next to PCA with the same number of
components. `dvc repro` runs it as the `quickstart` stage with the settings in params.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from abp.evaluate import PCA, mean_absolute_error
from abp.langevin import reconstruct
from abp.models import ImageGenerator
from abp.train import ABPConfig, ABPTrainer


def load_digit_images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.tensor(load_digits().images, dtype=torch.float32) / 8 - 1  # 0..16 → [-1, 1]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    images = images[order].unsqueeze(1)
    n_test = len(images) // 5
    return images[n_test:], images[:n_test]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--metrics", type=Path, help="also write the errors to this JSON file")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    train, test = load_digit_images()
    generator = ImageGenerator(latent_dim=args.latent_dim, image_size=8, channels=1,
                               widths=(128, 64))
    config = ABPConfig(sigma=0.3, step_size=0.1, langevin_steps=10, learning_rate=1e-3,
                       batch_size=64)
    trainer = ABPTrainer(generator, train, config)
    print(f"training on {len(train)} digits ({trainer.device}), testing on {len(test)}")
    started = time.perf_counter()
    trainer.fit(args.epochs, callbacks=[_print_progress(args.epochs)])

    test = test.to(trainer.device)
    _, recovered = reconstruct(trainer.generator, test, latent_shape=generator.latent_shape,
                               sigma=config.sigma, step_size=config.step_size, n_steps=300)
    pca = PCA(args.latent_dim).fit(train).reconstruct(test.cpu())
    result = {"abp": mean_absolute_error(recovered, test),
              "pca": mean_absolute_error(pca, test.cpu())}
    print(f"held-out reconstruction error (mean |x̂ − x| on [0, 1], d = {args.latent_dim}): "
          f"ABP {result['abp']:.4f}   PCA {result['pca']:.4f}   "
          f"({time.perf_counter() - started:.0f} s)")
    if args.metrics:
        _write_json_atomically(args.metrics, {"heldout_mae": result, "latent_dim": args.latent_dim,
                                              "epochs": args.epochs})
    return result


def _write_json_atomically(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def _print_progress(epochs: int):
    def callback(trainer: ABPTrainer, stats: dict[str, float]) -> None:
        if stats["epoch"] % 5 == 0 or stats["epoch"] == epochs:
            print(f"epoch {stats['epoch']:3d}/{epochs}  energy {stats['energy']:9.2f}  "
                  f"reconstruction mse {stats['reconstruction_mse']:.4f}")
    return callback


if __name__ == "__main__":
    main()
