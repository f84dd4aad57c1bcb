"""TrackingRecorder against a real MLflow server that goes away and comes back, and the
checks of a tracking URI before training starts."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import mlflow
import pytest
from media import write_images
from mlflow import MlflowClient
from mlflow_server import MlflowServer, free_port

from flows import tracking
from flows.mlflow_http import process_http_limits
from flows.recorder import TrackingRecorder, end_run
from flows.recorder import main as recorder_main
from flows.system_metrics import RecordedSeries, SystemMetricsSampler
from flows.tracking import TrackingUnavailable, check_reachable


@pytest.fixture(scope="module")
def prefect_backend():
    """No Prefect here: this replaces the session's Prefect server of tests/flows/conftest.py."""
    return


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One MLflow server for the module; a test that stops it starts it again."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture
def live(server):
    server.start()
    yield server
    server.start()


def new_run(server) -> str:
    return MlflowClient(server.uri).create_run("0").info.run_id


def steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


def image_steps(client, run_id):
    names = [a.path for a in client.list_artifacts(run_id, "images")]
    assert len(names) == 2 * len({n.split("+timestamp+")[0] for n in names})  # PNG + WebP each
    return sorted(int(n.split("+step+")[1].split("+")[0]) for n in names if n.endswith(".png"))


@pytest.mark.slow  # MLflow servers started and killed
def test_records_logged_while_the_server_is_away_arrive_once_and_in_order(live, tmp_path):
    client = MlflowClient(live.uri)
    run_id = new_run(live)
    pngs = write_images(tmp_path / "png", 2)
    (tmp_path / "history.json").write_text('{"epochs": 8}')
    recorder = TrackingRecorder(
        run_id,
        tmp_path / "spool",
        tracking_uri=live.uri,
        retry_after=0.2,
        max_retry_after=0.5,
        max_buffered=4,
    )  # the rest of the backlog waits on disk
    for step in (1, 2, 3):
        recorder.log_metrics({"energy": step / 10, "mse": float(step)}, step=step)
    recorder.log_image(pngs[0], key="samples", step=1)
    assert recorder.pending == 0

    live.stop()
    for step in (4, 5, 6):
        recorder.log_metrics({"energy": step / 10, "mse": float(step)}, step=step)
    recorder.log_image(pngs[1], key="samples", step=5)
    recorder.log_artifact(tmp_path / "history.json", artifact_path="outputs")
    (tmp_path / "history.json").unlink()  # the spool has its own copy
    recorder.set_tag("phase", "after the outage")
    assert recorder.pending == 6

    live.start()
    recorder.log_metrics({"energy": 0.7, "mse": 7.0}, step=7)  # sends the backlog first
    assert recorder.pending == 0
    recorder.log_metrics({"energy": 0.8, "mse": 8.0}, step=8)
    summary = recorder.close(wait_seconds=10)

    assert (summary.sent, summary.delayed, summary.unsent, summary.rejected) == (12, 6, 0, 0)
    assert steps(client, run_id, "energy") == steps(client, run_id, "mse") == list(range(1, 9))
    assert [m.value for m in client.get_metric_history(run_id, "energy")] == pytest.approx(
        [s / 10 for s in range(1, 9)]
    )
    assert image_steps(client, run_id) == [1, 5]
    saved = client.download_artifacts(run_id, "outputs/history.json", str(tmp_path))
    with open(saved) as history:
        assert json.loads(history.read()) == {"epochs": 8}
    tags = client.get_run(run_id).data.tags
    assert tags["phase"] == "after the outage" and tags["mlflow.loggedImages"] == "True"
    assert not (tmp_path / "spool").exists()  # nothing left to send


