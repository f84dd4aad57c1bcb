"""The whole pipeline as one Prefect flow: `dvc repro` in the repository.

    python -m flows.pipeline [TARGET ...]

DVC decides what runs: unchanged stages are skipped, new or changed data and settings rerun
what depends on them. Each stage is itself a flow (prepare, train, evaluate), so with a
Prefect server they all appear beside this one. This is the flow that `flows.serve` serves
on a schedule.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL

from flows.process import (
    die_with_parent,
    prefect_server_for_this_process,
    run_command,
    run_in_own_group,
)

STOP_SECONDS = 20  # below the 30 s a Prefect runner waits after SIGTERM before SIGKILL


def run_dvc(command: list[str], cwd: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `command` in its own process group, which dies with this process; return its exit
    status and its output (stdout and stderr together). On any interruption (Ctrl-C, SIGTERM,
    which Prefect raises as TerminationSignal, a cancelled flow run) SIGINT goes to the whole
    group (DVC releases its lock, the stage gets KeyboardInterrupt), SIGKILL after
    STOP_SECONDS, then the interruption goes on."""
    # A file, not a pipe: nothing blocks on a full pipe while the group is being stopped.
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as output:
        code = run_in_own_group(
            command,
            stop_seconds=STOP_SECONDS,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        output.seek(0)
        return code, output.read()


def _run_name() -> str:
    """`dvc repro` and its targets (all stages when none): what the run does."""
    targets = flow_run.parameters.get("targets") or []
    return " ".join(["dvc repro", *targets])


@flow(name="pipeline", flow_run_name=_run_name)
def pipeline(targets: list[str] | None = None, repo: str = ".") -> dict[str, list[str]]:
    """Run `dvc repro [targets]` in `repo`; return the stages that ran and that were skipped."""
    logger = get_run_logger()
    if multiprocessing.parent_process() is not None:
        # A flow-run process that Prefect's runner (`flows.serve`) started: should the runner
        # be killed, SIGTERM here, and `dvc repro` is stopped instead of running on alone.
        die_with_parent()
    command = [sys.executable, "-m", "dvc", "repro", *(targets or [])]
    logger.info("running %s in %s", " ".join(command[2:]), Path(repo).resolve())
    # The stages' flows report to the same Prefect server as this one, if there is one.
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    returncode, output = run_dvc(command, cwd=repo, env=env)
    ran = re.findall(r"Running stage '([^']+)'", output)
    skipped = re.findall(r"Stage '([^']+)' didn't change, skipping", output)
    if returncode:
        raise RuntimeError(f"dvc repro failed (exit {returncode}):\n{output[-4000:]}")
    stages = "".join(f"| {s} | ran |\n" for s in ran) + "".join(
        f"| {s} | unchanged |\n" for s in skipped
    )
    create_markdown_artifact(
        key="pipeline-run",
        markdown=f"# dvc repro\n\n| stage | |\n|---|---|\n{stages}",
        description="Stages run and skipped by the scheduled pipeline",
    )
    logger.info("%d stages ran, %d unchanged", len(ran), len(skipped))
    return {"ran": ran, "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    targets = list(sys.argv[1:] if argv is None else argv)
    with prefect_server_for_this_process():
        pipeline(targets or None)
    return 0


if __name__ == "__main__":
    run_command(main)
