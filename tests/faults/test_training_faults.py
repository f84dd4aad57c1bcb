"""Faults during training, each in real processes: kill -9 at random epochs and during a
checkpoint write, divergence (and a diverged model that must not be promoted), a retry
after divergence, two trainings of one experiment and an interrupted one, a damaged
checkpoint, a read-only model folder."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import torch
from mlflow import MlflowClient

from abp.models import ImageGenerator
from abp.train import ABPConfig, ABPTrainer

KILLED_WRITER = (
    "import os, sys\nfrom abp.files import atomic_path\n"
    "with atomic_path(sys.argv[1]) as tmp:\n"
    "    tmp.write_bytes(open(sys.argv[1], 'rb').read()[:1000])\n"
    "    os.kill(os.getpid(), 9)\n"
)


def weights_and_bank(models):
    generator = torch.load(models / "generator.pt", weights_only=True)["state_dict"]
    return generator, torch.load(models / "latent_bank.pt", weights_only=True)


def assert_identical(a, b):
    (weights_a, bank_a), (weights_b, bank_b) = a, b
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    assert torch.equal(bank_a, bank_b)


def client(ws) -> MlflowClient:
    return MlflowClient(tracking_uri=ws.env["MLFLOW_TRACKING_URI"])


def latest_run(ws):
    experiments = [e.experiment_id for e in client(ws).search_experiments()]
    return client(ws).search_runs(experiments, order_by=["attributes.start_time DESC"])[0]


def champion(ws) -> str:
    return str(client(ws).get_model_version_by_alias("abp-tiny", "champion").version)


def partials(folder) -> set:
    return {p for p in folder.iterdir() if ".partial-" in p.name}


def flat(text: str) -> str:
    return " ".join(text.split())  # Prefect's log wraps long lines


def test_kill_9_at_random_epochs_then_rerun_equals_an_uninterrupted_run(workspace):
    """Three SIGKILLs at random moments (seeded), the later ones of resumed runs, and one
    checkpoint write killed midway: the finished training equals one that never stopped,
    bit for bit, and nothing a killed write left behind survives."""
    ws = workspace
    ws.set("training", epochs=16)
    ws.set("abp", langevin_steps=20)  # epochs long enough to be killed in the middle of one
    straight = ws.run("train", "tiny", "--models-root", "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = weights_and_bank(ws.path / "straight" / "tiny")

    rng = random.Random(0)
    killed = []
    for target in sorted(rng.sample(range(2, 14), 3)):
        training = ws.start("train", "tiny")
        deadline = time.monotonic() + 240
        while (ws.checkpoint_epoch() or 0) < target and training.poll() is None:
            assert time.monotonic() < deadline, "training did not reach the epoch"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))  # mid-epoch, or mid-write
        training.kill()
        _, err = training.communicate()
        assert training.returncode == -9, f"the training ended before the kill: {err[-2000:]}"
        if killed:
            resumed = f"resumed from models/tiny/checkpoints/last.pt at epoch {killed[-1]}"
            assert resumed in flat(err)
        killed.append(ws.checkpoint_epoch())
    assert killed == sorted(killed) and killed[-1] < 16, killed

    # And a checkpoint write killed midway: the checkpoint stays whole, the rest goes.
    # (A kill above may itself have landed mid-write and left a partial file: count new ones.)
    before = ws.checkpoint.read_bytes()
    earlier = partials(ws.checkpoint.parent)
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(ws.checkpoint)])
    assert len(partials(ws.checkpoint.parent) - earlier) == 1
    assert ws.checkpoint.read_bytes() == before

    rerun = ws.run("train", "tiny")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"at epoch {killed[-1]}" in flat(rerun.stderr)
    assert_identical(weights_and_bank(ws.models), reference)
    history = json.loads((ws.models / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 17))
    assert not [p for p in ws.models.rglob("*") if ".partial-" in p.name]


def test_divergence_stops_keeps_the_last_good_checkpoint_and_the_champion(workspace):
    ws = workspace
    for command in ("train", "evaluate"):
        done = ws.run(command, "tiny")
        assert done.returncode == 0, done.stderr[-3000:]
    good = weights_and_bank(ws.models)
    assert champion(ws) == "1"

    for generator, abp, culprit in [
        (None, {"step_size": 50.0}, "step_size"),
        (
            {"kind": "linear", "latent_dim": 4},
            {"step_size": 0.1, "optimizer": "sgd", "learning_rate": 10.0},
            "learning_rate",
        ),
    ]:
        if generator:
            ws.set("generator", **generator)
        ws.set("abp", **abp)
        diverged = ws.run("train", "tiny")
        assert diverged.returncode == 1, diverged.stderr[-3000:]
        error = diverged.stderr.strip().splitlines()[-1]
        assert error.startswith("error: training diverged at epoch 1, batch "), error
        assert error.index(culprit) < error.index("then at")
        assert "Traceback" not in diverged.stderr
        # The new run's last good checkpoint is its starting state, finite; the good
        # model's files are untouched; the MLflow run ended FAILED with the reason.
        state = torch.load(ws.checkpoint, weights_only=True)
        assert state["epoch"] == 0
        assert all(torch.isfinite(v).all() for v in state["generator"].values())
        assert_identical(weights_and_bank(ws.models), good)
        run = latest_run(ws)
        assert run.info.status == "FAILED"
        assert run.data.tags["failure_reason"] == error.removeprefix("error: ")
    assert list(ws.checkpoint.parent.glob("previous-*.pt"))  # the good run's, kept
    assert champion(ws) == "1"

    # A diverged model as an unguarded training would have left it: never scored,
    # registered or promoted.
    saved = torch.load(ws.models / "generator.pt", weights_only=True)
    first = next(iter(saved["state_dict"]))
    saved["state_dict"][first] = torch.full_like(saved["state_dict"][first], float("nan"))
    torch.save(saved, ws.models / "generator.pt")
    metrics = ws.path / "metrics" / "experiments" / "tiny.json"
    metrics.unlink()
    ws.reset_experiment()
    done = ws.run("evaluate", "tiny")
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"generator.pt has non-finite weights ({first}" in flat(done.stderr)
    assert "Traceback" not in done.stderr and not metrics.exists()
    assert len(client(ws).search_model_versions("name='abp-tiny'")) == 1
    assert champion(ws) == "1"


def test_a_retry_after_divergence_continues_with_half_the_step_size(workspace):
    ws = workspace
    ws.set("abp", step_size=4.0)  # diverges in epoch 2; at 2.0 it does not
    ws.set("training", epochs=4, divergence_retries=1)
    done = ws.run("train", "tiny")
    assert done.returncode == 0, done.stderr[-3000:]
    log = flat(done.stderr)
    assert "training diverged at epoch 2" in log
    assert "Retry 1 of 1: from the checkpoint at epoch 1 with step_size 2 (was 4" in log
    state = torch.load(ws.checkpoint, weights_only=True)
    assert state["epoch"] == 4 and state["extra"]["retuned"] == {"step_size": 2.0}
    assert state["config"]["step_size"] == 2.0


def test_one_training_per_experiment_and_an_interrupted_one_lets_go(workspace):
    ws = workspace
    ws.set("training", epochs=100000)
    first = ws.start("train", "tiny")
    deadline = time.monotonic() + 120
    while (ws.checkpoint_epoch() or 0) < 1:
        assert time.monotonic() < deadline and first.poll() is None, first.stderr.read()
        time.sleep(0.05)
    second = ws.run("train", "tiny")
    assert second.returncode == 2
    assert f"a training of tiny is already running in PID {first.pid}" in flat(second.stderr)
    assert not list(ws.path.glob("straight"))

    # Ctrl-C on the first: it stops within seconds, lets go of the folder, and its MLflow
    # run ends KILLED; its last checkpoint stays.
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err[-3000:]
    assert (ws.models / ".lock").read_text() == ""
    assert latest_run(ws).info.status == "KILLED"
    assert ws.checkpoint_epoch() >= 1


def test_a_damaged_checkpoint_is_named_and_restart_sets_it_aside(workspace):
    ws = workspace
    # A real checkpoint of this experiment's shape, cut short as a full disk would leave it.
    trainer = ABPTrainer(
        ImageGenerator(latent_dim=4, image_size=16, channels=1, widths=(16, 8)),
        torch.zeros(18, 1, 16, 16),
        ABPConfig(),
        device="cpu",
    )
    whole = trainer.save_checkpoint(ws.checkpoint).read_bytes()
    ws.checkpoint.write_bytes(whole[:500])
    damaged = ws.run("train", "tiny")
    assert damaged.returncode == 2 and "Traceback" not in damaged.stderr
    assert "error: models/tiny/checkpoints/last.pt cannot be read" in flat(damaged.stderr)
    assert "python -m flows.train tiny --restart" in flat(damaged.stderr)
    restarted = ws.run("train", "tiny", "--restart")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    kept = list(ws.checkpoint.parent.glob("restarted-*.pt"))
    assert len(kept) == 1 and kept[0].read_bytes() == whole[:500]
    assert ws.checkpoint_epoch() == 3

    # Damaged prepared data is named too, with the command that makes it again.
    data = ws.path / "data" / "prepared" / "pics_P50" / "train.x.npy"
    data.write_bytes(data.read_bytes()[:300])
    damaged = ws.run("train", "tiny")
    assert damaged.returncode == 2 and "Traceback" not in damaged.stderr
    assert "error: data/prepared/pics_P50/train.x.npy cannot be read" in flat(
        damaged.stderr
    ) and "python -m flows.prepare pics_P50" in flat(damaged.stderr)


def test_a_read_only_model_folder_fails_at_once_naming_it(workspace):
    ws = workspace
    ws.models.mkdir(parents=True)
    # Root ignores file modes, so make the folder really read-only: a read-only bind mount
    # in a private mount namespace of the training process.
    command = " ".join(ws.command("train", "tiny"))
    done = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            f"mount --bind -o ro {ws.models} {ws.models} && exec {command}",
        ],
        cwd=ws.path,
        env=ws.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: cannot write to models/tiny: Read-only file system" in done.stderr
    assert "Traceback" not in done.stderr and not (ws.path / "mlflow.db").exists()