@pytest.mark.slow  # MLflow servers started and killed
def test_a_dead_server_costs_the_loop_little_and_a_later_recorder_sends_the_spool(
    live, tmp_path, caplog
):
    client = MlflowClient(live.uri)
    run_id = new_run(live)
    png = write_images(tmp_path / "png", 1)[0]
    (tmp_path / "latents.pt").write_bytes(b"\x00" * 1000)
    environment = dict(os.environ)
    live.stop()

    recorder = TrackingRecorder(run_id, tmp_path / "spool", tracking_uri=live.uri)
    started, slowest = time.monotonic(), 0.0
    for step in range(1, 11):
        call = time.monotonic()
        recorder.log_metrics({"energy": 1 / step}, step=step)
        if step % 5 == 0:
            recorder.log_image(png, key="samples", step=step)
        slowest = max(slowest, time.monotonic() - call)
    recorder.log_artifact(tmp_path / "latents.pt", artifact_path="latents")
    elapsed = time.monotonic() - started
    assert elapsed < 10 and slowest < 2, (elapsed, slowest)  # stock MLflow: ~4.5 min a call

    with caplog.at_level("WARNING", logger="flows.recorder"):
        summary = recorder.close(wait_seconds=1)
    assert (summary.sent, summary.unsent) == (0, 13)
    warning = caplog.text
    for words in (
        "13 record(s)",
        live.uri,
        str(summary.spool),
        "connection refused",
        f"python -m flows.recorder replay {summary.spool}",
    ):
        assert words in warning
    records = [json.loads(line) for line in (summary.spool / "records.jsonl").open()]
    assert [r["step"] for r in records if r["kind"] == "metrics"] == list(range(1, 11))
    assert [r["step"] for r in records if r["kind"] == "image"] == [5, 10]
    assert [r["kind"] for r in records][-1] == "artifact"
    files = [summary.spool / name for r in records for name in r.get("files", [])]
    assert len(files) == 5 and all(f.is_file() for f in files)
    assert dict(os.environ) == environment  # no process-wide MLflow settings were changed

    live.start()
    again = TrackingRecorder(run_id, tmp_path / "spool", tracking_uri=live.uri)
    assert again.pending == 0  # sent when it was made
    resent = again.close()
    assert (resent.sent, resent.resent, resent.unsent) == (13, 13, 0)
    TrackingRecorder(run_id, tmp_path / "spool", tracking_uri=live.uri).close()  # nothing left
    assert steps(client, run_id, "energy") == list(range(1, 11))  # exactly once
    assert image_steps(client, run_id) == [5, 10]
    assert [a.file_size for a in client.list_artifacts(run_id, "latents")] == [1000]
    assert not (tmp_path / "spool").exists()


def test_a_hung_server_costs_one_timeout_then_nothing_while_backing_off(live, tmp_path):
    run_id = new_run(live)
    recorder = TrackingRecorder(
        run_id, tmp_path / "spool", tracking_uri=live.uri, timeout=1, retry_after=0.2
    )
    recorder.log_metrics({"energy": 1.0}, step=1)
    live.pause()
    try:
        started = time.monotonic()
        recorder.log_metrics({"energy": 2.0}, step=2)  # waits for the 1 s timeout
        assert time.monotonic() - started < 3
        started = time.monotonic()
        recorder.log_metrics({"energy": 3.0}, step=3)  # backing off: not even tried
        assert time.monotonic() - started < 0.5 and recorder.pending == 2
    finally:
        live.resume()
    assert recorder.flush(wait_seconds=20)
    assert recorder.close().delayed == 2
    assert steps(MlflowClient(live.uri), run_id, "energy") == [1, 2, 3]


def test_replay_sends_a_spool_and_keeps_what_the_server_refuses(live, tmp_path, caplog):
    client = MlflowClient(live.uri)
    run_id = new_run(live)
    nowhere = f"http://127.0.0.1:{free_port()}"  # what the training was pointed at
    recorder = TrackingRecorder(run_id, tmp_path / "spool", tracking_uri=nowhere)
    recorder.log_metrics({"energy": 1.0}, step=1)
    recorder.log_metrics({"../escape": 1.0}, step=1)  # MLflow refuses this name
    recorder.log_metrics({"energy": 2.0}, step=2)
    recorder.set_terminated("FINISHED")
    assert recorder.close(wait_seconds=0).unsent == 4
    shutil.copytree(tmp_path / "spool", tmp_path / "before")

    with caplog.at_level("WARNING", logger="flows.recorder"):
        assert recorder_main(["replay", str(tmp_path / "spool"), "--tracking-uri", live.uri]) == 0
    assert "1 record(s) of run" in caplog.text and "were refused by" in caplog.text
    assert steps(client, run_id, "energy") == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"
    rejected = [
        json.loads(line) for line in (tmp_path / "spool" / run_id / "rejected.jsonl").open()
    ]
    assert [r["values"] for r in rejected] == [{"../escape": 1.0}]

    # A process that died after the server stored the records but before it could mark them
    # sent leaves them in its spool: sending them again stores nothing twice.
    shutil.rmtree(tmp_path / "spool")
    shutil.copytree(tmp_path / "before", tmp_path / "spool")
    assert recorder_main(["replay", str(tmp_path / "spool"), "--tracking-uri", live.uri]) == 0
    assert steps(client, run_id, "energy") == [1, 2]


