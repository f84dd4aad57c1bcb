"""A command run beside a real local Prefect server, which is stopped afterwards."""

import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from flows.local_server import main

# Real Prefect servers started and stopped: `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

CHECK = """
import os, urllib.request
url = os.environ["PREFECT_API_URL"]
assert url.startswith("http://127.0.0.1:"), url
print(url)
assert urllib.request.urlopen(url + "/health", timeout=5).status == 200
"""


def test_command_sees_a_live_server_on_loopback_which_stops_afterwards(
    tmp_path, capfd, monkeypatch
):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert main(["--", sys.executable, "-c", CHECK]) == 0
    url = capfd.readouterr().out.strip().splitlines()[-1]
    with pytest.raises(OSError):  # noqa: PT011 - any way of failing to connect means it stopped
        urllib.request.urlopen(url + "/health", timeout=2)


# A stage's flow, as flows.process starts it: against the server local_server started for
# the command, with no heartbeats (nothing watches them; each costs a flow up to a second).
NO_HEARTBEATS = """
from prefect.settings import get_current_settings
from flows.process import prefect_server_for_this_process
with prefect_server_for_this_process() as started:
    assert started is None  # the local server's: none of its own
    print(get_current_settings().flows.heartbeat_frequency)
"""


def test_flows_against_the_local_server_send_no_heartbeats(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert main(["--", sys.executable, "-c", NO_HEARTBEATS]) == 0
    assert capfd.readouterr().out.strip().splitlines()[-1] == "None"


def test_exit_status_of_the_command_is_returned(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # given: no server started
    assert main([sys.executable, "-c", "raise SystemExit(3)"]) == 3


CHILD = """
import time
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("child: KeyboardInterrupt", flush=True)
    raise SystemExit(130)
"""


def test_sigterm_forwards_sigint_to_the_command_and_waits_for_it():
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # no server started
    local = subprocess.Popen(
        [sys.executable, "-m", "flows.local_server", "--", sys.executable, "-c", CHILD],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert local.stdout.readline().strip() == "ready"
    local.send_signal(signal.SIGTERM)  # to flows.local_server alone, not to its command
    out, err = local.communicate(timeout=30)
    assert "child: KeyboardInterrupt" in out  # the command's group got SIGINT, was waited for
    assert local.returncode == 143 and err.strip() == "interrupted (SIGTERM): stopped"


def test_the_commands_stages_run_in_a_warm_stage_runner_that_stops_afterwards(tmp_path):
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # no server started
    show = "import os; print(os.environ['FLOWS_STAGE_RUNNER'])"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.local_server",
            "--",
            "sh",
            "-c",
            f'{sys.executable} -c "{show}" && {sys.executable} -m flows report --help',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    socket_path, usage = done.stdout.split("\n", 1)
    assert usage.startswith("usage: report.py")
    assert "in this process" not in done.stderr  # the runner answered, and took it
    assert not os.path.exists(socket_path)  # stopped, its temporary folder removed
