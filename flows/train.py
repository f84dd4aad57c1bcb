"""Train an experiment from params.yaml with ABP, recorded in MLflow.

    python -m flows.train digits        # params.yaml: experiments.digits

Runs on CUDA when available, else on the CPU; on several processes (one per GPU, or
machines) when training.nproc_per_node or nnodes ask for them: the flow then starts torchrun,
whose ranks run this module with --as-rank (flows/ranks.py, README "Scaling out"). Shows a
progress bar with the energy and the reconstruction error per epoch; saves a full
checkpoint every `checkpoint_every` epochs to
models/<experiment>/checkpoints/last.pt, and a rerun after an interruption resumes from it
(into the same MLflow run) as long as the settings and the data are unchanged. Writes the
generator, the latent bank and the per-epoch history to models/<experiment>/.

What happens when things fail (README, "What happens when things fail"):
- a training that diverges (inf/NaN, or latents or energy running away) stops with a
  diagnosis; the last good checkpoint stays; the MLflow run ends FAILED with the reason.
  `training.divergence_retries: N` retries from the last good checkpoint with the culprit
  (step size or learning rate) halved, said in the log and kept in the checkpoint;
- the tracking server going away never stops the training: records wait in a buffer (and on
  disk, models/<experiment>/tracking_spool/) and are sent when it is back;
- one training per experiment folder at a time (models/<experiment>/.lock);
- a damaged checkpoint is named, with the way out: `--restart`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from logging import Logger, LoggerAdapter
from pathlib import Path
from typing import Any

import mlflow
import torch
from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.exceptions import TerminationSignal
from prefect.states import Failed
from tqdm import tqdm

from abp.datasets import DataError, training_examples
from abp.distributed import (
    World,
    broadcast_object,
    current_world,
    join_from_environment,
    launched_world,
    leave,
    process_device,
)
from abp.divergence import DivergenceError, risky_settings
from abp.evaluate import sample_latents
from abp.files import remove_stale_partials, save_tensors, write_json
from abp.models import save_generator
from abp.train import ABPConfig, ABPTrainer, Checkpointer, default_device
from flows import tracking
from flows.config import ConfigError
from flows.experiment import Experiment, load_experiment
from flows.locks import FolderLocked, exclusive
from flows.mlflow_http import HttpLimits, process_http_limits
from flows.paths import MODELS_ROOT, PREPARED_ROOT, experiment_arguments
from flows.process import prefect_server_for_this_process, raise_if_stopped, run_command
from flows.ranks import LAUNCH_TOKEN, RanksFailed, run_ranks, torchrun_command
from flows.recorder import TrackingRecorder, end_run
from flows.samples import log_media
from flows.system_metrics import SystemMetrics

# A retry after divergence halves the culprit: the step size when the chains blew up, the
# learning rate when the weights did.
RETRY_FACTOR = 0.5
RETUNABLE = ("step_size", "learning_rate")
# How long the end of a training waits for a tracking server that is away before it leaves
# the records on disk.
FLUSH_WAIT_SECONDS = 20
# Logging the model uploads its files: longer reads than a metric, still bounded.
MODEL_UPLOAD_LIMITS = HttpLimits(timeout=60, max_retries=1)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names it and the way out."""


