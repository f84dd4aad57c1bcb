"""Evaluate a trained experiment: held-out reconstruction, recovery, samples and figures,
against two baselines.

    python -m flows.evaluate digits     # after python -m flows.train digits

For each test example the latent is inferred with the weights fixed (gradient descent on
the energy from z = 0, or from a prior draw; abp.evaluate.most_probable_latents), from what
the model may see of it: the whole signal, its observed entries, or its compressed
measurements. Errors are mean absolute errors on the [0, 1] scale:

- heldout_mae: recovered test signals against the complete truth, all entries;
- heldout_hidden_mae: the same over the occluded entries only (occlusion variants);
- train_mae: g(z) for the training latents against the complete training signals; for an
  occlusion variant train_hidden_mae is the paper's recovery error (occluded pixels only).

Every experiment, whatever its kind, is scored against two baselines that learn from
exactly the same training data (complete, occluded or compressed), with the same keys
prefixed:

- pca_*: PCA of the flattened signals with d = pca_components, ABP's latent size
  (latent_size) unless the training data allow fewer (at most train_examples − 1);
  missing-data PCA for occluded or compressed data;
- trivial_*: the training mean signal (images, video), or silence (sound: the mean of clips
  cut anywhere in a recording is silence plus noise).

Recovered signals keep what the data say (observed pixels; agreement with the
measurements), for ABP as for both baselines: x̂ + A⁺(y − A x̂).

Writes metrics/experiments/<experiment>.json (flat numbers, for `dvc metrics diff`), and under
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
from pathlib import Path
from typing import Any

import matplotlib
import mlflow
import torch
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.states import Failed

from abp import media
from abp.datasets import DataError
from abp.evaluate import PCA, linear_baseline, most_probable_latents, pca_size, scored
from abp.files import remove_stale_partials
from abp.media import save_png
from abp.observe import Identity, Mask
from flows import registry, tracking
from flows.config import ConfigError
from flows.experiment import (
    METRICS_ROOT,
    MODELS_ROOT,
    PREPARED_ROOT,
    REPORTS_ROOT,
    Experiment,
    experiment_arguments,
    load_experiment,
    load_generator,
    write_json,
)
from flows.process import prefect_server_for_this_process, run_command
from flows.samples import shown_examples, write_comparison, write_media

matplotlib.use("Agg")  # files only, no display
from matplotlib import pyplot as plt

# Examples inferred at once: the whole split for the bundled data, bounded memory for more.
INFERENCE_BATCH = 256
# A latent's descent stops once its lowest energy fell by less than this fraction over 10
# steps (see abp.evaluate.most_probable_latents; evaluation.n_steps stays the limit).
CONVERGED = 1e-4


def run_logger():
    """The flow run's logger; a plain one when called outside a flow (a notebook, a probe)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def most_probable(exp: Experiment, generator, y: torch.Tensor, observation,
                  start: torch.Tensor) -> torch.Tensor:
    settings = exp.cfg.evaluation
    z, steps = most_probable_latents(
        generator, y, start, sigma=exp.cfg.abp.sigma,
        step_size=settings.step_size or exp.cfg.abp.step_size, max_steps=settings.n_steps,
        observation=observation, tolerance=CONVERGED, batch_size=INFERENCE_BATCH)
    # Latents that used every step may not have converged: raise evaluation.n_steps if many.
    run_logger().info("%d latents: %.0f descent steps on average; %d used all %d", len(y),
                      steps.float().mean(), int((steps == settings.n_steps).sum()),
                      settings.n_steps)
    return z


