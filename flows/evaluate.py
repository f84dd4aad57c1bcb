"""Evaluate a trained experiment: held-out reconstruction, recovery, samples and figures,
against its baselines (a VAE learned here from the same data, PCA, the trivial one).

    python -m flows.evaluate digits     # after python -m flows.train digits

The scoring is the library's evaluation protocol, abp.evaluate.score (README, "Scoring a
model exactly as the pipeline does"): every latent the most probable one given what the
model may see, every recovered signal keeping what the data say, ABP beside a VAE with
ABP's generator as its decoder (abp.vae), PCA with d = the latent size and a trivial
baseline (the training mean; silence for sound), all learned from exactly the same training
data and scored alike (mean absolute errors on the [0, 1] scale: train_mae, heldout_mae,
*_hidden_mae; vae_*, vae_refined_*, pca_* and trivial_* for the baselines).
ABP's descent and the VAE run on the training device (CUDA when there is one),
evaluation.batch_size examples at a time; the splits, the errors, the linear baselines and
the figures stay on the CPU.

This flow adds what a person looks at and what the team tracks. It writes
metrics/experiments/<experiment>.json (flat numbers, for `dvc metrics diff`), and under
reports/experiments/<experiment>/ figures/ (PNG) and media/ (mp4 and wav of at least 3 s,
and index.json listing what was written and which examples the comparisons show: for sound
and video the ones carrying the most signal); logs them into the training's MLflow run
(which keeps its end time and status), registers the generator and moves the `champion`
alias to it when its held-out error beats the champion's.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib
import mlflow
import torch
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.exceptions import MissingContextError
from prefect.states import Failed

from abp import media
from abp.datasets import DataError
from abp.evaluate import (
    Split,
    device_of,
    large_texture_latents,
    sample_latents,
    score,
    texture_scores,
    what_is_seen,
)
from abp.files import remove_stale_partials, write_json
from abp.media import latent_grid, save_png
from abp.models import load_generator
from abp.train import default_device
from abp.vae import VAE, train_vae
from flows import registry, tracking
from flows.config import ConfigError
from flows.experiment import Experiment, load_experiment
from flows.paths import METRICS_ROOT, MODELS_ROOT, PREPARED_ROOT, REPORTS_ROOT, experiment_arguments
from flows.process import prefect_server_for_this_process, run_command
from flows.samples import shown_examples, write_comparison, write_media

matplotlib.use("Agg")  # files only, no display
from matplotlib import pyplot as plt


def run_logger():
    """The flow run's logger; a plain one when called outside a flow (a notebook, a probe)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@contextmanager
