"""flows.tracking: the default store, where experiments keep their artifacts, and the
markdown link to a run that the Prefect artifacts carry."""

import re

import mlflow
import pytest

from flows import tracking

LINK = re.compile(r"^\[(?P<text>[^\]]+)\]\((?P<url>[^)\s]+)\)(?P<after>.*)$")


@pytest.fixture
def uri(monkeypatch):
    """Set MLflow's tracking URI for one test; MLflow's own setting is restored after (it
    sets MLFLOW_TRACKING_URI too, which monkeypatch restores)."""
    before = tracking_uri_setting()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "restored after the test")
    yield mlflow.set_tracking_uri
    mlflow.set_tracking_uri(before)


def tracking_uri_setting() -> str | None:
    """What mlflow.set_tracking_uri last set (None: unset), unlike get_tracking_uri."""
    from mlflow.tracking._tracking_service import utils

    return utils._tracking_uri


def test_a_local_store_links_to_mlflow_ui_with_the_note_outside_the_link(uri):
    uri("sqlite:///mlflow.db")
    link = LINK.match(tracking.run_link("abc123", "7"))
    assert link["text"] == "abc123"
    assert link["url"] == "http://127.0.0.1:5000/#/experiments/7/runs/abc123"
    assert link["after"] == " (open `mlflow ui` first)"


@pytest.mark.parametrize("server", ["http://mlflow.example:8080", "https://mlflow.example/"])
def test_a_tracking_server_links_to_its_own_ui(uri, server):
    uri(server)
    link = LINK.match(tracking.run_link("abc123", "7"))
    assert link["url"] == f"{server.rstrip('/')}/#/experiments/7/runs/abc123"
    assert link["after"] == ""


def test_the_default_store_is_the_current_folders(uri, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    # Absolute: MLflow keeps one store per URI, and this process may change folders.
    assert tracking.configure() == tracking.default_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_experiments_on_sqlite_keep_artifacts_beside_the_database(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")  # elsewhere: the database's folder counts
    uri(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    experiment = mlflow.get_experiment(tracking.experiment_id("abp-here"))
    assert experiment.artifact_location == "abp-local:/mlartifacts"
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        mlflow.log_text("x", "a.txt")
    assert run.info.artifact_uri == f"abp-local:/mlartifacts/{run.info.run_id}/artifacts"
    assert (tmp_path / "store" / "mlartifacts" / run.info.run_id / "artifacts" / "a.txt").is_file()
    assert tracking.experiment_id("abp-here") == experiment.experiment_id  # found, not made
