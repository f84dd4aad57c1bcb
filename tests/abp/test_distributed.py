"""Training on two processes (torchrun, gloo on the CPU) computes what one process does.

Each test runs tests/abp/ddp_worker.py under `torchrun --standalone`, or alone as a world of
one for the reference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

# Real torchrun processes: `make test-fast` leaves these out.
pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("ddp_worker.py")
REPO = Path(__file__).resolve().parents[2]


def launch(out: Path, nproc: int, **settings) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    args = json.dumps({"out": str(out), **settings})
    if nproc == 1:
        command = [sys.executable, str(WORKER), args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            f"--log-dir={out / 'torchrun'}",  # else a torchelastic_* folder left in /tmp
            str(WORKER),
            args,
        ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def train(out: Path, nproc: int, **settings) -> dict:
    process = launch(out, nproc, **settings)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    final = torch.load(out / "final.pt", weights_only=True)
    return {**final, "checks": json.loads((out / "checks.json").read_text()), "log": stderr}


def assert_same_training(a: dict, b: dict, tolerance: float) -> None:
    torch.testing.assert_close(a["bank"], b["bank"], atol=tolerance, rtol=0)
    for name, weight in a["generator"].items():
        torch.testing.assert_close(weight, b["generator"][name], atol=tolerance, rtol=0)


@pytest.mark.parametrize(
    "shape",
    [
        {"n": 48, "batch_size": 8},
        # Batches that do not share out evenly: 37 = 2 × 16 + 5, learning batches of 8
        # within inference batches of 16, and a last batch of 5 (3 + 2 over the ranks).
        {"n": 37, "batch_size": 8, "inference_batch_size": 16},
    ],
)
def test_two_ranks_without_noise_train_as_one_process(tmp_path, shape):
    settings = {**shape, "noise": False, "epochs": 4}
    one = train(tmp_path / "one", 1, **settings)
    two = train(tmp_path / "two", 2, **settings)
    assert_same_training(one, two, tolerance=1e-5)


def test_with_noise_every_latent_moves_once_an_epoch_and_the_replicas_agree(tmp_path):
    two = train(tmp_path, 2, n=37, batch_size=8, noise=True, epochs=3)
    checks = two["checks"]
    assert [c["epoch"] for c in checks] == [1, 2, 3]
    assert all(c["each_example_once"] and c["replicas_equal"] for c in checks), checks


def _checkpoint_epoch(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def test_a_killed_rank_then_a_rerun_ends_as_an_uninterrupted_run(tmp_path):
    settings = {"n": 37, "batch_size": 8, "noise": True, "epochs": 8}
    straight = train(tmp_path / "straight", 2, **settings)

    run = tmp_path / "killed"
    launcher = launch(run, 2, **settings, epoch_pause=0.4)
    deadline = time.monotonic() + 120
    while _checkpoint_epoch(run / "last.pt") < 3:
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.05)
    ranks = [
        p
        for p in psutil.Process(launcher.pid).children(recursive=True)
        if "ddp_worker.py" in " ".join(p.cmdline())
    ]
    assert len(ranks) == 2
    ranks[-1].send_signal(signal.SIGKILL)
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0  # torchrun ends the other rank and fails
    assert not (run / "final.pt").exists()
    stopped_at = _checkpoint_epoch(run / "last.pt")
    assert 3 <= stopped_at < 8

    resumed = train(run, 2, **settings)
    assert_same_training(straight, resumed, tolerance=0)

    # The same checkpoint resumes on one process too: not exactly (the noise streams are
    # per rank), and the log says so.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "last.pt").write_bytes((tmp_path / "straight" / "last.pt").read_bytes())
    finished = train(alone, 1, **{**settings, "epochs": 10})
    assert "resuming a checkpoint of 2 process(es) on 1" in finished["log"]
    assert [c["epoch"] for c in finished["checks"]] == [9, 10]
    assert torch.isfinite(finished["bank"]).all()