def moved_to(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """The module on `device` for the duration, then back where it was: the figures, MLflow
    and the registry take the generator as it was loaded, on the CPU."""
    home = device_of(module)
    module.to(device)
    try:
        yield
    finally:
        module.to(home)


def learn_vae(exp: Experiment, train: Split, device: torch.device) -> VAE | None:
    """The VAE baseline (abp.vae), learned from exactly the training data ABP learned from,
    its decoder the experiment's generator initialised as ABP's was; None when the
    experiment turns it off (vae.enabled: false), or when its training diverged: a failed
    baseline is a warning and no VAE rows, never a lost evaluation of ABP."""
    settings = exp.cfg.vae
    if not settings.enabled:
        return None
    started = time.perf_counter()
    epochs = settings.epochs or exp.cfg.training.epochs
    try:
        vae, history = train_vae(
            exp.build_generator(),
            train.y,
            train.observation,
            train.signal_shape,
            abp=exp.cfg.abp,
            config=settings,
            epochs=epochs,
            device=device,
        )
    except FloatingPointError as error:
        run_logger().warning(
            "experiments.%s.vae: %s; this evaluation has no VAE rows", exp.name, error
        )
        return None
    run_logger().info(
        "VAE baseline: %d epochs on %s, negative ELBO %.4g → %.4g per example: %.1f s",
        epochs,
        device,
        history[0],
        history[-1],
        time.perf_counter() - started,
    )
    return vae


def without_unfinished_vae(metrics: dict[str, float], experiment: str) -> dict[str, float]:
    """The metrics without the VAE's if any of its numbers is not finite (a decoder that
    makes NaN, say): the baseline failed, which is a warning, not a reason to lose ABP's
    evaluation; a non-finite number is never written as a result."""
    vae_keys = [k for k in metrics if k.startswith("vae_")]
    bad = [k for k in vae_keys if not math.isfinite(metrics[k])]
    if not bad:
        return metrics
    run_logger().warning(
        "experiments.%s.vae: non-finite %s; this evaluation has no VAE rows",
        experiment,
        ", ".join(bad),
    )
    return {k: v for k, v in metrics.items() if k not in vae_keys}


def compute_metrics(
    exp: Experiment, generator, device: torch.device | None = None
) -> tuple[dict[str, float], dict[str, torch.Tensor], VAE | None]:
    """The evaluation protocol (abp.evaluate.score) on the experiment's prepared splits: ABP's
    errors beside those of the VAE (learned here, learn_vae), of PCA and of the trivial
    baseline, with the sizes that explain them; the signals the figures compare ({row label:
    signals}, the whole split shown: write_figures picks the examples); and the VAE. ABP's
    descent and the VAE run on `device` (default: the training device, CUDA when there is
    one) one evaluation.batch_size batch at a time; the splits, the errors and the linear
    baselines stay on the CPU."""
    logger = run_logger()
    device = device if device is not None else default_device()
    batch_size = exp.cfg.evaluation.batch_size
    train = exp.split("train")
    vae = learn_vae(exp, train, device)
    logger.info("descent on %s, %d examples at a time", device, batch_size)
    started = time.perf_counter()
    bank = torch.load(exp.model_folder / "latent_bank.pt", map_location="cpu", weights_only=True)
    with moved_to(generator, device):
        scores = score(
            generator,
            train,
            exp.split("test"),
            latent_bank=bank,
            config=exp.cfg.abp,
            evaluation=exp.cfg.evaluation,
            device=device,
            vae=vae,
        )
    n_steps = exp.cfg.evaluation.n_steps
    for split, steps in scores.descent_steps.items():
        # Latents that used every step may not have converged: raise evaluation.n_steps if many.
        logger.info(
            "%s: %d latents, %.0f descent steps on average; %d used all %d",
            split,
            len(steps),
            steps.float().mean(),
            int((steps == n_steps).sum()),
            n_steps,
        )
    metrics = without_unfinished_vae(scores.metrics, exp.name)
    if "vae_train_mae" not in metrics:  # a VAE whose numbers were dropped shows nothing
        vae = None
    if getattr(generator, "kind", None) == "texture":  # does it look like its source?
        n_samples = exp.cfg.evaluation.n_samples
        metrics.update(texture_scores(generator, train.x, n_samples))
        if vae is not None:
            vae_texture = texture_scores(vae.decoder, train.x, n_samples, prefix="vae_")
            metrics.update(without_unfinished_vae(vae_texture, exp.name))
    logger.info(
        "ABP and the baselines (PCA with d = %d of %d): %.1f s",
        metrics["pca_components"],
        metrics["latent_size"],
        time.perf_counter() - started,
    )
    shown = {"truth": scores.shown_split.x}
    seen = what_is_seen(scores.shown_split)
    if seen is not None:
        shown[seen[0]] = seen[1]
    shown["ABP"] = scores.signals["ABP"]
    if vae is not None:
        shown.update(
            {n: scores.signals[n] for n in ("VAE", "VAE + descent") if n in scores.signals}
        )
    shown[f"PCA d={metrics['pca_components']}"] = scores.signals["PCA"]
    return metrics, shown, vae


def write_figures(
    exp: Experiment,
    generator,
    shown: dict[str, torch.Tensor],
    history: list[dict],
    vae: VAE | None = None,
) -> list[Path]:
    """Samples (ABP's, and the VAE's from the same prior draws), the labelled comparison of
    a few examples (shown_examples), and the training curves (PNG under figures/: DVC shows
    them as image plots); mp4 and wav under media/ with index.json listing it all. Files an
    earlier evaluation left that this one did not write are removed."""
    figures, sounds_and_videos = exp.report_folder / "figures", exp.report_folder / "media"
    examples = shown_examples(exp.kind, shown["truth"])
    shown = {label: signals[examples] for label, signals in shown.items()}
    options: dict[str, Any] = {
        k: exp.manifest[k] for k in ("fps", "sample_rate") if k in exp.manifest
    }
    options["sound_and_video_folder"] = sounds_and_videos
    with torch.no_grad():
        samples = generator(sample_latents(generator, exp.cfg.evaluation.n_samples))
    paths = write_media(samples, exp.kind, figures, "samples", **options)
    if vae is not None:
        with torch.no_grad():
            vae_samples = vae.decoder.cpu()(
                sample_latents(vae.decoder, exp.cfg.evaluation.n_samples)
            )
        paths += write_media(vae_samples, exp.kind, figures, "vae_samples", **options)
    # The examples the comparison shows, as they are: what the samples should look like.
    paths += write_media(shown["truth"], exp.kind, figures, "truth", **options)
    paths += write_comparison(shown, exp.kind, figures, "reconstructions", **options)
    if tuple(generator.latent_shape) == (2,):
        paths.append(save_png(latent_grid(generator), figures / "latent_grid.png"))
    if exp.cfg.generator.get("kind") == "texture":  # a larger latent map, a larger texture
        decoders = {"large_texture": generator}
        if vae is not None:
            decoders["vae_large_texture"] = vae.decoder
        for stem, decoder in decoders.items():
            with torch.no_grad():
                large = decoder(large_texture_latents(decoder))
            paths.append(save_png(media.image_grid(large), figures / f"{stem}.png"))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [h["epoch"] for h in history]
    for ax, key in zip(axes, ("energy", "reconstruction_mse")):
        ax.plot(epochs, [h[key] for h in history])
        ax.set(xlabel="epoch", ylabel=key, yscale="log")
    fig.suptitle(f"{exp.name}: training")
    fig.tight_layout()
    fig.savefig(figures / "training.png", dpi=100)
    plt.close(fig)
    paths.append(figures / "training.png")
    paths.append(write_media_index(exp, paths, list(shown), examples))
    for folder in (figures, sounds_and_videos):
        for stale in set(folder.iterdir()) - set(paths):
            if stale.is_file():
                stale.unlink()
    return paths


SHOWS = {
    "samples": "signals the generator makes from latents drawn from its prior",
    "vae_samples": "signals the VAE's decoder makes from the same draws from the prior",
    "vae_large_texture": "the VAE decoder's texture from the same larger latent map",
    "truth": "the {split} examples the comparisons show, as they are",
    "reconstructions": "the same {split} examples, one row per method: {rows}",
    "reconstructions.wav": "the same {split} examples, each as every method gives it, "
    "in turn: {rows}",
    "training": "energy and reconstruction error per training epoch",
    "latent_grid": "g(z) over a 9×9 grid of z in [−2, 2]²",
    "large_texture": "one texture from a latent map 2×3 times the training one's",
}


def write_media_index(
    exp: Experiment, paths: list[Path], rows: list[str], examples: list[int]
) -> Path:
    """media/index.json: what this evaluation wrote, with the length of every mp4 and wav
    (image data have none: the index says so, and the folder DVC tracks is never empty),
    and the indices in their split of the examples the comparisons show."""
    folder = exp.report_folder / "media"
    split = "test" if exp.manifest["counts"].get("test") else "training"

    def shows(path: Path) -> str:
        stem = path.stem.removesuffix("_frames").removesuffix("_spectrograms")
        text = SHOWS.get(path.name, SHOWS.get(stem, path.stem))
        return text.format(split=split, rows=", ".join(rows))

    index = {
        "experiment": exp.name,
        "kind": exp.kind,
        "examples": {"split": split, "indices": examples},
        "media": [
            {"file": p.name, "seconds": round(media.duration_seconds(p), 2), "shows": shows(p)}
            for p in paths
            if p.parent == folder
        ],
        "figures": [
            {"file": f"../figures/{p.name}", "shows": shows(p)} for p in paths if p.suffix == ".png"
        ],
    }
    if not index["media"]:
        index["note"] = "no sound or video for image data: the pictures are the figures"
    return write_json(folder / "index.json", index)


class UnusableModel(RuntimeError):
    """The trained model cannot be scored: nothing is written, registered or promoted."""


def check_finite_weights(generator: torch.nn.Module, path: Path) -> None:
    bad = [
        name
        for name, p in generator.state_dict().items()
        if p.is_floating_point() and not torch.isfinite(p).all()
    ]
    if bad:
        raise UnusableModel(
            f"{path} has non-finite weights ({', '.join(bad[:3])}"
            f"{', …' if len(bad) > 3 else ''}): its training diverged. Retrain "
            "with the settings the training's error names; this model is "
            "neither scored nor registered."
        )


def check_finite_metrics(metrics: dict[str, float], experiment: str) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise UnusableModel(
            f"evaluation of {experiment} gave non-finite errors "
            f"({', '.join(f'{k}={v}' for k, v in bad.items())}): its metrics "
            "file is not written and the model is neither registered nor "
            "promoted."
        )


def has_media(folder: Path) -> bool:
    """Whether the media folder holds sound or video, not only its index (image data)."""
    return folder.is_dir() and any(p.name != "index.json" for p in folder.iterdir())


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record(
    exp: Experiment, generator, run: dict[str, Any], metrics: dict[str, float], figures: Path
) -> bool:
    """Log evaluation into the training's MLflow run; register the model; maybe promote it.

    The run is written to by id, never reopened: mlflow.start_run(run_id) then end_run
    would set its end time to now, and a 6-minute training would show as lasting until its
    evaluation ended. MLflow takes metrics, artifacts and models for an ended run and
    leaves its status and end time alone; the metrics stay on the training's run, where
    flows.compare and the runs table read them."""
    tracking.configure()
    run_id = run["mlflow_run_id"]
    if not run.get("model_uri"):  # the tracking server was away when training ended
        run["model_uri"] = tracking.log_model(
            generator, tuple(generator.latent_shape), run_id=run_id
        )
    # By run id: the run is not reopened, and MLflow links the metrics to the model the
    # run logged too (its page in the Models view shows them), as MlflowClient does not.
    mlflow.log_metrics(metrics, run_id=run_id)
    client = MlflowClient()
    client.log_artifacts(run_id, str(figures), artifact_path="evaluation")
    if has_media(figures.parent / "media"):  # image data: no empty evaluation/media
        client.log_artifacts(
            run_id, str(figures.parent / "media"), artifact_path="evaluation/media"
        )
    score = metrics.get("heldout_mae", metrics["train_mae"])
    _, champion = registry.register(exp, generator, run["mlflow_run_id"], run["model_uri"], score)
    return champion


@flow(name="evaluate", flow_run_name="evaluate {experiment}")
def evaluate(
    experiment: str,
    params_file: str = "params.yaml",
    prepared_root: str = str(PREPARED_ROOT),
    models_root: str = str(MODELS_ROOT),
    reports_root: str = str(REPORTS_ROOT),
    metrics_root: str = str(METRICS_ROOT),
) -> dict[str, float] | State:
    """Evaluate the experiment; return its metrics (or, when the model cannot be scored, a
    Failed state with the reason)."""
    try:
        return _evaluate(
            experiment, params_file, prepared_root, models_root, reports_root, metrics_root
        )
    except (UnusableModel, DataError) as error:  # a failed run with the reason, no traceback
        return Failed(message=str(error), data=error)


def _evaluate(
    experiment: str,
    params_file: str,
    prepared_root: str,
    models_root: str,
    reports_root: str,
    metrics_root: str,
) -> dict[str, float]:
    logger = get_run_logger()
    exp = load_experiment(
        experiment,
        Path(params_file),
        Path(prepared_root),
        Path(models_root),
        Path(reports_root),
        Path(metrics_root),
    )
    remove_stale_partials(exp.report_folder)  # what a killed write left behind
    run = json.loads((exp.model_folder / "mlflow_run.json").read_text())
    if run.get("retuned"):  # a retry after divergence lowered them: infer as it trained
        exp.cfg = exp.cfg.model_copy(update={"abp": replace(exp.cfg.abp, **run["retuned"])})
        logger.info("inference with the settings a divergence retry lowered: %s", run["retuned"])
    generator = load_generator(exp.model_folder / "generator.pt").eval()
    check_finite_weights(generator, exp.model_folder / "generator.pt")
    metrics, shown, vae = compute_metrics(exp, generator)
    check_finite_metrics(metrics, experiment)
    history = json.loads((exp.model_folder / "history.json").read_text())
    started = time.perf_counter()
    write_figures(exp, generator, shown, history, vae)
    logger.info("figures and media: %.1f s", time.perf_counter() - started)
    write_json(exp.metrics_file, metrics)
    champion = False
    if tracking.is_main_process():
        champion = record(exp, generator, run, metrics, exp.report_folder / "figures")
    logger.info("%s: %s%s", experiment, metrics, " (new champion)" if champion else "")
    rows = "".join(
        f"| {k} | {v:.4f} |\n" if isinstance(v, float) else f"| {k} | {v} |\n"
        for k, v in metrics.items()
    )
    create_markdown_artifact(
        key=f"evaluate-{experiment}".lower().replace("_", "-"),
        markdown=(
            f"# Evaluation of {experiment}\n\n| metric | value |\n|---|---|\n{rows}\n"
            f"Champion: {'yes' if champion else 'no'}.\n\nMLflow run: "
            f"{tracking.run_link(run['mlflow_run_id'], run['mlflow_experiment_id'])}\n"
        ),
        description=f"ABP evaluation of {experiment}",
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = experiment_arguments(__doc__.splitlines()[0], reports=True).parse_args(argv)
    try:
        exp = load_experiment(
            args.experiment,
            Path(args.params),
            Path(args.prepared_root),
            Path(args.models_root),
            Path(args.reports_root),
            Path(args.metrics_root),
        )
        for needed in ("generator.pt", "latent_bank.pt", "mlflow_run.json", "history.json"):
            if not (exp.model_folder / needed).is_file():
                raise FileNotFoundError(
                    f"{exp.model_folder / needed} is missing: train first "
                    f"(python -m flows.train {args.experiment})"
                )
        trained = json.loads((exp.model_folder / "mlflow_run.json").read_text())
        if trained.get("fingerprint", exp.fingerprint()) != exp.fingerprint():
            raise ConfigError(
                f"{exp.model_folder} holds a model trained with other settings or "
                f"data than {args.params}'s experiments.{args.experiment}: train "
                f"it first (python -m flows.train {args.experiment})"
            )
        tracking.check_reachable(tracking.configure())
        with prefect_server_for_this_process():
            evaluate(
                args.experiment,
                params_file=args.params,
                prepared_root=args.prepared_root,
                models_root=args.models_root,
                reports_root=args.reports_root,
                metrics_root=args.metrics_root,
            )
    except (ConfigError, FileNotFoundError, DataError, tracking.TrackingUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except UnusableModel as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_command(main)
