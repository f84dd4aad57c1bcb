"""Serve the pipeline as a Prefect deployment that retrains on a schedule.

    make prefect-ui                                   # in one terminal (schedules need it)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                             # in another; stop with Ctrl-C / SIGTERM
    prefect deployment run 'pipeline/retrain'         # a run now, besides the schedule

The cron schedule, its time zone and the `dvc repro` targets come from params.yaml
(`schedule:`). Each run is `dvc repro` in this repository: unchanged stages are skipped; new
or changed data (e.g. files added under data/raw and `dvc add`-ed) retrains what depends on it.
`make prefect-ui` is the Prefect server on the pipeline's own state (.prefect/, see
flows/prefect_home.py), where the deployment, its runs and those of `make run` are kept.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from prefect.schedules import Cron

from flows.config import ConfigError, load_params, schedule_config
from flows.pipeline import pipeline
from flows.process import run_command

DEPLOYMENT = "retrain"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repo", default=".", help="the repository to run dvc repro in")
    args = parser.parse_args(argv)
    try:
        cfg = schedule_config(load_params(Path(args.params)), Path(args.params))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "error: a schedule needs a Prefect server: start `make prefect-ui` (the "
            "pipeline's Prefect server and UI) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api",
            file=sys.stderr,
        )
        return 2
    # Ctrl-C as SIGTERM, which the runner handles: it cancels the flow runs in progress (each
    # stops its `dvc repro` group) and exits. On KeyboardInterrupt it would wait for them.
    signal.signal(signal.SIGINT, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))
    pipeline.serve(
        name=DEPLOYMENT,
        schedule=Cron(cfg.cron, timezone=cfg.timezone),
        parameters={"targets": cfg.targets, "repo": str(Path(args.repo).resolve())},
        description="dvc repro of the ABP pipeline on a schedule",
    )
    return 0


if __name__ == "__main__":
    run_command(main)
