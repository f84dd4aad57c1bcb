"""Run a command with a local Prefect server on 127.0.0.1, then stop the server.

    python -m flows.local_server -- dvc repro

Without PREFECT_API_URL every flow process starts (and stops) its own temporary Prefect
server, which costs about 5 s per DVC stage. One server for the whole `dvc repro` saves that,
and every flow run reports to it. If PREFECT_API_URL is already set, that server is used and
none is started. The flows skip Prefect's flow-run heartbeats against the server started
here (flows.process.without_heartbeats: nothing watches them, and each costs its flow up to
a second at the end); against a server of yours they stay on. The server's database is the
pipeline's (.prefect/prefect.db at the repository root, see flows/prefect_home.py), which
`make prefect-ui` shows afterwards.

Beside it runs a warm stage runner (flows/runner.py), announced in FLOWS_STAGE_RUNNER: the
stages' `python -m flows <stage>` (flows/stage.py) run as its forked children instead of
fresh interpreters, which saves ~7 s of imports a stage.

Stopping: the command runs in its own process group and the server in its own session, both
dying with this process (parent-death signal). On Ctrl-C or SIGTERM (or when our parent
dies) SIGINT goes to the command's group, which is waited for up to STOP_SECONDS (DVC then
releases its lock, the stage running gets KeyboardInterrupt) and killed if still there;
only then are the runner and the server stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from flows.process import (
    OWN_SERVER_ENV,
    prefect_server,
    run_command,
    run_in_own_group,
    start_child,
    stop_group,
)
from flows.stage import RUNNER_ENV

STOP_SECONDS = 20

# One implementation of "a Prefect server for a while", shared with flows.process.
local_prefect_server = prefect_server


def run_in_group(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run `argv` in its own process group, which dies with us; return its exit status
    (128 + N when signal N ended it). Interrupted, the whole group gets SIGINT, then SIGKILL
    after STOP_SECONDS."""
    code = run_in_own_group(argv, stop_seconds=STOP_SECONDS, env=env)
    return 128 - code if code < 0 else code


@contextmanager
def stage_runner(env: dict[str, str]) -> Iterator[str]:
    """A warm stage runner (flows/runner.py) with `env`, in its own session, dying with us;
    yield its socket's path (for RUNNER_ENV); stop it on exit. It answers once it has
    imported the stages' modules: a stage that asks sooner waits rather than importing."""
    with tempfile.TemporaryDirectory(prefix="flows-runner-") as folder:
        path = os.path.join(folder, "socket")
        runner = start_child(
            [sys.executable, "-m", "flows.runner", path], env=env, stdin=subprocess.DEVNULL
        )
        try:
            yield path
        finally:
            stop_group(runner, timeout=STOP_SECONDS, sig=signal.SIGTERM)


def run_with_stage_runner(argv: list[str], env: dict[str, str]) -> int:
    """`argv` with a stage runner beside it, announced to it (and so to DVC's stages) in
    RUNNER_ENV."""
    env = {key: value for key, value in env.items() if key != RUNNER_ENV}
    with stage_runner(env) as path:
        return run_in_group(argv, env={**env, RUNNER_ENV: path})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m flows.local_server -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if os.environ.get("PREFECT_API_URL"):
        return run_with_stage_runner(argv, dict(os.environ))
    with local_prefect_server() as api_url:
        print(f"Prefect server on {api_url} for: {' '.join(argv)}", flush=True)
        own = {"PREFECT_API_URL": api_url, OWN_SERVER_ENV: api_url}
        return run_with_stage_runner(argv, {**os.environ, **own})


if __name__ == "__main__":
    run_command(main)
