"""Train an experiment from params.yaml with ABP, recorded in MLflow.

    python -m flows.train digits        # params.yaml: experiments.digits

Runs on CUDA when available, else on the CPU. Shows a progress bar with the energy and the
reconstruction error per epoch; saves a full checkpoint every `checkpoint_every` epochs to
models/<experiment>/checkpoints/last.pt, and a rerun after an interruption resumes from it
(into the same MLflow run) as long as the settings and the data are unchanged. Writes the
generator, the latent bank and the per-epoch history to models/<experiment>/.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from abp.train import ABPConfig, ABPTrainer, Checkpointer, default_device
from flows import tracking
from flows.config import ConfigError
from flows.experiment import (MODELS_ROOT, PREPARED_ROOT, Experiment, experiment_arguments,
                              load_experiment, save_tensor_file, write_json)
from flows.samples import log_media


def _resumable_state(path: Path, fingerprint: str, epochs: int) -> dict[str, Any] | None:
    """The checkpoint's state if training can continue from it: same settings and data, and
    not past the epochs asked for. Loaded on the CPU (the RNG state must stay there)."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("extra", {}).get("fingerprint") != fingerprint or state["epoch"] > epochs:
        return None
    return state


class EpochRecorder:
    """Epoch callback: progress bar, MLflow metrics per epoch, sample media every N epochs
    from one fixed latent batch (so the samples are comparable from epoch to epoch)."""

    def __init__(self, exp: Experiment, trainer: ABPTrainer, progress: tqdm):
        self.exp, self.progress = exp, progress
        rng = torch.Generator(trainer.device).manual_seed(12345)
        self.fixed_z = trainer.generator.sample_latent(exp.cfg.evaluation.n_samples, rng=rng)
        self.media_options = {k: exp.manifest[k] for k in ("fps", "sample_rate") if k in exp.manifest}

    def __call__(self, trainer: ABPTrainer, stats: dict[str, float]) -> None:
        self.progress.update(1)
        self.progress.set_postfix(refresh=False, energy=f"{stats['energy']:.2f}",
                                  mse=f"{stats['reconstruction_mse']:.4f}")
        if not tracking.is_main_process():
            return
        mlflow.log_metrics({k: v for k, v in stats.items() if k != "epoch"}, step=trainer.epoch)
        training = self.exp.cfg.training
        if trainer.epoch % training.media_every == 0 or trainer.epoch == training.epochs:
            with torch.no_grad():
                samples = trainer.generator(self.fixed_z)
            log_media(samples, self.exp.kind, "samples", trainer.epoch, **self.media_options)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_model(generator: torch.nn.Module, latent_shape: tuple[int, ...]) -> str:
    """The generator as an MLflow model (pt2 format: no pickle), with an input example and
    signature; returns its model URI."""
    generator = generator.cpu().eval()
    example = np.zeros((2, *latent_shape), dtype=np.float32)
    with torch.no_grad():
        output = generator(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(generator, name="generator", input_example=example,
                                    signature=infer_signature(example, output),
                                    serialization_format="pt2",
                                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    return info.model_uri


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_run_start(exp: Experiment, device: torch.device) -> None:
    mlflow.log_params(tracking.flatten({"dataset": exp.cfg.dataset,
                                        **exp.cfg.model_dump(exclude={"dataset"}),
                                        "generator_resolved": exp.generator_config()}))
    mlflow.set_tags({"device": str(device), "git_commit": tracking.git_commit(),
                     "dvc_stage": f"train@{exp.name}", "prefect_flow_run_id": str(runtime.flow_run.id),
                     "dataset_kind": exp.kind})


@flow(name="train")
def train(experiment: str, params_file: str = "params.yaml",
          prepared_root: str = str(PREPARED_ROOT), models_root: str = str(MODELS_ROOT)) -> dict[str, Any]:
    """Train the experiment; return where its outputs are and its final statistics."""
    logger = get_run_logger()
    exp = load_experiment(experiment, Path(params_file), Path(prepared_root), Path(models_root))
    generator = exp.build_generator()
    _, y, observation = exp.split("train")
    device = default_device()
    trainer = ABPTrainer(generator, y, ABPConfig(**exp.cfg.abp.model_dump()),
                         observation=observation, device=device)
    logger.info("training %s on %s: %d examples of shape %s, %d parameters", experiment, device,
                len(y), exp.signal_shape, sum(p.numel() for p in generator.parameters()))

    checkpoint = exp.model_folder / "checkpoints" / "last.pt"
    fingerprint = exp.fingerprint()
    resume = _resumable_state(checkpoint, fingerprint, exp.cfg.training.epochs)
    if checkpoint.is_file() and not resume:
        logger.info("not resuming %s: it is from other settings, data or more epochs", checkpoint)
    tracking.configure()
    mlflow_experiment = tracking.experiment_id(f"abp-{exp.cfg.dataset}")
    run_id = resume["extra"].get("mlflow_run_id") if resume else None
    if run_id and not tracking.run_exists(run_id):
        run_id = None  # the tracking store was reset: record the continuation as a new run
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else mlflow_experiment,
                          run_name=None if run_id else f"{experiment}-{exp.kind}-abp",
                          description=f"ABP on {exp.cfg.dataset} ({exp.kind}), params.yaml "
                                      f"experiments.{experiment}",
                          log_system_metrics=True) as run:
        if resume:
            trainer.load_state_dict(resume)
            logger.info("resumed from %s at epoch %d", checkpoint, trainer.epoch)
        else:
            log_run_start(exp, device)
        started = time.perf_counter()
        # Off a terminal (under DVC, in CI logs) redraw rarely instead of flooding the log.
        training = exp.cfg.training
        with tqdm(total=training.epochs, initial=trainer.epoch, desc=experiment, unit="epoch",
                  file=sys.stderr, mininterval=0.1 if sys.stderr.isatty() else 15) as progress:
            saver = Checkpointer(checkpoint, every=training.checkpoint_every,
                                 extra={"fingerprint": fingerprint, "mlflow_run_id": run.info.run_id})
            trainer.fit(training.epochs, callbacks=[EpochRecorder(exp, trainer, progress), saver])
        trainer.save_checkpoint(checkpoint, extra=saver.extra)  # the final state, always
        seconds = time.perf_counter() - started

        out = exp.model_folder
        save_tensor_file({"config": trainer.generator.config,
                          "state_dict": trainer.generator.state_dict()}, out / "generator.pt")
        save_tensor_file(trainer.latent_bank.latents.cpu(), out / "latent_bank.pt")
        write_json(out / "history.json", trainer.history)
        mlflow.log_artifact(str(out / "latent_bank.pt"), artifact_path="latents")
        mlflow.log_artifact(str(out / "history.json"))
        model_uri = log_model(trainer.generator, tuple(generator.latent_shape))
        summary = {"experiment": experiment, "mlflow_run_id": run.info.run_id,
                   "mlflow_experiment_id": run.info.experiment_id, "model_uri": model_uri,
                   "device": str(device), "epochs": trainer.epoch, "train_seconds": seconds,
                   **{k: trainer.history[-1][k] for k in ("energy", "reconstruction_mse")}}
        write_json(out / "mlflow_run.json", summary)

    link = tracking.run_link(run.info.run_id, run.info.experiment_id)
    create_markdown_artifact(
        key=f"train-{experiment}".lower().replace("_", "-"),
        markdown=(f"# Training {experiment}\n\n| | |\n|---|---|\n"
                  f"| data set | {exp.cfg.dataset} ({exp.kind}, {len(y)} examples) |\n"
                  f"| device | {device} |\n| epochs | {trainer.epoch} |\n"
                  f"| final energy | {summary['energy']:.3f} |\n"
                  f"| reconstruction mse | {summary['reconstruction_mse']:.5f} |\n"
                  f"| time | {seconds:.1f} s |\n| MLflow run | {link} |\n"),
        description=f"ABP training of {experiment}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = experiment_arguments(__doc__.splitlines()[0]).parse_args(argv)
    try:
        # Settings and data are checked before Prefect or MLflow start: fail fast.
        load_experiment(args.experiment, Path(args.params), Path(args.prepared_root),
                        Path(args.models_root)).build_generator()
        train(args.experiment, params_file=args.params, prepared_root=args.prepared_root,
              models_root=args.models_root)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
