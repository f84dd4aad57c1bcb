"""flows.process.run_command's normal exit (its signal handling is tests/faults/
test_interrupts.py's): main's status, after the exit hooks, with the objects that were alive
when main returned out of the garbage collector's sight (the exit's last collections over
torch's, Prefect's and MLflow's objects cost about a second a command: bench.command_exit)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# An exit hook that writes through a buffered file, as logging's and MLflow's flushes do,
# and reports whether main's objects were frozen by then.
COMMAND = """
import atexit, gc, sys
from flows.process import run_command
def main():
    out = open(sys.argv[2], "w")  # buffered: only the hook's close writes it
    def hook():
        out.write(f"frozen: {gc.get_freeze_count() > 0}")
        out.close()
    atexit.register(hook)
    return int(sys.argv[1])
run_command(main)
"""


@pytest.mark.parametrize("status", [0, 3])
def test_a_command_exits_with_mains_status_after_its_exit_hooks_outside_the_collector(
    status, tmp_path
):
    written = tmp_path / "hook.txt"
    done = subprocess.run(
        [sys.executable, "-c", COMMAND, str(status), str(written)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == status, done.stderr
    assert done.stderr == ""
    assert written.read_text() == "frozen: True"


def heartbeat_frequency():
    from prefect.settings import get_current_settings

    return get_current_settings().flows.heartbeat_frequency


def test_without_heartbeats_turns_them_off_for_its_duration():
    from flows.process import without_heartbeats

    before = heartbeat_frequency()
    assert before is not None  # Prefect's default: on
    with without_heartbeats():
        assert heartbeat_frequency() is None
    assert heartbeat_frequency() == before


@pytest.mark.parametrize("own", [True, False], ids=["make run's server", "a server of yours"])
def test_heartbeats_are_off_only_against_the_server_started_for_the_run(own, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.process import OWN_SERVER_ENV, prefect_server_for_this_process

    url = "http://127.0.0.1:9/api"  # configured: nothing is started, nothing is called
    if own:
        monkeypatch.setenv(OWN_SERVER_ENV, url)
    else:
        monkeypatch.delenv(OWN_SERVER_ENV, raising=False)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        default = heartbeat_frequency()
        with prefect_server_for_this_process() as started:
            assert started is None
            assert heartbeat_frequency() == (None if own else default)


@pytest.mark.slow  # a real Prefect server, started and stopped
def test_a_flows_own_server_is_announced_to_its_children_without_heartbeats(tmp_path, monkeypatch):
    import os

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.process import OWN_SERVER_ENV, prefect_server_for_this_process

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv(OWN_SERVER_ENV, raising=False)
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        prefect_server_for_this_process() as api_url,
    ):
        assert api_url is not None and os.environ[OWN_SERVER_ENV] == api_url
        assert heartbeat_frequency() is None
        # A child (flows.pipeline's `dvc repro` stages) sees the same server as its own.
        child = subprocess.run(
            [sys.executable, "-c", NO_HEARTBEATS_CHILD],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, child.stderr
        assert child.stdout.strip().splitlines()[-1] == "None"
    assert OWN_SERVER_ENV not in os.environ


NO_HEARTBEATS_CHILD = """
from prefect.settings import get_current_settings
from flows.process import prefect_server_for_this_process
with prefect_server_for_this_process() as started:
    assert started is None
    print(get_current_settings().flows.heartbeat_frequency)
"""
