"""MLflow for the flows: where the store is, how runs are named and tagged, and the model
registry's `champion` alias.

The default store is `mlflow.db` in the current folder (the repository root) with artifacts
under `mlartifacts/` beside it; MLFLOW_TRACKING_URI points anywhere else (a
server, another database). Experiments created on an SQLite store keep their artifacts
beside the database under locations relative to it (flows.artifacts), so a moved or renamed
clone keeps them; on a server its own artifact proxy holds them. Only the main process
(rank 0) of a distributed run logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import (  # type: ignore[attr-defined]  # MLflow makes it at import
    LocalArtifactDatasetSource,
)
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from flows import artifacts
from flows.mlflow_http import HttpLimits, process_http_limits

CHAMPION = "champion"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def default_uri(root: Path = Path(".")) -> str:
    """<root>/mlflow.db, as an absolute path: MLflow keeps one store per URI in a process,
    so `sqlite:///mlflow.db` would go on writing to the first folder it was used in. Nothing
    that is recorded depends on it: artifact locations are relative (flows.artifacts)."""
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def configure(root: Path = Path(".")) -> str:
    """Point MLflow at MLFLOW_TRACKING_URI, or at <root>/mlflow.db; return the URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_uri(root)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    """The experiment's id, creating it if needed: on an SQLite store with its artifacts
    under mlartifacts/ beside the database, at a location relative to it (MLflow would store
    an absolute one, which a moved clone loses); elsewhere where the store puts them (a
    server: its artifact proxy)."""
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    on_sqlite = artifacts.sqlite_path(mlflow.get_tracking_uri()) is not None
    location = artifacts.location() if on_sqlite else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        created = mlflow.get_experiment_by_name(name)
        if created is None:  # not that: MLflow's error says what was wrong
            raise
        return created.experiment_id


def run_exists(run_id: str) -> bool:
    """Whether the store has the run; other errors (the server away) are raised, not taken
    for a missing run, which would start a new run beside the one being resumed."""
    try:
        mlflow.get_run(run_id)
        return True
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"abp": {"sigma": 0.3}} → {"abp.sigma": 0.3}."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def experiment_params(exp) -> dict[str, Any]:
    """An experiment's settings as MLflow records them (run params, model version tags):
    flattened, with the generator's sizes the data fixes resolved."""
    return flatten(
        {
            "dataset": exp.cfg.dataset,
            **exp.cfg.model_dump(exclude={"dataset"}),
            "generator_resolved": exp.generator_config(),
        }
    )


def require_store(uri: str) -> None:
    """For reading: raise TrackingUnavailable when an sqlite URI names no file (MLflow would
    create an empty store there and find nothing)."""
    path = artifacts.sqlite_path(uri)
    if path is not None and not path.is_file():
        raise TrackingUnavailable(
            f"there is no MLflow store at {path.resolve()} (tracking URI {uri}): run from "
            "the repository root (where make run records into mlflow.db), or set "
            "MLFLOW_TRACKING_URI to the store that holds the runs"
        )


def git_commit(root: Path = Path(".")) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default


def run_link(run_id: str, experiment_id: str) -> str:
    """A markdown link to the run in the MLflow UI (`experiment_id`: MLflow's id of its
    experiment): on the tracking server, or on a local `mlflow ui`, which the note outside
    the link says to start."""
    uri = mlflow.get_tracking_uri()
    served = uri.startswith(("http://", "https://"))
    url = f"{uri.rstrip('/') if served else LOCAL_UI}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"[{run_id}]({url})" if served else f"[{run_id}]({url}) (open `mlflow ui` first)"


def _as_float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def data_digest(manifest: dict[str, Any]) -> str:
    """A short digest of a prepared data set's content, from the sha256 of its split files
    (manifest `files`): it changes whenever the tensors do (data, masks, measurements)."""
    content = json.dumps(manifest.get("files") or manifest, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:12]


def data_origin(manifest: dict[str, Any]) -> str:
    """Where a prepared data set came from: its source (`bundled:digits`, a folder), or for a
    variant the base it was made from."""
    if "source" in manifest:
        return str(manifest["source"])
    variant = manifest.get("variant", {}).get("kind", "variant")
    return f"{variant} variant of {manifest.get('base', '?')}"


def log_dataset(name: str, manifest: dict[str, Any], folder: Path) -> MetaDataset:
    """Log the prepared data set as the active run's training input (the runs table's
    Dataset column): its name, its digest (data_digest), the prepared folder as the source,
    and as input tags its origin, kind, signal shape and example counts. Metadata only: the
    tensors stay in the folder (DVC versions them)."""
    # MLflow declares Dataset.profile abstract, but Dataset is no ABC and MetaDataset (meant
    # to be instantiated) leaves it out.
    dataset = MetaDataset(  # type: ignore[abstract]
        LocalArtifactDatasetSource(str(Path(folder).resolve())),
        name=name,
        digest=data_digest(manifest),
    )
    counts = manifest.get("counts", {})
    mlflow.log_input(
        dataset,
        context="training",
        tags={
            "source": data_origin(manifest),
            "kind": str(manifest.get("kind")),
            "signal_shape": json.dumps(manifest["shapes"]["train"][1:]),
            **{f"{split}_examples": str(n) for split, n in counts.items()},
        },
    )
    return dataset


