"""Scheduled retraining: a deployment served against a real local Prefect server has the
schedule from params.yaml, and a run triggered by hand executes `dvc repro`."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.local_server import local_prefect_server

# A Prefect server and a served deployment, in real processes: `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def tiny_dvc_repo(path: Path) -> Path:
    path.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=path, check=True)
    (path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"hello": {"cmd": "echo retrained > out.txt", "outs": ["out.txt"]}}}
        )
    )
    (path / "params.yaml").write_text(
        yaml.safe_dump(
            {"schedule": {"cron": "*/30 * * * *", "timezone": "Europe/Paris", "targets": []}}
        )
    )
    return path


def wait_for_deployment(name: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            try:
                return client.read_deployment_by_name(name)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)


def test_served_deployment_has_the_schedule_and_a_manual_run_executes(tmp_path, monkeypatch):
    repo = tiny_dvc_repo(tmp_path / "repo")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # a fresh server database
    with local_prefect_server() as api_url:
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.serve",
                "--params",
                str(repo / "params.yaml"),
                "--repo",
                str(repo),
            ],
            cwd=REPO,
            env={**os.environ, "PREFECT_API_URL": api_url},
            start_new_session=True,
        )
        try:
            with temporary_settings({PREFECT_API_URL: api_url}):
                deployment = wait_for_deployment("pipeline/retrain")
                schedule = deployment.schedules[0].schedule
                assert (schedule.cron, schedule.timezone) == ("*/30 * * * *", "Europe/Paris")
                assert deployment.parameters == {"targets": [], "repo": str(repo)}
                run = run_deployment("pipeline/retrain", timeout=180)
                assert run.state.is_completed(), run.state
                assert run.name == "dvc repro"  # what it did, not a random name
            assert (repo / "out.txt").read_text().strip() == "retrained"
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=30)


def test_serve_refuses_to_start_without_a_server_or_with_a_bad_cron(tmp_path):
    repo = tiny_dvc_repo(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "flows.serve", "--params", str(repo / "params.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "needs a Prefect server" in result.stderr
    (repo / "params.yaml").write_text(yaml.safe_dump({"schedule": {"cron": "daily"}}))
    result = subprocess.run(
        [sys.executable, "-m", "flows.serve", "--params", str(repo / "params.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        result.returncode == 2
        and "schedule" in result.stderr
        and "Invalid cron string" in result.stderr
    )
