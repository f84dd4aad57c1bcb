"""Training on several processes: the train flow starts torchrun, torchrun starts the ranks.

    training: {epochs: 40, nproc_per_node: 2}                # one machine, 2 processes
    training: {epochs: 40, nproc_per_node: 8, nnodes: 2, rdzv_endpoint: gpu1:29400}

`python -m flows.train <exp>` (the DVC stage) checks the settings, takes the experiment's
lock and, as the Prefect flow run `train <exp>`, starts

    python -m torch.distributed.run --nproc_per_node=N ... -m flows.train <exp> --as-rank

in its own process group, ended with the flow (Ctrl-C, SIGTERM, a killed parent). Every rank
joins the process group (abp.distributed: NCCL on CUDA, gloo on the CPU); rank 0 records to
MLflow and writes models/<exp>/, and the flow reports what rank 0 wrote. With nnodes > 1 the
same command runs on every machine (README, "Scaling out"): this one starts its own.

`torchrun --nproc_per_node=N -m flows.train <exp>` by hand works too: rank 0 then is the
Prefect flow run and holds the lock.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from flows.config import TrainingSettings
from flows.process import run_in_own_group

# How long the ranks get to stop cleanly (rank 0 ends its MLflow run) before SIGKILL.
STOP_SECONDS = 20
# The environment variable that gives the ranks the launch's token (see run_ranks).
LAUNCH_TOKEN = "ABP_LAUNCH_TOKEN"


class RanksFailed(RuntimeError):
    """torchrun ended with a failure; the ranks' own errors are in the log above."""


def torchrun_command(
    training: TrainingSettings, experiment: str, params: str, prepared_root: str, models_root: str
) -> list[str]:
    """The torchrun command that runs this machine's ranks of the experiment's training."""
    command = [sys.executable, "-m", "torch.distributed.run"]
    command += [f"--nproc_per_node={training.nproc_per_node}", f"--nnodes={training.nnodes}"]
    if training.nnodes == 1:
        command.append("--standalone")  # a rendezvous on a free local port
    else:
        command += [
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={training.rdzv_endpoint}",
            f"--rdzv_id=abp-{experiment}",
        ]
    return [
        *command,
        "-m",
        "flows.train",
        experiment,
        "--as-rank",
        "--params",
        params,
        "--prepared-root",
        prepared_root,
        "--models-root",
        models_root,
    ]


def run_ranks(
    command: list[str], summary_file: Path, *, flow_run_id: str | None, one_machine: bool
) -> dict[str, Any]:
    """Run torchrun in its own process group and wait; return the summary rank 0 wrote.
    Interrupted, the ranks get SIGINT (a clean stop), then SIGKILL after STOP_SECONDS.

    The ranks learn this launch's token and the flow run they belong to (rank 0 tags its
    MLflow run with it) from the environment; on one machine the summary must carry the
    token, so that one left by an earlier run is never taken for this one's. (On several
    machines rank 0 may be on another one, started without the token.)"""
    token = uuid.uuid4().hex
    env = {**os.environ, LAUNCH_TOKEN: token}
    if flow_run_id is not None:
        env["PREFECT__FLOW_RUN_ID"] = flow_run_id  # what prefect.runtime reads outside a flow
    # torchrun's agent makes a log folder (torchelastic_*) in the temporary directory at
    # every launch and never removes it: give it one that ends with the launch.
    with tempfile.TemporaryDirectory(prefix="abp-torchrun-") as logs:
        at = command.index("torch.distributed.run") + 1
        launch = [*command[:at], f"--log-dir={logs}", *command[at:]]
        code = run_in_own_group(launch, stop_seconds=STOP_SECONDS, env=env)
    if code != 0:
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        raise RanksFailed(f"the training processes failed (torchrun ended with {how})")
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    if not summary or (one_machine and summary.get("launch") != token):
        raise RanksFailed(f"the training processes ended without writing {summary_file}")
    return summary