def log_model(
    generator: torch.nn.Module, latent_shape: tuple[int, ...], run_id: str | None = None
) -> str:
    """Log the generator as an MLflow model (pt2 format: no pickle), with an input example
    and signature, into the active run, or into the run `run_id` without reopening it (an
    ended run keeps its end time); return its model URI."""
    generator = generator.cpu().eval()
    example = np.zeros((2, *latent_shape), dtype=np.float32)
    with torch.no_grad():
        output = generator(torch.from_numpy(example)).numpy()
    into_run = {}
    if run_id is not None:
        # Created here in the run's experiment: without an active run MLflow would put
        # the model in its Default experiment.
        model = mlflow.initialize_logged_model(
            name="generator",
            source_run_id=run_id,
            experiment_id=mlflow.get_run(run_id).info.experiment_id,
        )
        into_run = {"run_id": run_id, "model_id": model.model_id}
    info = mlflow.pytorch.log_model(
        generator,
        name="generator",
        input_example=example,
        signature=infer_signature(example, output),
        serialization_format="pt2",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        **into_run,
    )
    return info.model_uri


def promote_if_better(
    model_name: str, version: str, heldout_error: float, metric: str = "heldout_mae"
) -> bool:
    """Move the `champion` alias to `version` if its held-out error is finite and beats the
    current champion's (or there is none, or the champion's own error is not a finite
    number). The error is kept as a tag on the version."""
    client = MlflowClient()
    client.set_model_version_tag(model_name, version, metric, str(heldout_error))
    if not math.isfinite(heldout_error):  # a diverged model never becomes champion
        return False
    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) != str(version):
        best = _as_float(champion.tags.get(metric))
        if best is not None and math.isfinite(best) and best <= heldout_error:
            return False
    client.set_registered_model_alias(model_name, CHAMPION, version)
    return True


class TrackingUnavailable(RuntimeError):
    """The tracking store that MLFLOW_TRACKING_URI (or the default) names cannot be used."""


def _named(uri: str) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI") == uri:
        return f"MLFLOW_TRACKING_URI={uri}"
    return f"the MLflow tracking URI {uri}"


def check_reachable(uri: str, timeout: float = 5) -> None:
    """Raise TrackingUnavailable within about `timeout` seconds, naming what to change, when
    no MLflow server answers an http(s) URI, or when an sqlite URI's file is not an SQLite
    database or cannot be written. Other URIs are not checked."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout)
    elif uri.startswith("sqlite:///"):
        _check_sqlite(uri, timeout)


def _check_server(uri: str, timeout: float) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        why = f"{uri.rstrip('/')}/health answered HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, TimeoutError):
            why = f"no answer within {timeout:g} s"
        else:
            why = str(reason)
    raise TrackingUnavailable(
        f"{_named(uri)}: no MLflow server answers there ({why}); start "
        f"it, or unset MLFLOW_TRACKING_URI to record into {default_uri()}"
    )


def _check_sqlite(uri: str, timeout: float) -> None:
    database = artifacts.sqlite_path(uri)
    if database is None:  # in memory
        return
    path = database.resolve()
    advice = (
        "point MLFLOW_TRACKING_URI to another store"
        if _named(uri).startswith("MLFLOW")
        else "set MLFLOW_TRACKING_URI to another store"
    )
    if path.is_dir():
        raise TrackingUnavailable(f"{path} is a folder, not an SQLite database: {advice}")
    if path.exists():
        try:  # really try: a permission check says yes to root, and knows no read-only mount
            with open(path, "r+b"):
                pass
        except OSError as error:
            raise TrackingUnavailable(
                f"{path} is read-only ({error.strerror}): make it writable or {advice}"
            ) from None
        try:
            # Read-write, not read-only: a writer killed mid-transaction (kill -9, a power
            # cut) leaves a hot journal that only a connection allowed to write rolls back;
            # a read-only one fails with "attempt to write a readonly database".
            with sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=timeout) as db:
                db.execute("PRAGMA schema_version").fetchone()
            db.close()
        except sqlite3.OperationalError as error:
            raise TrackingUnavailable(f"{path} cannot be opened ({error}): {advice}") from None
        except sqlite3.DatabaseError as error:
            raise TrackingUnavailable(
                f"{path} is not an SQLite database ({error}): move it "
                "aside or set MLFLOW_TRACKING_URI"
            ) from None
    if not path.parent.is_dir():
        raise TrackingUnavailable(
            f"the folder {path.parent} of {path} does not exist: create it or {advice}"
        )
    try:  # SQLite writes its journal beside the database
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-check-"):
            pass
    except OSError as error:
        raise TrackingUnavailable(
            f"the folder {path.parent} of {path} is read-only "
            f"({error.strerror}); SQLite needs to write there: make it "
            f"writable or {advice}"
        ) from None


def end_run(status: str = "FINISHED", timeout: float = 5) -> None:
    """End MLflow's active run, if any, in bounded time: each request gives up after
    `timeout` seconds, without retries, and a server that does not answer is a warning, not
    an error (the run leaves MLflow's stack of active runs either way; a TrackingRecorder's
    set_terminated(status) keeps the status in its spool until the server has it)."""
    if mlflow.active_run() is None:
        return
    try:
        with process_http_limits(HttpLimits(timeout=timeout, max_retries=0)):
            mlflow.end_run(status)
    except Exception as error:  # noqa: BLE001 - the training is over: report, do not fail it
        logging.getLogger(__name__).warning(
            "MLflow at %s did not record the end of the run (%s): %s",
            mlflow.get_tracking_uri(),
            status,
            str(error).splitlines()[0][:200],
        )
