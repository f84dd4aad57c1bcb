"""`python -m flows <stage>` and the warm stage runner (flows/stage.py, flows/runner.py): a
stage forked from a real runner is the stage a fresh process would be (arguments, directory,
environment, streams, exit status, signals), dies with its client, and is refused, then run
in the client itself, when it could differ from a fresh process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.runner import _changed, project_files
from flows.stage import RUNNER_ENV

# Real runners (each imports torch, Prefect and MLflow once): `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# A stage as flows/<stage>.py are: main under run_command. "sleep" waits to be stopped.
PROBE = """
import os, sys, time
from flows.process import run_command

def main():
    print("argv", sys.argv[1:], flush=True)
    print("env", os.environ.get("DVC_STAGE"), os.getcwd(), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    ids = ("ids", os.getpid(), os.getpgid(0), os.getppid())
    if sys.argv[1] in ("sleep", "stubborn"):
        try:
            print(*ids, flush=True)  # once a test has read this, a signal finds the try
            time.sleep(60)
        finally:
            print("cleaned up", flush=True)
            if sys.argv[1] == "stubborn":  # a clean-up that hangs: only SIGKILL ends it
                time.sleep(60)
    else:
        print(*ids, flush=True)
    return int(sys.argv[2])

if __name__ == "__main__":
    run_command(main)
"""

# The client's part of `python -m flows <stage>`, for any module: status, or why not (99).
CLIENT = """
import sys
from flows.stage import run_in_runner
outcome = run_in_runner(sys.argv[1], sys.argv[2], sys.argv[3:])
if isinstance(outcome, str):
    print("refused:", outcome, file=sys.stderr)
sys.exit(99 if isinstance(outcome, str) else outcome)
"""


def start_runner(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    path = str(folder / "runner.sock")
    runner = subprocess.Popen(
        [sys.executable, "-m", "flows.runner", path], cwd=folder, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert runner.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return runner, path


def probe_runner(folder: Path) -> tuple[subprocess.Popen, str, Path, dict[str, str]]:
    """A runner in `folder`, beside the probe stage: (process, socket, folder, env)."""
    (folder / "probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != RUNNER_ENV}
    process, path = start_runner(folder, env)
    return process, path, folder, env


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    process, path, folder, env = probe_runner(tmp_path_factory.mktemp("runner"))
    yield process, path, folder, env
    process.terminate()
    process.wait(timeout=30)


def client(runner, *args, env=None, cwd=None, **popen) -> subprocess.Popen:
    _, path, folder, runner_env = runner
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, path, "probe", *args],
        cwd=cwd or folder,
        env=env or runner_env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def ids(line: str) -> tuple[int, int, int]:
    label, *numbers = line.split()
    assert label == "ids", line
    return tuple(int(n) for n in numbers)


def gone(pid: int, within: float = 10) -> bool:
    """Whether `pid` exits within `within` s (an unreaped zombie counts as gone: an orphan's
    new parent may reap it late)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_stage_runs_as_the_runners_child_with_the_clients_arguments_environment_and_streams(
    runner,
):
    process, _, folder, env = runner
    # DVC's per-stage variables may differ from the runner's; they reach the stage.
    run = client(runner, "exit", "3", env={**env, "DVC_STAGE": "train@digits"})
    out, err = run.communicate(timeout=60)
    assert run.returncode == 3, err
    lines = out.splitlines()
    assert lines[0] == "argv ['exit', '3']"
    assert lines[1] == f"env train@digits {folder}"
    pid, group, parent = ids(lines[2])
    assert pid != run.pid and parent == process.pid  # forked by the runner, no interpreter
    assert group == pid  # a group of its own, which the client signals
    assert err == "to stderr\n"


def test_ctrl_c_of_the_client_stops_the_stage_as_a_fresh_one_stops(runner):
    run = client(runner, "sleep", "0")
    assert run.stdout.readline().startswith("argv")
    run.stdout.readline()
    pid = ids(run.stdout.readline())[0]
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=30)
    assert run.returncode == 130
    assert "cleaned up" in out  # KeyboardInterrupt in the stage: its finally ran
    assert err.strip().splitlines()[-1] == "interrupted (SIGINT): stopped"
    assert gone(pid)


