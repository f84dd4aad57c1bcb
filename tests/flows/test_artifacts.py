"""Artifacts relative to the tracking store (flows.artifacts): a clone that is moved or
renamed still has its run artifacts, its logged models and what `mlflow server` serves;
a tracking server keeps its own artifact proxy."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow_server import free_port

from flows import artifacts, registry, tracking


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A repository-like folder recording into its default store, ./mlflow.db."""
    folder = tmp_path / "clone"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "restored after the test")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    from mlflow.tracking._tracking_service import utils

    before = utils._tracking_uri  # what mlflow.set_tracking_uri set; restored after
    yield folder
    mlflow.set_tracking_uri(before)


def record_run(name: str) -> tuple[str, str]:
    """A finished run with a file and the generator logged and registered as the
    `champion` of abp-<name>, as train and evaluate do; (run id, logged model id)."""
    tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id(f"abp-{name}")) as run:
        mlflow.log_text("energy 1.0", "notes/history.txt")
        model_uri = tracking.log_model(torch.nn.Linear(2, 3), (2,))
    version = mlflow.register_model(model_uri, registry.model_name(name)).version
    MlflowClient().set_registered_model_alias(registry.model_name(name), tracking.CHAMPION, version)
    return run.info.run_id, model_uri.removeprefix("models:/")


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` started in `folder` on its ./mlflow.db, as the README starts it."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            "sqlite:///mlflow.db",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=folder,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_server(process)
                raise RuntimeError("mlflow server did not start") from None
            time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def mentions(database: Path, text: str) -> list[str]:
    """The rows of an SQLite database that contain `text`: "<table>: <first column>"."""
    found = []
    with sqlite3.connect(database) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f"SELECT * FROM {table}"):
                if any(isinstance(v, str) and text in v for v in row):
                    found.append(f"{table}: {row[1] if table == 'experiments' else row[0]}")
    db.close()
    return found


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.mark.slow  # an `mlflow server` process
def test_a_moved_clone_keeps_its_artifacts_models_and_served_files(clone, monkeypatch):
    run_id, model_id = record_run("moved")
    experiment = mlflow.get_experiment_by_name("abp-moved")
    assert experiment.artifact_location == "abp-local:/mlartifacts"
    assert (clone / "mlartifacts" / run_id / "artifacts" / "notes" / "history.txt").is_file()
    assert (clone / "mlartifacts" / "models" / model_id / "artifacts" / "MLmodel").is_file()

    moved = shutil.move(clone, clone.with_name("renamed"))
    monkeypatch.chdir(moved)
    assert mentions(Path(moved) / "mlflow.db", str(clone)) == [
        "experiments: Default"
    ]  # MLflow's own, which nothing here records into
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # as in a new process (configure() set it)
    client = MlflowClient(tracking.configure())  # the default store: now the moved one
    downloaded = client.download_artifacts(run_id, "notes/history.txt", str(moved))
    assert Path(downloaded).read_text() == "energy 1.0"
    generator, info = registry.load("moved")
    assert info.version == "1" and generator(torch.zeros(1, 2)).shape == (1, 3)

    port = free_port()
    server = start_server(Path(moved), port)
    try:
        base = f"http://127.0.0.1:{port}"
        assert get(f"{base}/get-artifact?path=notes/history.txt&run_uuid={run_id}") == b"energy 1.0"
        mlmodel = get(
            f"{base}/ajax-api/2.0/mlflow/logged-models/{model_id}/artifacts/files"
            "?artifact_file_path=MLmodel"
        )
        assert b"flavors:" in mlmodel
        # A client of that server, elsewhere, reads the same files through its proxy.
        elsewhere = Path(moved).parent / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
        mlflow.set_tracking_uri(base)
        downloaded = MlflowClient(base).download_artifacts(
            run_id, "notes/history.txt", str(elsewhere)
        )
        assert Path(downloaded).read_text() == "energy 1.0"
        generator, _ = registry.load("moved")
        assert generator(torch.zeros(1, 2)).shape == (1, 3)
        assert not (elsewhere / "mlartifacts").exists()
        # Through a server, experiments keep the server's own artifact proxy.
        mlflow.set_tracking_uri(base)
        created = mlflow.get_experiment(tracking.experiment_id("abp-served"))
        assert created.artifact_location.startswith("mlflow-artifacts:")
    finally:
        stop_server(server)


def test_paths_are_relative_to_the_sqlite_store_and_never_leave_it(tmp_path, monkeypatch):
    monkeypatch.delenv(artifacts.SERVER_STORE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    assert (
        artifacts.local_path("abp-local:/mlartifacts/r/artifacts", store)
        == tmp_path / "db" / "mlartifacts" / "r" / "artifacts"
    )
    assert artifacts.store_folder("sqlite:///mlflow.db") == tmp_path  # relative: here
    assert artifacts.store_folder("postgresql://host/db") == tmp_path  # no folder: here
    # A server resolves against its own backend store, whatever it is asked with.
    monkeypatch.setenv(artifacts.SERVER_STORE_ENV, f"sqlite:///{tmp_path / 'srv' / 'm.db'}")
    assert artifacts.store_folder(store) == tmp_path / "srv"
    for escaping in ("abp-local:/../secrets", "abp-local:/mlartifacts/../../x"):
        with pytest.raises(MlflowException, match="outside the tracking store"):
            artifacts.local_path(escaping)
    with pytest.raises(MlflowException, match="not an abp-local"):
        artifacts.local_path("abp-local://host/mlartifacts")
    assert (
        artifacts.proxied("abp-local:/mlartifacts/models/m-1/artifacts")
        == "mlflow-artifacts:/models/m-1/artifacts"
    )