def test_a_resumed_training_drops_the_end_of_run_an_earlier_process_left(live, tmp_path):
    client = MlflowClient(live.uri)
    run_id = new_run(live)
    first = TrackingRecorder(
        run_id, tmp_path / "spool", tracking_uri=f"http://127.0.0.1:{free_port()}"
    )
    first.log_metrics({"energy": 1.0}, step=1)
    first.set_terminated("FAILED")  # the training failed while the server was away
    assert first.close(wait_seconds=0).unsent == 2

    resumed = TrackingRecorder(run_id, tmp_path / "spool", tracking_uri=live.uri)
    resumed.log_metrics({"energy": 2.0}, step=2)
    assert client.get_run(run_id).info.status == "RUNNING"
    resumed.set_terminated("FINISHED")
    assert resumed.close().sent == 3
    assert client.get_run(run_id).info.status == "FINISHED"
    assert steps(client, run_id, "energy") == [1, 2]


def test_end_run_ends_the_active_run_in_seconds_when_the_server_is_away(live, tmp_path):
    previous = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri sets it too
    nowhere = f"http://127.0.0.1:{free_port()}"
    mlflow.set_tracking_uri(live.uri)
    try:
        run_id = mlflow.start_run().info.run_id
        mlflow.set_tracking_uri(nowhere)  # from here on, the server does not answer
        recorder = TrackingRecorder(run_id, tmp_path / "spool", tracking_uri=nowhere)
        recorder.log_metrics({"energy": 1.0}, step=1)
        started = time.monotonic()
        summary = end_run(recorder, "FAILED", wait_seconds=1)
        assert time.monotonic() - started < 5  # stock mlflow.end_run(): ~4 min, then raises
        assert mlflow.active_run() is None and summary.unsent == 2
        assert not [name for name in os.environ if name.startswith("MLFLOW_HTTP_REQUEST")]
    finally:
        if mlflow.active_run():
            with process_http_limits():
                mlflow.end_run()
        mlflow.set_tracking_uri(previous)
    assert recorder_main(["replay", str(tmp_path / "spool"), "--tracking-uri", live.uri]) == 0
    run = MlflowClient(live.uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.metrics == {"energy": 1.0}


def test_tracking_end_run_gives_up_in_seconds(live, caplog):
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(live.uri)
    try:
        mlflow.start_run()
        mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="flows.tracking"):
            tracking.end_run("FAILED")
        assert time.monotonic() - started < 3 and mlflow.active_run() is None
        assert "did not record the end of the run (FAILED)" in caplog.text
        tracking.end_run()  # no active run: nothing to do
    finally:
        mlflow.set_tracking_uri(previous)


def test_system_metrics_go_through_the_recorder(live, tmp_path):
    run_id = new_run(live)
    recorder = TrackingRecorder(run_id, tmp_path / "spool", tracking_uri=live.uri)
    sampler = SystemMetricsSampler(RecordedSeries(recorder, "system/"), interval=0.2).start()
    time.sleep(1.5)
    sampler.stop(timeout=5)
    assert recorder.close().unsent == 0
    sampled = steps(MlflowClient(live.uri), run_id, "system/cpu_utilization_percentage")
    assert len(sampled) >= 2 and sampled == list(range(len(sampled)))


def test_a_sampling_shorter_than_one_interval_still_gives_one_sample():
    # A training that ends within the first interval: its last stretch is sampled at stop.
    samples = []
    sampler = SystemMetricsSampler(samples.append, interval=60).start()
    sampler.stop(timeout=10)
    assert len(samples) == 1
    values, timestamp = samples[0]
    assert "cpu_utilization_percentage" in values and timestamp > 0