def recover(exp: Experiment, generator, y: torch.Tensor, observation) -> torch.Tensor:
    """New signals from what is seen of them: their MAP latents from z = 0 or a prior draw."""
    shape = (y.shape[0], *generator.latent_shape)
    start = (torch.zeros(shape) if exp.cfg.evaluation.init == "zeros"
             else torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    z = most_probable(exp, generator, y, observation, start)
    with torch.no_grad():
        return consistent(generator(z), y, observation, exp.signal_shape)


def consistent(x_hat: torch.Tensor, y: torch.Tensor, observation, shape) -> torch.Tensor:
    """Keep what the data say: x̂ + A⁺(y − A x̂). Observed pixels take their observed values
    and compressed recoveries agree with their measurements, exactly as the baselines'
    do, so every method is scored on what it adds to the data."""
    if isinstance(observation, Identity):
        return x_hat
    return x_hat + observation.pseudo_inverse(y - observation(x_hat), shape)


def compute_metrics(exp: Experiment, generator) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """ABP's errors beside those of PCA and of the trivial baseline, scored alike, with the
    sizes that explain them; and the signals the figures compare ({row label: signals}, the
    whole split: write_figures picks the examples shown)."""
    logger = run_logger()
    train_split, test_split = exp.split("train"), exp.split("test")
    (train, y_train, obs_train), (test, y_test, obs_test) = train_split, test_split
    has_test = len(test["x"]) > 0
    started = time.perf_counter()
    bank = torch.load(exp.model_folder / "latent_bank.pt", map_location="cpu", weights_only=True)
    # The bank holds the last Langevin samples; gradient descent from them gives each training
    # example's most probable latent, hence its best reconstruction or recovery.
    latents = most_probable(exp, generator, y_train, obs_train, bank)
    with torch.no_grad():
        fitted = consistent(generator(latents), y_train, obs_train, exp.signal_shape)
    recovered = recover(exp, generator, y_test, obs_test) if has_test else None
    metrics = scored("", fitted, recovered, train, test)
    logger.info("ABP inference: %.1f s", time.perf_counter() - started)

    started = time.perf_counter()
    latent_size = math.prod(generator.latent_shape)
    d = pca_size(latent_size, len(train["x"]), math.prod(exp.signal_shape))
    pca_fitted, pca_recovered = linear_baseline(d, exp.signal_shape, train_split, test_split)
    metrics.update(scored("pca_", pca_fitted, pca_recovered, train, test))
    # One rule per kind: the mean signal, except for sound, whose mean is silence.
    trivial = PCA.constant(torch.zeros(exp.signal_shape)) if exp.kind == "audio" else 0
    trivial_fitted, trivial_recovered = linear_baseline(trivial, exp.signal_shape, train_split,
                                                        test_split)
    metrics.update(scored("trivial_", trivial_fitted, trivial_recovered, train, test))
    metrics.update(pca_components=d, latent_size=latent_size, train_examples=len(train["x"]))
    logger.info("baselines (PCA with d = %d of %d): %.1f s", d, latent_size,
                time.perf_counter() - started)

    tensors, y, observation, abp, pca = ((test, y_test, obs_test, recovered, pca_recovered)
                                         if has_test else
                                         (train, y_train, obs_train, fitted, pca_fitted))
    shown = {"truth": tensors["x"]}
    if isinstance(observation, Mask):
        shown["observed"] = y
    elif not isinstance(observation, Identity):  # what the measurements say: A⁺y
        # (spelled out: the figures' font has no superscript plus)
        shown["pinv(A)·y"] = observation.pseudo_inverse(y, exp.signal_shape)
    shown.update({"ABP": abp, f"PCA d={d}": pca})
    return metrics, shown


def write_figures(exp: Experiment, generator, shown: dict[str, torch.Tensor],
                  history: list[dict]) -> list[Path]:
    """Samples, the labelled comparison of a few examples (shown_examples), and the training
    curves (PNG under figures/: DVC shows them as image plots); mp4 and wav under media/
    with index.json listing it all. Files an earlier evaluation left that this one did not
    write are removed."""
    figures, sounds_and_videos = exp.report_folder / "figures", exp.report_folder / "media"
    examples = shown_examples(exp.kind, shown["truth"])
    shown = {label: signals[examples] for label, signals in shown.items()}
    options = {k: exp.manifest[k] for k in ("fps", "sample_rate") if k in exp.manifest}
    options["sound_and_video_folder"] = sounds_and_videos
    with torch.no_grad():
        samples = generator(generator.sample_latent(exp.cfg.evaluation.n_samples,
                                                    rng=torch.Generator().manual_seed(12345)))
    paths = write_media(samples, exp.kind, figures, "samples", **options)
    # The examples the comparison shows, as they are: what the samples should look like.
    paths += write_media(shown["truth"], exp.kind, figures, "truth", **options)
    paths += write_comparison(shown, exp.kind, figures, "reconstructions", **options)
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
    paths.append(figures / "training.png")
    paths.append(write_media_index(exp, paths, list(shown), examples))
    for folder in (figures, sounds_and_videos):
        for stale in set(folder.iterdir()) - set(paths):
            if stale.is_file():
                stale.unlink()
    return paths


SHOWS = {"samples": "signals the generator makes from latents drawn from its prior",
         "truth": "the {split} examples the comparisons show, as they are",
         "reconstructions": "the same {split} examples, one row per method: {rows}",
         "reconstructions.wav": "the same {split} examples, each as every method gives it, "
                                "in turn: {rows}",
         "training": "energy and reconstruction error per training epoch",
         "latent_grid": "g(z) over a 9×9 grid of z in [−2, 2]²",
         "large_texture": "one texture from a latent map 2×3 times the training one's"}


def write_media_index(exp: Experiment, paths: list[Path], rows: list[str],
                      examples: list[int]) -> Path:
    """media/index.json: what this evaluation wrote, with the length of every mp4 and wav
    (image data have none: the index says so, and the folder DVC tracks is never empty),
    and the indices in their split of the examples the comparisons show."""
    folder = exp.report_folder / "media"
    split = "test" if exp.manifest["counts"].get("test") else "training"
    def shows(path: Path) -> str:
        stem = path.stem.removesuffix("_frames").removesuffix("_spectrograms")
        text = SHOWS.get(path.name, SHOWS.get(stem, path.stem))
        return text.format(split=split, rows=", ".join(rows))
    index = {"experiment": exp.name, "kind": exp.kind,
             "examples": {"split": split, "indices": examples},
             "media": [{"file": p.name, "seconds": round(media.duration_seconds(p), 2),
                        "shows": shows(p)} for p in paths if p.parent == folder],
             "figures": [{"file": f"../figures/{p.name}", "shows": shows(p)}
                         for p in paths if p.suffix == ".png"]}
    if not index["media"]:
        index["note"] = "no sound or video for image data: the pictures are the figures"
    return write_json(folder / "index.json", index)


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
                            f"({', '.join(f'{k}={v}' for k, v in bad.items())}): its metrics "
                            "file is not written and the model is neither registered nor "
                            "promoted.")