def test_a_client_killed_with_sigkill_takes_its_stage_with_it(runner):
    run = client(runner, "sleep", "0")
    for _ in range(2):
        run.stdout.readline()
    pid = ids(run.stdout.readline())[0]
    run.kill()
    run.wait(timeout=10)
    assert gone(pid)  # the runner saw the client go and sent the stage SIGTERM
    assert "cleaned up" in run.stdout.read()
    assert "interrupted (SIGTERM): stopped" in run.stderr.read()


def test_another_environment_or_directory_is_refused_and_nothing_runs(runner, tmp_path):
    _, _, folder, env = runner
    # Read by libraries as they are imported (OpenMP here): the runner's imports are done.
    run = client(runner, "exit", "0", env={**env, "OMP_NUM_THREADS": "1"})
    out, err = run.communicate(timeout=60)
    assert run.returncode == 99 and out == ""
    assert "environment differs from the stage runner's in OMP_NUM_THREADS" in err
    run = client(runner, "exit", "0", cwd=tmp_path)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 99 and out == ""
    assert f"the stage runner runs in {folder}, this command in {tmp_path}" in err


def test_project_code_changed_since_the_runner_imported_it_is_named(tmp_path, monkeypatch):
    package = tmp_path / "pkg_for_runner_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "stagemod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import pkg_for_runner_test.stagemod  # noqa: F401 - what the runner has imported

    try:
        files = project_files(tmp_path)
        assert set(files) == {"pkg_for_runner_test/__init__.py", "pkg_for_runner_test/stagemod.py"}
        assert _changed(files, tmp_path) is None
        (package / "stagemod.py").write_text("X = 22\n")
        assert _changed(files, tmp_path) == "pkg_for_runner_test/stagemod.py"
    finally:
        for name in ("pkg_for_runner_test.stagemod", "pkg_for_runner_test"):
            sys.modules.pop(name, None)


def test_without_a_runner_the_stage_runs_in_the_command_itself(tmp_path):
    env = {**os.environ, RUNNER_ENV: str(tmp_path / "no-runner.sock")}
    done = subprocess.run(
        [sys.executable, "-m", "flows", "report", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: report.py")
    assert "flows: running report in this process: the stage runner at" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "flows", "nope"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2 and "usage: python -m flows {prepare,train," in done.stderr


def test_a_stopped_runner_stops_its_stages_and_removes_its_socket(tmp_path):
    own = probe_runner(tmp_path)
    process, path = own[:2]
    try:
        run = client(own, "sleep", "0")
        for _ in range(2):
            run.stdout.readline()
        pid = ids(run.stdout.readline())[0]
        process.terminate()
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
        assert gone(pid)
        assert not os.path.exists(path)
        run.wait(timeout=30)
        assert run.returncode == 128 + signal.SIGTERM
        assert "cleaned up" in run.stdout.read()
    finally:
        process.kill()  # whatever failed above: no runner left behind
        process.wait(timeout=30)


def test_a_stage_stuck_in_its_clean_up_is_killed_once_its_client_is_gone(runner):
    run = client(runner, "stubborn", "0")
    for _ in range(2):
        run.stdout.readline()
    pid = ids(run.stdout.readline())[0]
    run.send_signal(signal.SIGINT)  # the stage starts cleaning up, and hangs there
    assert run.stdout.readline() == "cleaned up\n"
    run.kill()  # as flows.local_server kills DVC's group STOP_SECONDS after Ctrl-C
    run.wait(timeout=10)
    assert not gone(pid, within=5)  # SIGTERM: ignored by a stage already stopping
    assert gone(pid, within=15)  # SIGKILL, STOP_SECONDS after its client went


def test_ctrl_c_while_the_runner_is_still_importing_reaches_the_stage(tmp_path):
    own = probe_runner(tmp_path)
    process = own[0]
    try:
        run = client(own, "sleep", "0")
        time.sleep(1)  # connected, its request sent; the runner imports for seconds more
        assert process.poll() is None and run.poll() is None
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 130, err
        assert err.strip().splitlines()[-1] == "interrupted (SIGINT): stopped"
        assert "Traceback" not in err
    finally:
        process.kill()
        process.wait(timeout=30)
