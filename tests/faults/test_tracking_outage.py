"""A real MLflow server on 127.0.0.1 that goes away during training: stopped and
restarted (every epoch's metric arrives exactly once), and stopped for good (the training
completes and keeps its records, which a replay delivers later); an unreachable tracking
URI at the start fails within seconds, naming the variable."""

from __future__ import annotations

import json
import time

from mlflow import MlflowClient
from mlflow_server import free_port, mlflow_server


def flat(text: str) -> str:
    return " ".join(text.split())


def wait_for_epoch(ws, training, epoch: int) -> None:
    deadline = time.monotonic() + 180
    while (ws.checkpoint_epoch() or 0) < epoch:
        assert training.poll() is None, training.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "training did not reach the epoch"
        time.sleep(0.02)


def test_training_outlives_its_tracking_server(workspace, tmp_path):
    ws = workspace
    ws.set("abp", langevin_steps=20)
    with mlflow_server(tmp_path / "mlflow") as server:
        ws.env["MLFLOW_TRACKING_URI"] = server.uri
        client = MlflowClient(server.uri)

        # 1. Stopped at epoch 3 and restarted while the training goes on.
        ws.set("training", epochs=12)
        training = ws.start("train", "tiny")
        wait_for_epoch(ws, training, 3)
        server.stop()
        wait_for_epoch(ws, training, 6)  # no stall while the server is away
        server.start()
        _, err = training.communicate(timeout=300)
        assert training.returncode == 0, err[-3000:]
        assert "reached " + server.uri + " late" in flat(err)
        run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "energy")]
        assert steps == list(range(1, 13))  # every epoch, exactly once, in order
        assert run.info.status == "FINISHED"
        assert not any((ws.models / "tracking_spool").rglob("records.jsonl"))

        # 2. Stopped for good: the training completes, the records wait on disk.
        ws.set("training", epochs=16)
        training = ws.start("train", "tiny")
        wait_for_epoch(ws, training, 13)
        server.stop()
        started = time.monotonic()
        _, err = training.communicate(timeout=300)
        assert training.returncode == 0, err[-3000:]
        assert time.monotonic() - started < 90  # the end waits for the server, boundedly
        assert ws.checkpoint_epoch() == 16 and (ws.models / "generator.pt").is_file()
        log = flat(err)
        assert f"could not be sent to {server.uri}" in log
        assert "python -m flows.recorder replay models/tiny/tracking_spool" in log
        # Every epoch the server missed waits on disk (tests/flows/test_recorder.py replays
        # such a spool into a restarted server, exactly once).
        spooled = [
            json.loads(line)
            for path in (ws.models / "tracking_spool").rglob("records.jsonl")
            for line in path.read_text().splitlines()
        ]
        missed = {r["step"] for r in spooled if r["kind"] == "metrics" and "energy" in r["values"]}
        assert 16 in missed and missed <= set(range(13, 17)), spooled[:3]
        assert any(r["kind"] == "terminate" and r["status"] == "FINISHED" for r in spooled)


def test_an_unreachable_tracking_uri_fails_within_seconds_naming_it(workspace):
    ws = workspace
    uri = f"http://127.0.0.1:{free_port()}"
    ws.env["MLFLOW_TRACKING_URI"] = uri
    started = time.monotonic()
    done = ws.run("train", "tiny")
    assert done.returncode == 2
    assert time.monotonic() - started < 30  # imports included; the check itself is quick
    assert f"error: MLFLOW_TRACKING_URI={uri}: no MLflow server answers there" in done.stderr
    assert "Traceback" not in done.stderr and not (ws.models / "checkpoints" / "last.pt").exists()
