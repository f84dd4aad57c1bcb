"""MLflow for the flows: where the store is, how runs are named and tagged, and the model
registry's `champion` alias.

The default store is `sqlite:///mlflow.db` at the repository root with artifacts under
`mlartifacts/`; MLFLOW_TRACKING_URI points anywhere else (a server, another database).
Only the main process (rank 0) of a distributed run logs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def default_uri(root: Path = Path(".")) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def configure(root: Path = Path(".")) -> str:
    """Point MLflow at MLFLOW_TRACKING_URI, or at <root>/mlflow.db; return the URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_uri(root)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(name: str, root: Path = Path(".")) -> str:
    """The experiment's id, creating it (with artifacts under <root>/mlartifacts when the
    store is the local default) if needed."""
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if mlflow.get_tracking_uri() == default_uri(root):
        location = (root / "mlartifacts").resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def run_exists(run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
        return True
    except MlflowException:
        return False


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


def git_commit(root: Path = Path(".")) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_link(run_id: str, experiment: str) -> str:
    uri = mlflow.get_tracking_uri()
    base = uri if uri.startswith("http") else "http://127.0.0.1:5000 (after `mlflow ui`)"
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


def promote_if_better(model_name: str, version: str, heldout_error: float,
                      metric: str = "heldout_mae") -> bool:
    """Move the `champion` alias to `version` if its held-out error beats the current
    champion's (or there is none). The error is kept as a tag on the version."""
    client = MlflowClient()
    client.set_model_version_tag(model_name, version, metric, str(heldout_error))
    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) != str(version):
        best = champion.tags.get(metric)
        if best is not None and float(best) <= heldout_error:
            return False
    client.set_registered_model_alias(model_name, CHAMPION, version)
    return True