def read_checkpoint(path: Path, experiment: str) -> dict[str, Any]:
    """A full training state, loaded on the CPU (the RNG state must stay there)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"epoch", "generator", "latent_bank"} <= set(state):
            raise ValueError("not a training checkpoint")
    except Exception as error:  # noqa: BLE001 - truncated archive, garbage, refused unpickling, …
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointError(
            f"{path} cannot be read ({reason}): the checkpoint is damaged. Start {experiment} "
            f"afresh with `python -m flows.train {experiment} --restart` (the damaged file is "
            "kept beside it, renamed), or delete the file and run again."
        ) from None
    return state


def _resumable_state(
    path: Path, experiment: str, fingerprint: str, epochs: int
) -> dict[str, Any] | None:
    """The checkpoint's state if training can continue from it: same settings and data, and
    not past the epochs asked for."""
    if not path.is_file():
        return None
    state = read_checkpoint(path, experiment)
    if state.get("extra", {}).get("fingerprint") != fingerprint or state["epoch"] > epochs:
        return None
    return state


def set_aside(path: Path, label: str) -> Path:
    """Rename a checkpoint out of the way, never deleting it: <label>-<time>.pt beside it."""
    target = path.with_name(f"{label}-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
    path.rename(target)
    return target


def _abp_config(exp: Experiment, retuned: dict[str, Any] | None) -> ABPConfig:
    return replace(exp.cfg.abp, **(retuned or {}))


class EpochRecorder:
    """Epoch callback: progress bar, MLflow metrics per epoch, sample media before training
    (step 0) and every N epochs from one fixed latent batch (so the samples are comparable
    from epoch to epoch). The records go through a TrackingRecorder: a tracking server that
    is away delays them, it never stops the training."""

    def __init__(
        self,
        exp: Experiment,
        trainer: ABPTrainer,
        progress: tqdm,
        recorder: TrackingRecorder | None,
    ):
        self.exp, self.progress, self.recorder = exp, progress, recorder
        # The very latents evaluation's samples figure is made from, on every device.
        self.fixed_z = sample_latents(trainer.generator, exp.cfg.evaluation.n_samples)
        self.media_options = {
            k: exp.manifest[k] for k in ("fps", "sample_rate") if k in exp.manifest
        }

    def __call__(self, trainer: ABPTrainer, stats: dict[str, float]) -> None:
        self.progress.update(trainer.epoch - self.progress.n)  # a retry may go back
        self.progress.set_postfix(
            refresh=False, energy=f"{stats['energy']:.2f}", mse=f"{stats['reconstruction_mse']:.4f}"
        )
        if self.recorder is None:
            return
        self.recorder.log_metrics(
            {k: v for k, v in stats.items() if k != "epoch"}, step=trainer.epoch
        )
        training = self.exp.cfg.training
        if trainer.epoch % training.media_every == 0 or trainer.epoch == training.epochs:
            self.log_samples(trainer)

    def log_samples(self, trainer: ABPTrainer) -> None:
        """The fixed latents' samples at the trainer's epoch (step); at step 0, before
        training, they are what the per-step chart starts from."""
        if self.recorder is None:
            return
        with torch.no_grad():
            samples = trainer.generator(self.fixed_z)
        log_media(
            samples, self.exp.kind, "samples", trainer.epoch, self.recorder, **self.media_options
        )


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_run_start(exp: Experiment, device: torch.device) -> None:
    mlflow.log_params(tracking.experiment_params(exp))
    mlflow.set_tags(
        {
            "device": str(device),
            "git_commit": tracking.git_commit(),
            "dvc_stage": f"train@{exp.name}",
            "prefect_flow_run_id": str(runtime.flow_run.id),
            "dataset_kind": exp.kind,
        }
    )


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_data_seen(exp: Experiment) -> None:
    """The Dataset column of the runs table (name, digest and source of the data seen) and
    the tags `compare` selects by. Called for new and resumed runs alike: a run begun before
    they were logged gets them on resume (the data are the same: the fingerprint, which
    covers them, allowed the resume)."""
    mlflow.set_tags({"experiment": exp.name, "data_digest": tracking.data_digest(exp.manifest)})
    run = mlflow.active_run()
    assert run is not None  # the task runs inside the training's run
    inputs = mlflow.get_run(run.info.run_id).inputs
    if inputs is None or not inputs.dataset_inputs:
        tracking.log_dataset(exp.cfg.dataset, exp.manifest, exp.data_folder)


def fit_with_retries(
    exp: Experiment,
    trainer: ABPTrainer,
    callbacks: list,
    saver: Checkpointer,
    checkpoint: Path,
    recorder: TrackingRecorder | None,
    logger,
) -> None:
    """trainer.fit, and on divergence, while `training.divergence_retries` allows (counted
    across reruns), continue from the last good checkpoint with the suspect setting halved.
    The lowered setting is saved with the checkpoint at once, so a rerun keeps it."""
    while True:
        try:
            trainer.fit(exp.cfg.training.epochs, callbacks=callbacks)
            return
        except DivergenceError as error:
            used = saver.extra.get("retries_used", 0)
            if used >= exp.cfg.training.divergence_retries:
                raise
            was = getattr(trainer.config, error.setting)
            retuned = {**saver.extra.get("retuned", {}), error.setting: was * RETRY_FACTOR}
            trainer.retune(**retuned)
            trainer.load_state_dict(read_checkpoint(checkpoint, exp.name), retuned=RETUNABLE)
            saver.extra.update(retuned=retuned, retries_used=used + 1)
            trainer.save_checkpoint(checkpoint, extra=saver.extra)
            if recorder is not None:
                recorder.set_tag(f"retuned.{error.setting}", retuned[error.setting])
            logger.warning(
                "%s\nRetry %d of %d: from the checkpoint at epoch %d with %s %g "
                "(was %g; training.divergence_retries)",
                error,
                used + 1,
                exp.cfg.training.divergence_retries,
                trainer.epoch,
                error.setting,
                retuned[error.setting],
                was,
            )


@flow(name="train", flow_run_name="train {experiment}")
def train(
    experiment: str,
    params_file: str = "params.yaml",
    prepared_root: str = str(PREPARED_ROOT),
    models_root: str = str(MODELS_ROOT),
) -> dict[str, Any] | State:
    """Train the experiment, on torchrun's processes when training.nproc_per_node or nnodes
    ask for several (flows.ranks); return where its outputs are and its final statistics
    (or, on a failure the user can act on, a Failed state with the diagnosis)."""
    logger = get_run_logger()
    try:
        exp = load_experiment(experiment, Path(params_file), Path(prepared_root), Path(models_root))
        training = exp.cfg.training
        if training.processes > 1 and not current_world().distributed:
            command = torchrun_command(
                training, experiment, params_file, prepared_root, models_root
            )
            logger.info("training %s on %d processes: %s", experiment, training.processes, command)
            summary = run_ranks(
                command,
                exp.model_folder / "mlflow_run.json",
                flow_run_id=str(runtime.flow_run.id),
                one_machine=training.nnodes == 1,
            )
        else:
            summary = _train(exp, logger)
    except (DivergenceError, CheckpointError, DataError, RanksFailed) as error:
        # A failed run with the diagnosis as its message, not a traceback in the log; the
        # caller of the flow gets the error itself.
        return Failed(message=str(error), data=error)
    _report(exp, summary)
    return summary


def _report(exp: Experiment, summary: dict[str, Any]) -> None:
    link = tracking.run_link(summary["mlflow_run_id"], summary["mlflow_experiment_id"])
    create_markdown_artifact(
        key=f"train-{exp.name}".lower().replace("_", "-"),
        markdown=(
            f"# Training {exp.name}\n\n| | |\n|---|---|\n"
            f"| data set | {exp.cfg.dataset} ({exp.kind}, {summary['examples']} examples) |\n"
            f"| device | {summary['device']} × {summary['processes']} |\n"
            f"| epochs | {summary['epochs']} |\n"
            f"| final energy | {summary['energy']:.3f} |\n"
            f"| reconstruction mse | {summary['reconstruction_mse']:.5f} |\n"
            f"| time | {summary['train_seconds']:.1f} s |\n| MLflow run | {link} |\n"
        ),
        description=f"ABP training of {exp.name}",
    )


def _in_flow_run() -> bool:
    return FlowRunContext.get() is not None


def _train(exp: Experiment, logger: Logger | LoggerAdapter) -> dict[str, Any]:
    """The training itself, in this process: the only one, or one rank of a torchrun world
    (rank 0 records to MLflow and writes the outputs; every rank checkpoints together)."""
    world = current_world()
    main_rank = world.is_main
    experiment = exp.name
    checkpoint = exp.model_folder / "checkpoints" / "last.pt"
    fingerprint = exp.fingerprint()
    resume = None
    if main_rank:
        resume = _resumable_state(checkpoint, experiment, fingerprint, exp.cfg.training.epochs)
        if checkpoint.is_file() and not resume:
            kept = set_aside(checkpoint, "previous")
            logger.info(
                "not resuming %s: it is from other settings, data or more epochs (kept as %s)",
                checkpoint,
                kept.name,
            )
    # Rank 0 decides, the others follow: ranks deciding on their own (while rank 0 sets a
    # checkpoint aside) could disagree, and their collectives would no longer match.
    resumed_epoch = broadcast_object(resume["epoch"] if resume else None, world)
    if not main_rank and resumed_epoch is not None:
        resume = read_checkpoint(checkpoint, experiment)
        if resume["epoch"] != resumed_epoch:
            raise CheckpointError(f"{checkpoint} changed while the training's ranks read it")
    extra = {
        "fingerprint": fingerprint,
        **{
            k: v
            for k, v in (resume or {}).get("extra", {}).items()
            if k in ("retuned", "retries_used")
        },
    }
    generator = exp.build_generator()
    # Memory-mapped: read per batch, or decoded whole when held on the device.
    y, observation = training_examples(exp.data_folder, "train", exp.manifest)
    device = process_device(world) if world.distributed else default_device()
    on_device = exp.cfg.training.data_on_device
    trainer = ABPTrainer(
        generator,
        y,
        _abp_config(exp, extra.get("retuned")),
        execution=exp.cfg.execution,
        observation=observation,
        device=device,
        data_on_device=None if on_device == "auto" else on_device,
    )
    logger.info(
        "training %s on %s%s: %d examples of shape %s (%s), %d parameters",
        experiment,
        device,
        f" (rank {world.rank} of {world.size})" if world.distributed else "",
        len(y),
        exp.signal_shape,
        "on the device" if trainer.data_on_device else "moved to the device per batch",
        sum(p.numel() for p in generator.parameters()),
    )
    for warning in risky_settings(trainer.config):
        logger.warning("experiments.%s.abp: %s", experiment, warning)
    if "retuned" in extra:
        logger.warning(
            "continuing with settings lowered by an earlier divergence retry: %s", extra["retuned"]
        )

    run = _open_run(exp, resume) if main_rank else None  # only rank 0 talks to MLflow
    if run is not None:
        extra["mlflow_run_id"] = run.info.run_id
    # Prefect tasks inside the flow run; called plainly by a rank torchrun started.
    in_flow = _in_flow_run()
    recorder = None
    system: SystemMetrics | None = None
    status = "FAILED"
    try:
        if run is not None:
            recorder = TrackingRecorder(run.info.run_id, exp.model_folder / "tracking_spool")
        system = SystemMetrics(world, recorder).start()  # each machine's; rank 0 records
        if resume:
            trainer.load_state_dict(resume, retuned=tuple(extra.get("retuned", ())))
            logger.info("resumed from %s at epoch %d", checkpoint, trainer.epoch)
        else:
            if run is not None:
                (log_run_start if in_flow else log_run_start.fn)(exp, device)
            # The state a retry after a divergence in the first epochs goes back to.
            trainer.save_checkpoint(checkpoint, extra=extra)
        if run is not None:
            (log_data_seen if in_flow else log_data_seen.fn)(exp)
        saver = Checkpointer(checkpoint, every=exp.cfg.training.checkpoint_every, extra=extra)
        started = time.perf_counter()
        # Off a terminal (under DVC, in CI logs) redraw rarely instead of flooding the log.
        training = exp.cfg.training
        with tqdm(
            total=training.epochs,
            initial=trainer.epoch,
            desc=experiment,
            unit="epoch",
            file=sys.stderr,
            mininterval=0.1 if sys.stderr.isatty() else 15,
            disable=not main_rank,
        ) as progress:
            epoch_recorder = EpochRecorder(exp, trainer, progress, recorder)
            if not resume:  # a resumed run has its step 0 already
                epoch_recorder.log_samples(trainer)
            # Last: an interrupt Python lost (see raise_if_stopped) stops the training
            # after the epoch's checkpoint, not after the last epoch.
            callbacks = [
                epoch_recorder,
                saver,
                system,  # brings the other machines' samples to rank 0
                lambda _trainer, _stats: raise_if_stopped(),
            ]
            fit_with_retries(exp, trainer, callbacks, saver, checkpoint, recorder, logger)
        system.finish()
        trainer.save_checkpoint(checkpoint, extra=saver.extra)  # the final state, always
        summary: dict[str, Any] = {"epochs": trainer.epoch}
        if run is not None:
            summary = _write_outputs(exp, trainer, run, recorder, logger)
            summary.update(
                train_seconds=time.perf_counter() - started,
                fingerprint=fingerprint,
                retuned=saver.extra.get("retuned", {}),
                examples=len(y),
                processes=world.size,
                launch=os.environ.get(LAUNCH_TOKEN),
            )
            write_json(exp.model_folder / "mlflow_run.json", summary)
        status = "FINISHED"
    except DivergenceError as error:
        if recorder is not None:
            recorder.set_tag("failure_reason", str(error))
        raise
    except (KeyboardInterrupt, TerminationSignal):
        status = "KILLED"
        raise
    finally:
        if system is not None:  # after finish() a no-op; else a failure: no last sample
            system.stop(last_sample=False)
        if recorder is not None:
            # The status goes after every record, kept on disk with them if the server is
            # away; an interrupted run waits little (what is not sent stays in the spool).
            end_run(recorder, status, wait_seconds=2 if status == "KILLED" else FLUSH_WAIT_SECONDS)
        elif run is not None:
            tracking.end_run(status)

    return summary


def _open_run(exp: Experiment, resume: dict[str, Any] | None):
    """Start the MLflow run, or reopen the one a resumed checkpoint belongs to."""
    tracking.configure()
    mlflow_experiment = tracking.experiment_id(f"abp-{exp.cfg.dataset}")
    run_id = resume["extra"].get("mlflow_run_id") if resume else None
    if run_id and not tracking.run_exists(run_id):
        run_id = None  # the tracking store was reset: record the continuation as a new run
    return mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else mlflow_experiment,
        run_name=None if run_id else f"{exp.name}-{exp.kind}-abp",
        description=f"ABP on {exp.cfg.dataset} ({exp.kind}), params.yaml experiments.{exp.name}",
        log_system_metrics=False,
    )  # MLflow's monitor stalls in outages


def _write_outputs(
    exp: Experiment, trainer: ABPTrainer, run, recorder: TrackingRecorder | None, logger
) -> dict[str, Any]:
    """The generator, latent bank and history under models/<experiment>/, and into MLflow;
    returns the run summary for mlflow_run.json."""
    out = exp.model_folder
    save_generator(trainer.generator, out / "generator.pt")
    save_tensors(trainer.latent_bank.latents.cpu(), out / "latent_bank.pt")
    write_json(out / "history.json", trainer.history)
    model_uri = None
    if recorder is not None:
        recorder.log_artifact(out / "latent_bank.pt", artifact_path="latents")
        recorder.log_artifact(out / "history.json", artifact_path=None)
        if recorder.flush(wait_seconds=FLUSH_WAIT_SECONDS):
            try:
                with process_http_limits(MODEL_UPLOAD_LIMITS):
                    model_uri = tracking.log_model(
                        trainer.generator, tuple(trainer.generator.latent_shape)
                    )
            except Exception as error:  # noqa: BLE001 - the model is on disk; evaluation logs it
                logger.warning(
                    "the generator could not be logged as an MLflow model (%s); evaluation logs it",
                    str(error).splitlines()[0][:200],
                )
        else:
            logger.warning(
                "the tracking server is away: the generator is not logged as an "
                "MLflow model now (evaluation logs it when the server is back)"
            )
    return {
        "experiment": exp.name,
        "mlflow_run_id": run.info.run_id,
        "mlflow_experiment_id": run.info.experiment_id,
        "model_uri": model_uri,
        "device": str(trainer.device),
        "epochs": trainer.epoch,
        **{k: trainer.history[-1][k] for k in ("energy", "reconstruction_mse")},
    }


def check_writable(folder: Path) -> None:
    """Fail before any work when the model folder cannot be written (read-only, full, …)."""
    try:
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder / "checkpoints", prefix=".probe-"):
            pass
    except OSError as error:
        raise ConfigError(
            f"cannot write to {folder}: {error.strerror or error}; the training "
            "keeps its checkpoints and outputs there. Make it writable, or pass "
            "--models-root"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = experiment_arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start afresh: set the checkpoint aside (renamed, kept) instead "
        "of resuming it, e.g. when it is damaged",
    )
    parser.add_argument(
        "--as-rank",
        action="store_true",
        help="run as one rank of the torchrun the train flow started (flows.ranks): the flow "
        "holds the lock and is the Prefect flow run",
    )
    args = parser.parse_args(argv)
    world = launched_world()
    try:
        # Settings, data, folders and the tracking store are checked before Prefect or
        # MLflow start: fail fast, with the file or key named.
        exp = load_experiment(
            args.experiment, Path(args.params), Path(args.prepared_root), Path(args.models_root)
        )
        exp.build_generator()
        if args.as_rank and not world.distributed:
            raise ConfigError("--as-rank is for the processes torchrun starts (flows.ranks)")
        if world.distributed:
            join_from_environment(process_device(world))
            if args.as_rank or not world.is_main:
                return _run_rank(exp, world)
        check_writable(exp.model_folder)
        tracking.check_reachable(tracking.configure())
        with exclusive(exp.model_folder, f"a training of {args.experiment}"):
            for folder in (exp.model_folder, exp.model_folder / "checkpoints"):
                remove_stale_partials(folder, sole_writer=True)  # a killed write's leftovers
            checkpoint = exp.model_folder / "checkpoints" / "last.pt"
            if args.restart and checkpoint.is_file():
                kept = set_aside(checkpoint, "restarted")
                print(f"--restart: {checkpoint} set aside as {kept.name}", file=sys.stderr)
            with prefect_server_for_this_process():
                train(
                    args.experiment,
                    params_file=args.params,
                    prepared_root=args.prepared_root,
                    models_root=args.models_root,
                )
    except (
        ConfigError,
        FileNotFoundError,
        FolderLocked,
        CheckpointError,
        DataError,
        tracking.TrackingUnavailable,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DivergenceError, RanksFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        leave()
    return 0


def _run_rank(exp: Experiment, world: World) -> int:
    """One rank of a torchrun world: rank 0 records to MLflow (checked first), every rank
    trains and checkpoints with the others."""
    if world.is_main:
        tracking.check_reachable(tracking.configure())
    logger = logging.getLogger(f"flows.train.rank{world.rank}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"rank {world.rank}: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if world.is_main else logging.WARNING)
        logger.propagate = False
    _train(exp, logger)
    return 0


if __name__ == "__main__":
    run_command(main)
