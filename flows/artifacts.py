"""MLflow artifacts kept relative to the tracking store, so that a moved or renamed clone
still shows them (in `mlflow ui`, through MlflowClient, when a registered model is loaded).

MLflow 3 turns every local artifact location into an absolute one (`mlartifacts`, `./x` and
`file:x` all become file:///<where it ran>/…) and stores it with each run and logged model.
An experiment that flows.tracking creates on an SQLite store gets the location
`abp-local:/mlartifacts` instead, and its runs and models `abp-local:/mlartifacts/<run>/
artifacts`, `abp-local:/mlartifacts/models/<model>/artifacts`: paths relative to the folder
that holds the SQLite database (the repository root for the default `sqlite:///mlflow.db`).

This module is the artifact repository for that scheme, registered with MLflow through the
`mlflow.artifact_repository` entry point in pyproject.toml: every process of an environment
where the project is installed (`make install`) resolves the scheme, `mlflow ui` and
`mlflow server` included, with nothing to import or configure. It is MLflow's local
repository, given the absolute folder. An MLflow from another environment cannot read these
artifacts ("Could not find a registered artifact repository for: abp-local:…"): run the
project's (.venv/bin/mlflow ui).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import unquote, urlparse

# No mlflow import at the top: importing mlflow registers the entry points, which imports
# this module; a module that imported mlflow first would be half made when MLflow asks for it.

SCHEME = "abp-local"
FOLDER = "mlartifacts"
# What `mlflow server` and `mlflow ui` pass their workers as the backend store
# (mlflow.server.constants.BACKEND_STORE_URI_ENV_VAR; not imported: it pulls in Flask).
SERVER_STORE_ENV = "_MLFLOW_SERVER_FILE_STORE"


def location() -> str:
    """The artifact location of an experiment on an SQLite store."""
    return f"{SCHEME}:/{FOLDER}"


def sqlite_path(uri: str) -> Path | None:
    """The database file an `sqlite:///…` URI names (relative to the current folder if the
    URI is), or None for other URIs and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    name = unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    return None if name in ("", ":memory:") else Path(name)


def store_folder(tracking_uri: str | None = None) -> Path:
    """The folder `abp-local:` paths are relative to: the folder of the SQLite database the
    process tracks into (a server's backend store first: its handlers are asked with no
    tracking URI), else the current folder."""
    uri = os.environ.get(SERVER_STORE_ENV) or tracking_uri
    if uri is None:
        import mlflow

        uri = mlflow.get_tracking_uri()
    database = sqlite_path(str(uri))
    return (database.parent if database is not None else Path(".")).resolve()


def relative_path(artifact_uri: str) -> str:
    """The path an `abp-local:/…` URI names, relative to the store's folder. A path that
    would leave that folder is refused (a server serves whatever its repository names)."""
    from mlflow.exceptions import MlflowException

    parsed = urlparse(artifact_uri)
    if parsed.scheme != SCHEME or parsed.netloc:
        raise MlflowException(f"{artifact_uri!r} is not an {SCHEME}:/<path> artifact URI")
    relative = posixpath.normpath(unquote(parsed.path).lstrip("/"))
    if relative == ".." or relative.startswith("../"):
        raise MlflowException(f"{artifact_uri!r} points outside the tracking store's folder")
    return relative


def local_path(artifact_uri: str, tracking_uri: str | None = None) -> Path:
    """Where an `abp-local:/…` URI's files are on this machine."""
    return store_folder(tracking_uri) / relative_path(artifact_uri)


def proxied(artifact_uri: str) -> str:
    """The same files through a tracking server's artifact proxy: `abp-local:/mlartifacts/p`
    → `mlflow-artifacts:/p`, which a server serving the store from its folder (with its
    default --artifacts-destination, ./mlartifacts) maps onto the same folder."""
    from mlflow.exceptions import MlflowException

    relative = relative_path(artifact_uri)
    if not relative.startswith(f"{FOLDER}/"):
        raise MlflowException(
            f"{artifact_uri!r} is not under {FOLDER}/: no tracking server serves it"
        )
    return f"mlflow-artifacts:/{relative.removeprefix(f'{FOLDER}/')}"


def repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
    """The artifact repository MLflow builds for an `abp-local:` URI (the entry point): the
    files in the store's folder; for a client of a tracking server (an http(s) tracking URI,
    outside the server itself), the server's artifact proxy, not a folder of the client's."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    uri = str(tracking_uri or mlflow.get_tracking_uri())
    if uri.startswith(("http://", "https://")) and not os.environ.get(SERVER_STORE_ENV):
        return get_artifact_repository(
            proxied(artifact_uri), tracking_uri=uri, registry_uri=registry_uri
        )
    folder = local_path(artifact_uri, tracking_uri)
    return LocalArtifactRepository(
        folder.as_uri(), tracking_uri=tracking_uri, registry_uri=registry_uri
    )