def has_media(folder: Path) -> bool:
    """Whether the media folder holds sound or video, not only its index (image data)."""
    return folder.is_dir() and any(p.name != "index.json" for p in folder.iterdir())


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record(exp: Experiment, generator, run: dict[str, Any], metrics: dict[str, float],
           figures: Path) -> bool:
    """Log evaluation into the training's MLflow run; register the model; maybe promote it.

    The run is written to by id, never reopened: mlflow.start_run(run_id) then end_run
    would set its end time to now, and a 6-minute training would show as lasting until its
    evaluation ended. MLflow takes metrics, artifacts and models for an ended run and
    leaves its status and end time alone; the metrics stay on the training's run, where
    flows.compare and the runs table read them."""
    tracking.configure()
    run_id = run["mlflow_run_id"]
    if not run.get("model_uri"):  # the tracking server was away when training ended
        run["model_uri"] = tracking.log_model(generator, tuple(generator.latent_shape),
                                              run_id=run_id)
    # By run id: the run is not reopened, and MLflow links the metrics to the model the
    # run logged too (its page in the Models view shows them), as MlflowClient does not.
    mlflow.log_metrics(metrics, run_id=run_id)
    client = MlflowClient()
    client.log_artifacts(run_id, str(figures), artifact_path="evaluation")
    if has_media(figures.parent / "media"):  # image data: no empty evaluation/media
        client.log_artifacts(run_id, str(figures.parent / "media"),
                             artifact_path="evaluation/media")
    score = metrics.get("heldout_mae", metrics["train_mae"])
    _, champion = registry.register(exp, generator, run["mlflow_run_id"], run["model_uri"], score)
    return champion


@flow(name="evaluate", flow_run_name="evaluate {experiment}")
def evaluate(experiment: str, params_file: str = "params.yaml",
             prepared_root: str = str(PREPARED_ROOT), models_root: str = str(MODELS_ROOT),
             reports_root: str = str(REPORTS_ROOT),
             metrics_root: str = str(METRICS_ROOT)) -> dict[str, float]:
    try:
        return _evaluate(experiment, params_file, prepared_root, models_root, reports_root,
                         metrics_root)
    except (UnusableModel, DataError) as error:  # a failed run with the reason, no traceback
        return Failed(message=str(error), data=error)


def _evaluate(experiment: str, params_file: str, prepared_root: str, models_root: str,
              reports_root: str, metrics_root: str) -> dict[str, float]:
    logger = get_run_logger()
    exp = load_experiment(experiment, Path(params_file), Path(prepared_root), Path(models_root),
                          Path(reports_root), Path(metrics_root))
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
    started = time.perf_counter()
    write_figures(exp, generator, shown, history)
    logger.info("figures and media: %.1f s", time.perf_counter() - started)
    write_json(exp.metrics_file, metrics)
    champion = False
    if tracking.is_main_process():
        champion = record(exp, generator, run, metrics, exp.report_folder / "figures")
    logger.info("%s: %s%s", experiment, metrics, " (new champion)" if champion else "")
    rows = "".join(f"| {k} | {v:.4f} |\n" if isinstance(v, float) else f"| {k} | {v} |\n"
                   for k, v in metrics.items())
    create_markdown_artifact(
        key=f"evaluate-{experiment}".lower().replace("_", "-"),
        markdown=(f"# Evaluation of {experiment}\n\n| metric | value |\n|---|---|\n{rows}\n"
                  f"Champion: {'yes' if champion else 'no'}.\n\nMLflow run: "
                  f"{tracking.run_link(run['mlflow_run_id'], run['mlflow_experiment_id'])}\n"),
        description=f"ABP evaluation of {experiment}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = experiment_arguments(__doc__.splitlines()[0], reports=True).parse_args(argv)
    try:
        exp = load_experiment(args.experiment, Path(args.params), Path(args.prepared_root),
                              Path(args.models_root), Path(args.reports_root),
                              Path(args.metrics_root))
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
                     models_root=args.models_root, reports_root=args.reports_root,
                     metrics_root=args.metrics_root)
    except (ConfigError, FileNotFoundError, DataError, tracking.TrackingUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except UnusableModel as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_command(main)
