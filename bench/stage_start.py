"""How long a pipeline stage takes as a fresh process and as a child of the warm stage runner
(flows/runner.py), the two ways `python -m flows <stage>` can run it.

    python -m bench.stage_start             # prepare digits, into a temporary folder
    python -m bench.stage_start --repeats 5

Run from the repository root (the stage reads params.yaml there). One Prefect server for
both, as `make run` has; the runner is started once and waited for, as `make run`'s first
stage waits for it. The table gives each way's seconds for the whole command (median of the
repeats, alternated so a drift in the machine's speed touches both alike) and their ratio.
Needs the pipeline's environment.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flows.process import prefect_server, start_child, stop_group
from flows.stage import RUNNER_ENV


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0 or "in this process" in done.stderr:
        raise SystemExit(f"{' '.join(command)} failed or ran cold:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def wait_for_socket(path: str, runner: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if runner.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the stage runner did not start")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stage", default="prepare digits")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder, prefect_server() as api_url:
        env = {**os.environ, "PREFECT_API_URL": api_url}
        env.pop(RUNNER_ENV, None)
        stage, *stage_args = args.stage.split()
        out = ["--prepared-root", str(Path(folder) / "prepared")] if stage == "prepare" else []
        path = str(Path(folder) / "runner.sock")
        runner = start_child([sys.executable, "-m", "flows.runner", path], env=env)
        try:
            wait_for_socket(path, runner)
            warm_env = {**env, RUNNER_ENV: path}
            warm_command = [sys.executable, "-m", "flows", stage, *stage_args, *out]
            cold_command = [sys.executable, "-m", f"flows.{stage}", *stage_args, *out]
            timed(warm_command, warm_env)  # the first waits for the runner's imports
            cold, warm = [], []
            for _ in range(args.repeats):
                cold.append(timed(cold_command, env))
                warm.append(timed(warm_command, warm_env))
        finally:
            stop_group(runner)
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"{'stage':24} {'fresh s':>8} {'runner s':>9} {'ratio':>6}")
    print(f"{args.stage:24} {c:8.2f} {w:9.2f} {w / c:5.2f}×")


if __name__ == "__main__":
    main()
