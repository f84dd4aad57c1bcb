"""Evaluate a trained experiment: held-out reconstruction, recovery, samples and figures.

    python -m flows.evaluate digits     # after python -m flows.train digits

For each test example the latent is inferred with the weights fixed (gradient descent on
the energy from z = 0, or from a prior draw), from what the model may see of it: the whole
signal, its observed entries, or its compressed measurements. Errors are mean absolute
errors on the [0, 1] scale:

- heldout_mae: recovered test signals against the complete truth, all entries;
- heldout_hidden_mae: the same over the occluded entries only (occlusion variants);
- train_mae: g(z) for the training latents against the complete training signals; for an
  occlusion variant train_hidden_mae is the paper's recovery error (occluded pixels only).

Writes reports/<experiment>/metrics.json and figures/, logs both into the training's MLflow
run, registers the generator and moves the `champion` alias to it when its held-out error
beats the champion's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib
import mlflow
import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from abp.evaluate import mean_absolute_error
from abp.langevin import reconstruct
from abp.media import save_png, side_by_side
from flows import tracking
from flows.config import ConfigError
from flows.experiment import (MODELS_ROOT, PREPARED_ROOT, REPORTS_ROOT, Experiment,
                              load_experiment, load_generator, write_json)
from flows.samples import write_media

matplotlib.use("Agg")  # files only, no display
from matplotlib import pyplot as plt  # noqa: E402


def recover(exp: Experiment, generator, y: torch.Tensor, observation) -> torch.Tensor:
    settings = exp.cfg.evaluation
    _, x_hat = reconstruct(generator, y, latent_shape=generator.latent_shape,
                           sigma=exp.cfg.abp.sigma,
                           step_size=settings.step_size or exp.cfg.abp.step_size,
                           n_steps=settings.n_steps, observation=observation,
                           init=settings.init, rng=torch.Generator().manual_seed(0))
    return x_hat


def compute_metrics(exp: Experiment, generator) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Error metrics, and the signals the figures show."""
    metrics: dict[str, float] = {}
    shown: dict[str, torch.Tensor] = {}
    train, _, _ = exp.split("train")
    latents = torch.load(exp.model_folder / "latent_bank.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        fitted = generator(latents)
    metrics["train_mae"] = mean_absolute_error(fitted, train["x"])
    if "mask" in train:
        metrics["train_hidden_mae"] = mean_absolute_error(fitted, train["x"], where=~train["mask"])
    test, y_test, observation = exp.split("test")
    if len(test["x"]):
        recovered = recover(exp, generator, y_test, observation)
        metrics["heldout_mae"] = mean_absolute_error(recovered, test["x"])
        if "mask" in test:
            metrics["heldout_hidden_mae"] = mean_absolute_error(recovered, test["x"],
                                                                where=~test["mask"])
        rows = [test["x"], y_test, recovered] if "mask" in test else [test["x"], recovered]
    else:
        rows = [train["x"], train["x"] * train["mask"], fitted] if "mask" in train else [train["x"], fitted]
    shown["reconstructions"] = [r[:8] for r in rows]
    return metrics, shown


def write_figures(exp: Experiment, generator, shown: dict, history: list[dict]) -> list[Path]:
    figures = exp.report_folder / "figures"
    options = {k: exp.manifest[k] for k in ("fps", "sample_rate") if k in exp.manifest}
    with torch.no_grad():
        samples = generator(generator.sample_latent(exp.cfg.evaluation.n_samples,
                                                    rng=torch.Generator().manual_seed(12345)))
    paths = write_media(samples, exp.kind, figures, "samples", **options)
    if exp.kind == "image":
        paths.append(save_png(side_by_side(*shown["reconstructions"]), figures / "reconstructions.png"))
    else:
        truth, *_, recovered = shown["reconstructions"]
        paths += write_media(truth, exp.kind, figures, "truth", **options)
        paths += write_media(recovered, exp.kind, figures, "recovered", **options)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [h["epoch"] for h in history]
    for ax, key in zip(axes, ("energy", "reconstruction_mse")):
        ax.plot(epochs, [h[key] for h in history])
        ax.set(xlabel="epoch", ylabel=key, yscale="log")
    fig.suptitle(f"{exp.name}: training")
    fig.tight_layout()
    fig.savefig(figures / "training.png", dpi=100)
    plt.close(fig)
    return paths + [figures / "training.png"]


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record(exp: Experiment, run: dict[str, Any], metrics: dict[str, float], figures: Path) -> bool:
    """Log evaluation into the training's MLflow run; register the model; maybe promote it."""
    tracking.configure()
    with mlflow.start_run(run_id=run["mlflow_run_id"]):
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(figures), artifact_path="evaluation")
    model_name = f"abp-{exp.name}".replace("_", "-")
    version = mlflow.register_model(run["model_uri"], model_name,
                                    tags={"mlflow_run_id": run["mlflow_run_id"]}).version
    score = metrics.get("heldout_mae", metrics["train_mae"])
    return tracking.promote_if_better(model_name, version, score)


@flow(name="evaluate")
def evaluate(experiment: str, params_file: str = "params.yaml",
             prepared_root: str = str(PREPARED_ROOT), models_root: str = str(MODELS_ROOT),
             reports_root: str = str(REPORTS_ROOT)) -> dict[str, float]:
    logger = get_run_logger()
    exp = load_experiment(experiment, Path(params_file), Path(prepared_root), Path(models_root),
                          Path(reports_root))
    generator = load_generator(exp.model_folder).eval()
    metrics, shown = compute_metrics(exp, generator)
    history = json.loads((exp.model_folder / "history.json").read_text())
    write_figures(exp, generator, shown, history)
    write_json(exp.report_folder / "metrics.json", metrics)
    run = json.loads((exp.model_folder / "mlflow_run.json").read_text())
    champion = False
    if tracking.is_main_process():
        champion = record(exp, run, metrics, exp.report_folder / "figures")
    logger.info("%s: %s%s", experiment, metrics, " (new champion)" if champion else "")
    rows = "".join(f"| {k} | {v:.4f} |\n" for k, v in metrics.items())
    create_markdown_artifact(
        key=f"evaluate-{experiment}".lower().replace("_", "-"),
        markdown=(f"# Evaluation of {experiment}\n\n| metric | value |\n|---|---|\n{rows}\n"
                  f"Champion: {'yes' if champion else 'no'}. MLflow run: "
                  f"{tracking.run_link(run['mlflow_run_id'], run['mlflow_experiment_id'])}\n"),
        description=f"ABP evaluation of {experiment}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="a key under experiments: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared-root", default=str(PREPARED_ROOT))
    parser.add_argument("--models-root", default=str(MODELS_ROOT))
    parser.add_argument("--reports-root", default=str(REPORTS_ROOT))
    args = parser.parse_args(argv)
    try:
        exp = load_experiment(args.experiment, Path(args.params), Path(args.prepared_root),
                              Path(args.models_root), Path(args.reports_root))
        for needed in ("generator.pt", "latent_bank.pt", "mlflow_run.json", "history.json"):
            if not (exp.model_folder / needed).is_file():
                raise FileNotFoundError(f"{exp.model_folder / needed} is missing: train first "
                                        f"(python -m flows.train {args.experiment})")
        evaluate(args.experiment, params_file=args.params, prepared_root=args.prepared_root,
                 models_root=args.models_root, reports_root=args.reports_root)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
