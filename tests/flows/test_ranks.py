"""Training on two processes through the pipeline: the train flow starts torchrun (gloo on
the CPU), rank 0 records one MLflow run, and Ctrl-C stops every rank; two "machines" (two
torchruns meeting at a c10d rendezvous, here on one host) each record their system metrics.

A tiny copy of the repository (as tests/test_dvc_pipeline.py makes it) whose experiment asks
for `training.nproc_per_node: 2`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow_server import free_port
from test_dvc_pipeline import REPO, dvc, git, ran, tiny_params

from flows.experiment import load_experiment
from flows.ranks import torchrun_command

pytestmark = pytest.mark.slow
EXPERIMENT = "digits_P50"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The copy, with its data prepared (each test copies it)."""
    copy = tmp_path_factory.mktemp("ranks") / "repo"
    for name in git(REPO, "ls-files", "--cached", "--others", "--exclude-standard").split():
        if name != "dvc.lock" and not name.startswith("metrics/") and (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    params = tiny_params()
    params["experiments"][EXPERIMENT]["training"].update(nproc_per_node=2, epochs=3)
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(copy, "init", "-q")
    git(copy, "add", "-A")
    git(copy, "commit", "-qm", "copy")
    assert ran(dvc(copy, "repro", f"variant@{EXPERIMENT}"))
    return copy


@pytest.fixture
def repo(prepared, tmp_path) -> Path:
    shutil.copytree(prepared, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


def torchelastic_folders() -> set[Path]:
    """The log folders torchrun's agent makes by default (and never removes)."""
    return set(Path(tempfile.gettempdir()).glob("torchelastic_*"))


def test_dvc_repro_trains_on_two_processes_into_one_mlflow_run(repo):
    before = torchelastic_folders()
    result = dvc(repo, "repro", f"train@{EXPERIMENT}")
    assert torchelastic_folders() <= before  # the launch left no folder behind
    assert ran(result) == [f"Running stage 'train@{EXPERIMENT}':"]
    log = result.stdout + result.stderr
    assert f"training {EXPERIMENT} on 2 processes" in log and "(rank 0 of 2)" in log

    checkpoint = torch.load(
        repo / "models" / EXPERIMENT / "checkpoints" / "last.pt", weights_only=True
    )
    assert checkpoint["world_size"] == 2 and len(checkpoint["rank_rng_states"]) == 2
    summary = json.loads((repo / "models" / EXPERIMENT / "mlflow_run.json").read_text())
    assert summary["processes"] == 2 and summary["epochs"] == 3

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]  # one run, rank 0's
    assert runs[0].info.status == "FINISHED"
    energy = client.get_metric_history(summary["mlflow_run_id"], "energy")
    assert [m.step for m in energy] == [1, 2, 3]


def test_ctrl_c_stops_the_flow_torchrun_and_every_rank(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["experiments"][EXPERIMENT]["training"].update(epochs=2000)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "flows.train", EXPERIMENT],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    checkpoint = repo / "models" / EXPERIMENT / "checkpoints" / "last.pt"
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 180
    while not (checkpoint.is_file() and len([p for p in seen.values() if _rank(p)]) == 2):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        for process in psutil.Process(launcher.pid).children(recursive=True):
            seen.setdefault(process.pid, process)
        time.sleep(0.2)

    os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C at the terminal: the whole group
    output, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, output[-3000:]
    assert "interrupted (SIGINT): stopped" in output
    time.sleep(1)
    alive = [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]  # rank 0 ended its run


def test_two_machines_train_as_one_world_and_each_records_its_system_metrics(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["experiments"][EXPERIMENT]["training"].update(
        nproc_per_node=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}", epochs=40
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    # This machine: the train flow, which starts its torchrun; the other machine: the same
    # torchrun command, started by hand (README "Scaling out"), on the same shared folder.
    training = load_experiment(
        EXPERIMENT, repo / "params.yaml", repo / "data" / "prepared"
    ).cfg.training
    other = torchrun_command(training, EXPERIMENT, "params.yaml", "data/prepared", "models")
    machines = [
        subprocess.Popen(
            command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for command in ([sys.executable, "-m", "flows.train", EXPERIMENT], other)
    ]
    outputs = [machine.communicate(timeout=300)[0] for machine in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    summary = json.loads((repo / "models" / EXPERIMENT / "mlflow_run.json").read_text())
    assert summary["processes"] == 2 and summary["epochs"] == 40
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]  # one run, rank 0's
    system = {key for key in runs[0].data.metrics if key.startswith("system/")}
    assert "system/cpu_utilization_percentage" not in system  # names carry the machine
    for node in (0, 1):
        history = client.get_metric_history(
            summary["mlflow_run_id"], f"system/node_{node}/cpu_utilization_percentage"
        )
        steps = [m.step for m in sorted(history, key=lambda m: m.step)]
        assert len(steps) >= 2 and steps == list(range(len(steps))), (node, steps)


def _rank(process: psutil.Process) -> bool:
    try:
        return "--as-rank" in process.cmdline() and "torch.distributed.run" not in " ".join(
            process.cmdline()
        )
    except psutil.Error:
        return False
