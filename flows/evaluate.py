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

Recovered signals keep what the data say (observed pixels; agreement with the
measurements), for ABP as for PCA; the pca_* metrics are PCA's with the same d learned from
the same training data.

Writes reports/experiments/<experiment>/metrics.json, figures/ (PNG) and media/ (mp4,
wav), logs them into the training's MLflow
run, registers the generator and moves the `champion` alias to it when its held-out error
beats the champion's.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib
import mlflow
import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from abp.datasets import DataError
from abp.files import remove_stale_partials
from abp.evaluate import PCA, mean_absolute_error, pca_from_observations, recover_with_pca
from abp.langevin import infer, reconstruct
from abp import media
from abp.media import save_png, side_by_side
from abp.observe import Identity
from flows import tracking
from flows.config import ConfigError
from flows.experiment import (MODELS_ROOT, PREPARED_ROOT, REPORTS_ROOT, Experiment,
                              experiment_arguments, load_experiment, load_generator, write_json)
from flows.process import prefect_server_for_this_process, run_command
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
    return consistent(x_hat, y, observation, exp.signal_shape)


def consistent(x_hat: torch.Tensor, y: torch.Tensor, observation, shape) -> torch.Tensor:
    """Keep what the data say: x̂ + A⁺(y − A x̂). Observed pixels take their observed values
    and compressed recoveries agree with their measurements, exactly as the PCA baseline's
    do, so both methods are scored on what they add to the data."""
    if isinstance(observation, Identity):
        return x_hat
    return x_hat + observation.pseudo_inverse(y - observation(x_hat), shape)


def compute_metrics(exp: Experiment, generator) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Error metrics (ABP's, and PCA's with the same d where the latent is a vector), and
    the signals the figures show."""
    metrics: dict[str, float] = {}
    train, y_train, obs_train = exp.split("train")
    latents = torch.load(exp.model_folder / "latent_bank.pt", map_location="cpu", weights_only=True)
    # The bank holds the last Langevin samples; gradient descent from them gives each training
    # example's most probable latent, hence its best reconstruction or recovery.
    settings = exp.cfg.evaluation
    latents = infer(generator, y_train, latents, sigma=exp.cfg.abp.sigma, noise=False,
                    step_size=settings.step_size or exp.cfg.abp.step_size,
                    n_steps=settings.n_steps, observation=obs_train)
    with torch.no_grad():
        fitted = consistent(generator(latents), y_train, obs_train, exp.signal_shape)
    metrics.update(errors("train", fitted, train))
    test, y_test, obs_test = exp.split("test")
    if len(test["x"]):
        recovered = recover(exp, generator, y_test, obs_test)
        metrics.update(errors("heldout", recovered, test))
        shown = [test["x"], y_test, recovered] if "mask" in test else [test["x"], recovered]
    else:
        shown = [train["x"], y_train, fitted] if "mask" in train else [train["x"], fitted]
    if len(generator.latent_shape) == 1:
        metrics.update(pca_baseline(exp, generator.latent_shape[0], train, y_train, obs_train,
                                    test, y_test, obs_test))
    return metrics, {"reconstructions": [r[:8] for r in shown]}


def errors(split: str, estimate: torch.Tensor, tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    found = {f"{split}_mae": mean_absolute_error(estimate, tensors["x"])}
    if "mask" in tensors:
        found[f"{split}_hidden_mae"] = mean_absolute_error(estimate, tensors["x"],
                                                           where=~tensors["mask"])
    return found


def pca_baseline(exp: Experiment, d: int, train, y_train, obs_train, test, y_test, obs_test
                 ) -> dict[str, float]:
    """PCA with d components learned from exactly what ABP learned from (complete,
    occluded or compressed training data), scored like ABP; keys start with pca_."""
    shape = exp.signal_shape
    if isinstance(obs_train, Identity):
        pca = PCA(d).fit(train["x"])
        fitted = pca.reconstruct(train["x"])
        recovered = pca.reconstruct(test["x"]) if len(test["x"]) else None
    else:
        pca, fitted = pca_from_observations(
            y_train, forward=obs_train, n_components=d,
            back_project=lambda r: obs_train.pseudo_inverse(r, shape))
        recovered = recover_with_pca(pca, y_test, forward=obs_test,
                                     back_project=lambda r: obs_test.pseudo_inverse(r, shape)) \
            if len(test["x"]) else None
    found = {f"pca_{k}": v for k, v in errors("train", fitted, train).items()}
    if recovered is not None:
        found.update({f"pca_{k}": v for k, v in errors("heldout", recovered, test).items()})
    return found


def write_figures(exp: Experiment, generator, shown: dict, history: list[dict]) -> list[Path]:
    figures = exp.report_folder / "figures"  # PNG only: DVC shows them as image plots
    options = {k: exp.manifest[k] for k in ("fps", "sample_rate") if k in exp.manifest}
    options["sound_and_video_folder"] = exp.report_folder / "media"
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
    if tuple(generator.latent_shape) == (2,):
        paths.append(save_png(latent_grid(generator), figures / "latent_grid.png"))
    if exp.cfg.generator.get("kind") == "texture":  # a larger latent map, a larger texture
        c, h, w = generator.latent_shape
        with torch.no_grad():
            large = generator(generator.sample_latent(1, latent_shape=(c, 2 * h, 3 * w),
                                                      rng=torch.Generator().manual_seed(1)))
        paths.append(save_png(media.image_grid(large), figures / "large_texture.png"))
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


def latent_grid(generator, steps: int = 9, extent: float = 2.0):
    """For d = 2: g(z) over a steps×steps grid of z in [−extent, extent]² (rows: z₂)."""
    axis = torch.linspace(-extent, extent, steps)
    grid = torch.stack(torch.meshgrid(axis.flip(0), axis, indexing="ij"), -1)  # (z2, z1)
    z = grid.flip(-1).reshape(-1, 2)
    with torch.no_grad():
        return media.image_grid(generator(z), ncol=steps)


class UnusableModel(RuntimeError):
    """The trained model cannot be scored: nothing is written, registered or promoted."""


def check_finite_weights(generator: torch.nn.Module, path: Path) -> None:
    bad = [name for name, p in generator.state_dict().items()
           if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise UnusableModel(f"{path} has non-finite weights ({', '.join(bad[:3])}"
                            f"{', …' if len(bad) > 3 else ''}): its training diverged. Retrain "
                            "with the settings the training's error names; this model is "
                            "neither scored nor registered.")


def check_finite_metrics(metrics: dict[str, float], experiment: str) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise UnusableModel(f"evaluation of {experiment} gave non-finite errors "
                            f"({', '.join(f'{k}={v}' for k, v in bad.items())}): metrics.json is "
                            "not written and the model is neither registered nor promoted.")


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record(exp: Experiment, generator, run: dict[str, Any], metrics: dict[str, float],
           figures: Path) -> bool:
    """Log evaluation into the training's MLflow run; register the model; maybe promote it."""
    tracking.configure()
    with mlflow.start_run(run_id=run["mlflow_run_id"]):
        if not run.get("model_uri"):  # the tracking server was away when training ended
            run["model_uri"] = tracking.log_model(generator, tuple(generator.latent_shape))
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(figures), artifact_path="evaluation")
        if (figures.parent / "media").is_dir():
            mlflow.log_artifacts(str(figures.parent / "media"), artifact_path="evaluation/media")
    model_name = f"abp-{exp.name}".replace("_", "-")
    version = mlflow.register_model(run["model_uri"], model_name,
                                    tags={"mlflow_run_id": run["mlflow_run_id"]}).version
    score = metrics.get("heldout_mae", metrics["train_mae"])
    return tracking.promote_if_better(model_name, version, score)


