"""Interruptions: Ctrl-C, SIGTERM or SIGKILL of a run stops every process the run started.

First the parts (flows.process) on a command whose child is a `sleep`; then real `make run`,
DVC, Prefect servers and training on a tiny copy of the repository (as
tests/test_dvc_pipeline.py makes it), with enough epochs that the training is still running
when the signal comes. Every process of a run is recorded while it runs (walking the
descendants of the top process), so that the ones the kernel re-parents to PID 1 are still
checked afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil  # a dependency of DVC
import pytest
import yaml
from test_dvc_pipeline import REPO, tiny_params

from flows import process as flows_process

BIN = Path(sys.executable).parent
EXPERIMENT = "digits_P50"
EPOCHS = 300  # far longer than the test waits (10-60 epochs/s): still running when the signal comes
STOPPED_WITHIN = 20  # seconds for every process of a run to be gone after the signal
CHECKPOINT = Path("models") / EXPERIMENT / "checkpoints" / "last.pt"
TRAINING = re.compile(r"-m flows[. ]train\b")


def run_env(prefect_home: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(prefect_home),
    }
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MAKEFLAGS", "MFLAGS"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny copy of the repository whose data `dvc repro` has prepared, beside a Prefect
    home whose database is created (each test copies both: a fresh database costs ~10 s)."""
    root = tmp_path_factory.mktemp("interrupts")
    copy = root / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if name != "dvc.lock" and (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    params = tiny_params()
    params["experiments"][EXPERIMENT]["training"].update(
        {"epochs": EPOCHS, "checkpoint_every": 1, "media_every": EPOCHS}
    )
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        subprocess.run(["git", *command], cwd=copy, check=True)
    result = subprocess.run(
        [sys.executable, "-m", "flows.local_server", "--", "dvc", "repro", f"variant@{EXPERIMENT}"],
        cwd=copy,
        env=run_env(root / "prefect"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


@pytest.fixture
def repo(prepared, tmp_path) -> Path:
    shutil.copytree(prepared / "repo", tmp_path / "repo", symlinks=True)
    shutil.copytree(prepared / "prefect", tmp_path / "prefect")
    return tmp_path / "repo"


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Run:
    """A command started in its own session, and every process seen below it."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], log: Path):
        self.log = log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.top = psutil.Process(self.popen.pid)
        self.seen: dict[int, tuple[psutil.Process, str]] = {}

    def snapshot(self) -> None:
        try:
            processes = [self.top, *self.top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in processes:
            if process.pid not in self.seen:
                try:
                    self.seen[process.pid] = (process, " ".join(process.cmdline()))
                except psutil.Error:
                    pass

    def commands(self) -> list[str]:
        return [command for process, command in self.seen.values() if _alive(process)]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, condition, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.snapshot()
            if condition():
                return
            if self.popen.poll() is not None:
                pytest.fail(
                    f"the run ended (exit {self.popen.returncode}) before {what}:\n"
                    + self.output()[-4000:]
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout} s:\n" + self.output()[-4000:])
            time.sleep(0.2)

    def wait_until_training(self, repo: Path, timeout: float = 150) -> None:
        """Until a training runs (`python -m flows.train`, or `python -m flows train`, whose
        stage `make run`'s stage runner forks) and has written its first checkpoint."""
        self.wait_for(
            "training",
            lambda: (
                any(TRAINING.search(c) for c in self.commands()) and (repo / CHECKPOINT).is_file()
            ),
            timeout,
        )

    def survivors(self, timeout: float = STOPPED_WITHIN) -> list[str]:
        """The processes of the run still alive after up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is None:
                self.snapshot()  # what a stopping process starts counts too
            alive = [(p, c) for p, c in self.seen.values() if _alive(p)]
            if not alive or time.monotonic() > deadline:
                return [f"{p.pid} (parent {_parent(p)}): {c}" for p, c in alive]
            time.sleep(0.2)

    def kill_all(self) -> None:
        """Leave nothing behind, whatever the test found."""
        self.snapshot()
        for process, _ in self.seen.values():
            try:
                process.kill()
            except psutil.Error:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _parent(process: psutil.Process) -> int | None:
    try:
        return process.ppid()
    except psutil.Error:
        return None


def _answers(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _server_url(output: str) -> str:
    found = re.search(r"Prefect server on (http://127\.0\.0\.1:\d+/api)", output)
    assert found, output[-3000:]
    return found[1]


# A command under run_command whose child (a sleep, started by start_child) would outlive it.
COMMAND = """
import sys, time
from flows.process import run_command, start_child, stop_group, wait_child
def main():
    child = start_child(["sleep", "300"])
    try:
        print(child.pid, flush=True)  # in the try: a signal from now on goes through finally
        return wait_child(child)
    finally:
        if sys.argv[1] != "leave":
            time.sleep(1 if sys.argv[1] == "slow" else 0)  # a clean-up that takes a while
            stop_group(child, timeout=5)
            print("stopped", flush=True)
run_command(main)
"""


def _command(mode: str) -> tuple[subprocess.Popen, psutil.Process]:
    command = subprocess.Popen(
        [sys.executable, "-c", COMMAND, mode],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return command, psutil.Process(int(command.stdout.readline()))


def _gone(process: psutil.Process, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(process)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_command_through_its_finally_blocks_with_one_line(sig):
    command, child = _command("stop")
    command.send_signal(sig)
    out, err = command.communicate(timeout=30)
    assert command.returncode == 128 + sig
    assert out.strip() == "stopped" and _gone(child)
    assert err.strip() == f"interrupted ({signal.Signals(sig).name}): stopped"


def test_a_second_signal_does_not_cut_the_clean_up_short():
    command, child = _command("slow")
    command.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    command.send_signal(signal.SIGTERM)  # as make forwards its own SIGTERM
    out, err = command.communicate(timeout=30)
    assert command.returncode == 143 and out.strip() == "stopped" and _gone(child)
    assert err.splitlines() == ["SIGTERM again: still stopping", "interrupted (SIGTERM): stopped"]


def test_a_child_dies_with_its_parent_even_on_sigkill():
    command, child = _command("leave")
    assert os.getpgid(child.pid) == child.pid  # its own process group, for stop_group
    command.kill()
    command.wait(timeout=10)
    assert _gone(child)


# A command whose main returns 0 and whose exit hook gets a signal, as Prefect's queue drain
# in threading's exit hooks does when Ctrl-C comes as a stage finishes.
SIGNAL_WHILE_EXITING = """
import os, signal, threading, time
from flows.process import run_command
def drain():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    print("drained", flush=True)
def main():
    threading._register_atexit(drain)
    return 0
run_command(main)
"""


def test_a_signal_while_python_exits_still_makes_the_status_interrupted():
    """Else DVC, which ignores SIGINT while a stage runs, records the stage and starts the
    next one."""
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_WHILE_EXITING],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 130, done.stderr
    assert done.stdout == "drained\n"  # the exit hook was not cut short
    assert done.stderr == "interrupted (SIGINT): stopped\n"  # and printed no traceback


# Steps whose finalizer gets a signal: the KeyboardInterrupt raised inside __del__ is only
# printed by Python ("Exception ignored in"), and main goes on.
INTERRUPT_LOST_IN_A_FINALIZER = """
import os, signal, sys, time
from flows.process import raise_if_stopped, run_command
class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
def main():
    steps = 0
    try:
        for _ in range(40):
            Finalized()
            if sys.argv[1] == "check":
                raise_if_stopped()
            steps += 1
            time.sleep(0.01)
    finally:
        print(steps, flush=True)
run_command(main)
"""


@pytest.mark.parametrize("mode, steps", [("check", 0), ("no-check", 40)])
def test_an_interrupt_python_lost_stops_the_next_step_that_checks(mode, steps):
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_LOST_IN_A_FINALIZER, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Exception ignored in" in done.stderr  # the interrupt was lost
    assert int(done.stdout) == steps
    assert done.returncode == 130
    assert done.stderr.endswith("interrupted (SIGINT): stopped\n")


def _clean_up_after_an_interrupt() -> list[str]:
    done = []
    try:
        try:
            raise KeyboardInterrupt
        finally:
            flows_process.raise_if_stopped()  # the interrupt is on its way up: no second one
            done.append("cleaned up")
    except KeyboardInterrupt:
        pass
    return done


def _retry_after_an_error() -> None:
    try:
        raise ConnectionError
    except ConnectionError:  # a retry's except clause is no clean-up of the interrupt
        flows_process.raise_if_stopped()


def test_the_check_lets_the_clean_up_after_the_interrupt_run(monkeypatch):
    signals = flows_process._Signals()
    signals.received.append(signal.SIGINT)
    monkeypatch.setattr(flows_process, "_signals", signals)
    assert _clean_up_after_an_interrupt() == ["cleaned up"]
    with pytest.raises(KeyboardInterrupt):
        _retry_after_an_error()


def make_run(repo: Path, tmp_path: Path) -> Run:
    # VENV is this interpreter's environment; -o: never remake its .installed (no install).
    return Run(
        ["make", "run", f"VENV={sys.prefix}", "-o", f"{sys.prefix}/.installed"],
        cwd=repo,
        env=run_env(tmp_path / "prefect"),
        log=tmp_path / "make.log",
    )


def test_ctrl_c_on_make_run_stops_every_process_and_leaves_no_stale_lock(repo, tmp_path):
    run = make_run(repo, tmp_path)
    try:
        run.wait_until_training(repo)
        api_url = _server_url(run.output())
        assert _answers(api_url)
        commands = run.commands()
        assert any("prefect server start" in c for c in commands), commands
        assert any("dvc repro" in c for c in commands), commands

        os.killpg(run.popen.pid, signal.SIGINT)  # Ctrl-C: the terminal's process group
        stopped = time.monotonic()
        survivors = run.survivors()
        assert not survivors, "\n".join(survivors) + "\n" + run.output()[-3000:]
        assert time.monotonic() - stopped < STOPPED_WITHIN
        assert run.popen.wait(timeout=10) != 0
        assert not _answers(api_url)
        output = run.output()
        assert "interrupted (SIGINT): stopped" in output, output[-3000:]
        assert "## Every experiment" not in output  # make stopped at the interrupted line
    finally:
        run.kill_all()

    # No stale DVC lock: the interrupted stage runs again (resuming its checkpoint).
    again = subprocess.run(
        [sys.executable, "-m", "flows.local_server", "--", "dvc", "repro", f"train@{EXPERIMENT}"],
        cwd=repo,
        env=run_env(tmp_path / "prefect"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"Running stage 'train@{EXPERIMENT}'" in again.stdout
    assert (repo / "models" / EXPERIMENT / "generator.pt").is_file()


def test_sigkill_of_make_mid_training_leaves_no_process(repo, tmp_path):
    run = make_run(repo, tmp_path)
    try:
        run.wait_until_training(repo)
        api_url = _server_url(run.output())
        run.top.kill()  # what a CI timeout ends with; flows.local_server gets SIGTERM from it
        survivors = run.survivors()
        assert not survivors, "\n".join(survivors) + "\n" + run.output()[-3000:]
        assert not _answers(api_url)
    finally:
        run.kill_all()


def test_sigkill_of_a_training_without_a_prefect_server_leaves_no_server(repo, tmp_path):
    """Prefect's own temporary server (a plain child, stopped only at a normal exit) would
    survive this; the one flows.process starts for the training dies with it."""
    run = Run(
        [sys.executable, "-m", "flows.train", EXPERIMENT],
        cwd=repo,
        env=run_env(tmp_path / "prefect"),
        log=tmp_path / "train.log",
    )
    try:
        run.wait_until_training(repo)
        commands = run.commands()
        assert any("prefect" in c and ("server" in c or "uvicorn" in c) for c in commands), commands
        run.top.kill()
        survivors = run.survivors()
        assert not survivors, "\n".join(survivors) + "\n" + run.output()[-3000:]
    finally:
        run.kill_all()