def test_an_interrupted_sampling_takes_no_last_sample_and_a_second_stop_does_not_wait():
    samples = []
    sampler = SystemMetricsSampler(samples.append, interval=60).start()
    sampler.stop(timeout=10, last_sample=False)
    assert samples == []
    # A sink stuck on a server: stop waits its timeout once, never twice.
    release = threading.Event()
    stuck = SystemMetricsSampler(lambda sample: release.wait(30), interval=60).start()
    started = time.monotonic()
    stuck.stop(timeout=0.5)
    stuck.stop(timeout=10)
    assert time.monotonic() - started < 5
    release.set()


def test_a_local_sqlite_store_records_the_same_way(server, tmp_path):
    # A copy of the server's database: a new one would take seconds of schema migrations.
    with (
        sqlite3.connect(server.folder / "mlflow.db") as source,
        sqlite3.connect(tmp_path / "mlflow.db") as copy,
    ):
        source.backup(copy)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment(
        "local", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    run_id = client.create_run(experiment).info.run_id
    png = write_images(tmp_path / "png", 1)[0]
    with TrackingRecorder(run_id, tmp_path / "spool", tracking_uri=uri) as recorder:
        recorder.log_metrics({"energy": 1.0}, step=1)
        recorder.log_image(png, key="samples", step=1)
        recorder.log_artifact(png, artifact_path="files")
        recorder.set_terminated("FINISHED")
    assert recorder.summary().sent == 4
    assert steps(client, run_id, "energy") == [1] and image_steps(client, run_id) == [1]
    assert [a.path for a in client.list_artifacts(run_id, "files")] == [f"files/{png.name}"]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_an_unreachable_server_fails_in_seconds_naming_the_variable(monkeypatch, live):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="connection refused") as error:
        check_reachable(uri)
    assert time.monotonic() - started < 5
    assert str(error.value).startswith(f"MLFLOW_TRACKING_URI={uri}: no MLflow server answers")
    assert "unset MLFLOW_TRACKING_URI" in str(error.value)
    check_reachable(live.uri)  # a live server passes


# A writer killed mid-transaction: its changes spill into the database (cache of one page)
# with the rollback journal beside it, then the process dies without committing.
KILLED_WRITER = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size = 1")
db.execute("BEGIN")
for _ in range(200):
    db.execute("INSERT INTO kept VALUES (randomblob(4000))")
os._exit(0)
"""


def test_an_sqlite_store_a_killed_writer_left_mid_transaction_is_rolled_back(tmp_path):
    """The hot journal of an MLflow write cut by kill -9 is no reason to refuse the store."""
    database = tmp_path / "mlflow.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE kept (value BLOB)")
        db.execute("INSERT INTO kept VALUES (x'01')")
    db.close()
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(database)], check=True)
    journal = tmp_path / "mlflow.db-journal"
    assert journal.stat().st_size > 0  # hot: the cut transaction's pages are in there

    check_reachable(f"sqlite:///{database}")
    assert not journal.exists()
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM kept").fetchone() == (1,)  # committed rows only
    db.close()


def test_an_sqlite_store_that_is_no_database_or_read_only_is_named(tmp_path):
    corrupt = tmp_path / "mlflow.db"
    corrupt.write_bytes(b"not a database, " * 100)
    with pytest.raises(TrackingUnavailable, match="is not an SQLite database") as error:
        check_reachable(f"sqlite:///{corrupt}")
    assert str(corrupt) in str(error.value)

    good = tmp_path / "good" / "mlflow.db"
    good.parent.mkdir()
    sqlite3.connect(good).close()
    check_reachable(f"sqlite:///{good}")
    # Tests run as root, for whom chmod stops no write; the immutable attribute does (it
    # needs ext4 or the like under tmp, as on this project's machines).
    subprocess.run(["chattr", "+i", str(good)], check=True)
    try:
        with pytest.raises(TrackingUnavailable, match="read-only") as error:
            check_reachable(f"sqlite:///{good}")
        assert str(good) in str(error.value)
    finally:
        subprocess.run(["chattr", "-i", str(good)], check=True)