@flow(name="evaluate")
def evaluate(experiment: str, params_file: str = "params.yaml",
             prepared_root: str = str(PREPARED_ROOT), models_root: str = str(MODELS_ROOT),
             reports_root: str = str(REPORTS_ROOT)) -> dict[str, float]:
    try:
        return _evaluate(experiment, params_file, prepared_root, models_root, reports_root)
    except (UnusableModel, DataError) as error:  # a failed run with the reason, no traceback
        return Failed(message=str(error), data=error)


def _evaluate(experiment: str, params_file: str, prepared_root: str, models_root: str,
              reports_root: str) -> dict[str, float]:
    logger = get_run_logger()
    exp = load_experiment(experiment, Path(params_file), Path(prepared_root), Path(models_root),
                          Path(reports_root))
    remove_stale_partials(exp.report_folder)  # what a killed write left behind
    run = json.loads((exp.model_folder / "mlflow_run.json").read_text())
    if run.get("retuned"):  # a retry after divergence lowered them: infer as it trained
        exp.cfg = exp.cfg.model_copy(update={"abp": exp.cfg.abp.model_copy(update=run["retuned"])})
        logger.info("inference with the settings a divergence retry lowered: %s", run["retuned"])
    generator = load_generator(exp.model_folder).eval()
    check_finite_weights(generator, exp.model_folder / "generator.pt")
    metrics, shown = compute_metrics(exp, generator)
    check_finite_metrics(metrics, experiment)
    history = json.loads((exp.model_folder / "history.json").read_text())
    write_figures(exp, generator, shown, history)
    write_json(exp.report_folder / "metrics.json", metrics)
    champion = False
    if tracking.is_main_process():
        champion = record(exp, generator, run, metrics, exp.report_folder / "figures")
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
    args = experiment_arguments(__doc__.splitlines()[0], reports=True).parse_args(argv)
    try:
        exp = load_experiment(args.experiment, Path(args.params), Path(args.prepared_root),
                              Path(args.models_root), Path(args.reports_root))
        for needed in ("generator.pt", "latent_bank.pt", "mlflow_run.json", "history.json"):
            if not (exp.model_folder / needed).is_file():
                raise FileNotFoundError(f"{exp.model_folder / needed} is missing: train first "
                                        f"(python -m flows.train {args.experiment})")
        trained = json.loads((exp.model_folder / "mlflow_run.json").read_text())
        if trained.get("fingerprint", exp.fingerprint()) != exp.fingerprint():
            raise ConfigError(f"{exp.model_folder} holds a model trained with other settings or "
                              f"data than {args.params}'s experiments.{args.experiment}: train "
                              f"it first (python -m flows.train {args.experiment})")
        tracking.check_reachable(tracking.configure())
        with prefect_server_for_this_process():
            evaluate(args.experiment, params_file=args.params, prepared_root=args.prepared_root,
                     models_root=args.models_root, reports_root=args.reports_root)
    except (ConfigError, FileNotFoundError, DataError, tracking.TrackingUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except UnusableModel as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_command(main)
