"""What training records in MLflow, sent so that a tracking outage never stops training.

    recorder = TrackingRecorder(run_id, models/<experiment>/tracking_spool)
    recorder.log_metrics({"energy": 1.2}, step=epoch)         # every epoch
    recorder.log_image(png, key="samples", step=epoch)        # a stepped image series
    recorder.log_artifact(path, artifact_path="media/...")
    summary = recorder.close(wait_seconds=30)                   # says what is late or unsent

    python -m flows.recorder replay models/<experiment>/tracking_spool   # send what is left

Every call appends its record to a bounded in-memory queue and to a spool on disk (metrics
and tags as JSON lines, images and files copied), then tries to send what is pending, oldest
first. A request has a short bounded time (`timeout` seconds, `max_retries` retries), and
after a failure the recorder waits `retry_after` seconds (doubling up to `max_retry_after`)
before it tries again, so while the server is down a call costs the training loop some tens
of microseconds (an image: the time to write its PNG and WebP, as mlflow.log_image does).
Acknowledged records leave the spool at once and are never sent again; those the server
refuses for good (HTTP 400/404) move to `rejected.jsonl`. Whatever is unsent when the
process ends stays in the spool, and the next recorder for the same run (a resumed training)
or `replay` sends it.

Exactly once: records go in order and an acknowledged record is never resent. A request that
timed out after the server had stored it is resent, and still stored once: metrics keep the
timestamp of the moment they were logged (MLflow's SQL store ignores an identical metric row)
and images and files keep their file names (an upload of the same name replaces the file).

Bounded requests without touching the rest of the process: a client from flows.mlflow_http,
and the recorder's own PUT for uploads to the server's artifact proxy (no retry there: a
retried PUT would resend a half-read file body).
Other artifact stores (a local folder, or S3 and the like written directly by the client)
keep their own clients' timeouts.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import logging
import os
import posixpath
import re
import shutil
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import RestException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
from mlflow.tracking.multimedia import compress_image_size
from mlflow.utils.mime_type_utils import _guess_mime_type
from mlflow.utils.rest_utils import augmented_raise_for_status, http_request

from flows import tracking
from flows.mlflow_http import HttpLimits, bounded_client
from flows.process import raise_if_stopped

logger = logging.getLogger(__name__)

LOGGED_IMAGES_TAG = "mlflow.loggedImages"  # what MlflowClient.log_image sets for the UI
_IMAGE_KEY = re.compile(r"^[a-zA-Z0-9_\-./ ]+$")  # the keys MlflowClient.log_image accepts
_MAX_METRICS_PER_REQUEST = 900  # MLflow allows 1000 entities per log_batch, 100 of them tags
_MAX_TAGS_PER_REQUEST = 100
_REFUSED_FOR_GOOD = {400, 404}  # bad request, no such run: resending cannot help


@dataclass(frozen=True)
class RecorderSummary:
    """What became of the records of one recorder."""

    run_id: str
    tracking_uri: str
    spool: Path  # this run's spool folder
    sent: int  # records acknowledged by the tracking store
    delayed: int  # of those, how many were not sent by the call that logged them
    resent: int  # of those, how many were left unsent by an earlier process
    unsent: int  # still pending, kept in the spool
    rejected: int  # refused by the server for good, kept in <spool>/rejected.jsonl
    last_error: str | None = None

    def message(self) -> str:
        parts = []
        if self.unsent:
            parts.append(
                f"{self.unsent} record(s) of MLflow run {self.run_id} (metrics, images, files) "
                f"could not be sent to {self.tracking_uri}"
                + (f" ({self.last_error})" if self.last_error else "")
                + f". Nothing is lost: they are kept in {self.spool}. Once the server answers, "
                f"send them with `python -m flows.recorder replay {self.spool}` (resuming the "
                "training sends them too)."
            )
        if self.rejected:
            parts.append(
                f"{self.rejected} record(s) of run {self.run_id} were refused by "
                f"{self.tracking_uri}; they are kept in {self.spool / 'rejected.jsonl'}."
            )
        if self.delayed:
            parts.append(
                f"{self.delayed} record(s) of run {self.run_id} reached "
                f"{self.tracking_uri} late, because it did not answer for a while; "
                "they all arrived."
            )
        return " ".join(parts) or (
            f"all {self.sent} record(s) of run {self.run_id} reached {self.tracking_uri}."
        )


class TrackingRecorder:
    """Metrics, tags, images and files of one MLflow run, sent with bounded time per call and
    spooled to `spool_folder/<run_id>/` until the tracking store acknowledges them.

    Thread-safe: a sampler thread (SystemMetricsSampler) may record beside the training loop.
    """

    def __init__(
        self,
        run_id: str,
        spool_folder: str | os.PathLike,
        *,
        tracking_uri: str | None = None,
        timeout: float = 5.0,
        max_retries: int = 0,
        upload_timeout: float = 30.0,
        retry_after: float = 5.0,
        max_retry_after: float = 60.0,
        max_buffered: int = 10_000,
        continues_run: bool = True,
    ):
        """`continues_run`: this process goes on recording the run (a resumed training), so an
        end of run (set_terminated) left unsent by an earlier process is dropped rather than
        sent before the new records; `replay` passes False."""
        self.run_id = run_id
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.limits = HttpLimits(
            timeout=timeout, max_retries=max_retries, upload_timeout=upload_timeout
        )
        self.client = bounded_client(self.tracking_uri, self.limits)
        self.spool_root = Path(spool_folder)
        self.spool = self.spool_root / run_id
        self._records_file = self.spool / "records.jsonl"
        self._state_file = self.spool / "state.json"
        self._retry_after, self._max_retry_after = retry_after, max_retry_after
        self._max_buffered = max_buffered
        self._lock = threading.RLock()
        self._pending: deque[dict[str, Any]] = deque()  # oldest pending records, in order
        self._disk_only = 0  # newer pending records kept on disk only (buffer full)
        self._acked_seq = 0  # every record up to this sequence number is acknowledged
        self._next_seq = 1
        self._delayed_through = 0  # records up to this sequence number were not sent in time
        self._file_has_acked = False  # records.jsonl still lists acknowledged records
        self._next_attempt = 0.0  # time.monotonic() before which no send is tried
        self._pause = retry_after
        self._artifact_repo: ArtifactRepository | None = None
        self._images_tagged = False
        self._closed = False
        self._last_error: str | None = None
        self._counts = {"sent": 0, "delayed": 0, "resent": 0, "rejected": 0}

        self.spool.mkdir(parents=True, exist_ok=True)
        # Held, and locked, for the recorder's life: close() releases it.
        self._lock_file = open(self.spool / ".lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(
                f"another process is sending the records of {self.spool}; wait for it to end"
            ) from None
        self._write_json(
            self.spool / "spool.json", {"run_id": run_id, "tracking_uri": self.tracking_uri}
        )
        if self._state_file.is_file():
            self._acked_seq = json.loads(self._state_file.read_text())["acked_seq"]
        self._next_seq = self._acked_seq + 1
        self._reload(recovered=True)
        if continues_run and any(r["kind"] == "terminate" for r in self._pending):
            self._drop_old_ends()
        self._delayed_through = self._next_seq - 1
        self._warn_about_other_runs()
        if self._unsent():
            logger.info(
                "sending %d record(s) of run %s left in %s by an earlier process",
                self._unsent(),
                run_id,
                self.spool,
            )
            self._send()

    # -- what the training loop calls ------------------------------------------------------

    def log_metrics(
        self, metrics: dict[str, float], step: int, timestamp: int | None = None
    ) -> None:
        """Metrics at `step`, stamped now or at `timestamp` (ms since the epoch): when they
        were measured, if that was earlier."""
        values = {str(key): float(value) for key, value in metrics.items()}
        when = _now_ms() if timestamp is None else int(timestamp)
        self._record({"kind": "metrics", "step": int(step), "timestamp": when, "values": values})

    def log_metric(self, key: str, value: float, step: int) -> None:
        self.log_metrics({key: value}, step)

    def set_tag(self, key: str, value: Any) -> None:
        self._record({"kind": "tag", "key": str(key), "value": str(value)})

    def log_image(self, path: str | os.PathLike, key: str, step: int) -> None:
        """A picture of the image series `key` at `step`, as `mlflow.log_image(image, key=...,
        step=...)` stores it (a PNG and a compressed WebP under images/, file names that the
        UI reads), with names fixed now so that a resend replaces rather than adds."""
        from PIL import Image

        if not _IMAGE_KEY.match(key):
            raise ValueError(
                f"image key {key!r} may only contain letters, digits, _ - . / and spaces"
            )
        timestamp = _now_ms()
        stem = f"{key.replace('/', '~')}+step+{int(step)}+timestamp+{timestamp}+{uuid.uuid4()}"

        def write(folder: Path) -> list[str]:
            with Image.open(path) as image:
                image.load()
                image.save(folder / f"{stem}.png")
                compress_image_size(image).save(folder / f"{stem}+compressed.webp")
            return [f"{stem}.png", f"{stem}+compressed.webp"]

        self._record(
            {"kind": "image", "key": key, "step": int(step), "timestamp": timestamp}, files=write
        )

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file or a folder (copied now into the spool, so the original may go away)."""
        source = Path(path)
        if not source.exists():
            raise FileNotFoundError(f"no file {source} to record in MLflow")

        def write(folder: Path) -> list[str]:
            if source.is_dir():
                shutil.copytree(source, folder / source.name)
            else:
                shutil.copyfile(source, folder / source.name)
            return [source.name]

        self._record({"kind": "artifact", "artifact_path": artifact_path}, files=write)

    def set_terminated(self, status: str = "FINISHED") -> None:
        """End the run with `status` (FINISHED, FAILED, KILLED) after every earlier record."""
        self._record({"kind": "terminate", "status": status, "end_time": _now_ms()})

    def flush(self, wait_seconds: float = 30.0) -> bool:
        """Try to send everything pending, retrying for up to about `wait_seconds` (plus one
        bounded request); True when nothing is left."""
        deadline = time.monotonic() + wait_seconds
        pause = 0.5
        while True:
            with self._lock:
                if self._send(force=True):
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            raise_if_stopped()  # retrying for long: not after an interrupt Python lost
            time.sleep(min(pause, remaining))
            pause = min(2 * pause, 5.0)

    def close(self, wait_seconds: float = 30.0) -> RecorderSummary:
        """Flush for up to `wait_seconds`, then say (and warn, when something was late or is
        left) what became of the records. The spool keeps whatever was not sent."""
        with self._lock:
            if self._closed:
                return self.summary()
            self.flush(wait_seconds)
            self._closed = True
            if not self._unsent() and not (self.spool / "rejected.jsonl").exists():
                self._remove_spool()
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            summary = self.summary()
        if summary.unsent or summary.delayed or summary.rejected:
            logger.warning("MLflow tracking: %s", summary.message())
        return summary

    def summary(self) -> RecorderSummary:
        with self._lock:
            return RecorderSummary(
                run_id=self.run_id,
                tracking_uri=self.tracking_uri,
                spool=self.spool,
                unsent=self._unsent(),
                last_error=self._last_error if self._unsent() else None,
                **self._counts,
            )

    @property
    def pending(self) -> int:
        with self._lock:
            return self._unsent()

    def __enter__(self) -> TrackingRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the queue and the spool -----------------------------------------------------------

    def _record(self, record: dict[str, Any], files=None) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the recorder of run {self.run_id} is closed")
            record = {"seq": self._next_seq, **record}
            if files is not None:
                folder = self.spool / "files" / str(record["seq"])
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                record["files"] = [f"files/{record['seq']}/{name}" for name in files(folder)]
            self._next_seq += 1
            with open(self._records_file, "a") as out:
                out.write(json.dumps(record) + "\n")
            if self._disk_only or len(self._pending) >= self._max_buffered:
                self._disk_only += 1
            else:
                self._pending.append(record)
            if not self._send():
                self._delayed_through = record["seq"]  # it and all before it are late

    def _unsent(self) -> int:
        return len(self._pending) + self._disk_only

    def _reload(self, recovered: bool = False) -> None:
        """Read the pending records of the spool file into the buffer (up to its size)."""
        self._pending.clear()
        self._disk_only = 0
        if not self._records_file.is_file():
            return
        with open(self._records_file) as lines:
            for number, line in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the end of a line cut by a crash
                    logger.warning(
                        "skipping the unreadable line %d of %s", number, self._records_file
                    )
                    continue
                self._next_seq = max(self._next_seq, record["seq"] + 1)
                if record["seq"] <= self._acked_seq:
                    self._file_has_acked = True
                elif len(self._pending) < self._max_buffered:
                    self._pending.append({**record, "_resent": recovered})
                else:
                    self._disk_only += 1

    def _drop_old_ends(self) -> None:
        self._pending = deque(r for r in self._pending if r["kind"] != "terminate")
        temporary = self._records_file.with_suffix(".tmp")
        with open(self._records_file) as lines, open(temporary, "w") as out:
            for line in lines:
                with contextlib.suppress(json.JSONDecodeError, KeyError):
                    if json.loads(line)["kind"] != "terminate":
                        out.write(line)
        os.replace(temporary, self._records_file)

    def _send(self, force: bool = False) -> bool:
        """Send pending records in order until one fails; True when nothing is left."""
        if not self._unsent():
            return True
        if not force and time.monotonic() < self._next_attempt:
            return False
        one_by_one = 0  # after a refusal, send that many records alone to find the bad one
        while self._pending or self._disk_only:
            if not self._pending:
                self._reload()
            group = self._next_group(single=one_by_one > 0)
            try:
                self._deliver(group)
            except Exception as error:  # noqa: BLE001 - any failure leaves the record pending
                if _refused_for_good(error):
                    if len(group) > 1:
                        one_by_one = len(group)
                        continue
                    self._reject(group[0], error)
                    one_by_one = max(0, one_by_one - 1)
                    continue
                self._last_error = _describe(error)
                self._next_attempt = time.monotonic() + self._pause
                self._pause = min(2 * self._pause, self._max_retry_after)
                self._compact()
                return False
            one_by_one = max(0, one_by_one - len(group))
            self._acknowledge(group)
        self._pause, self._next_attempt, self._last_error = self._retry_after, 0.0, None
        self._compact()
        return True

    def _next_group(self, single: bool) -> list[dict[str, Any]]:
        """The oldest pending record, with the metric and tag records right after it when it
        is one of those (they go in one log_batch request)."""
        group = [self._pending[0]]
        if single or group[0]["kind"] not in ("metrics", "tag"):
            return group
        metrics = len(group[0].get("values", ()))
        tags = 1 if group[0]["kind"] == "tag" else 0
        for record in itertools.islice(self._pending, 1, None):
            size = len(record.get("values", ()))
            if record["kind"] == "metrics" and metrics + size <= _MAX_METRICS_PER_REQUEST:
                metrics += size
            elif record["kind"] == "tag" and tags < _MAX_TAGS_PER_REQUEST:
                tags += 1
            else:
                break
            group.append(record)
        return group

    def _deliver(self, group: list[dict[str, Any]]) -> None:
        kind = group[0]["kind"]
        if kind in ("metrics", "tag"):
            metrics = [
                Metric(key, value, record["timestamp"], record["step"])
                for record in group
                if record["kind"] == "metrics"
                for key, value in record["values"].items()
            ]
            tags = {record["key"]: record["value"] for record in group if record["kind"] == "tag"}
            self.client.log_batch(
                self.run_id,
                metrics=metrics,
                tags=[RunTag(k, v) for k, v in tags.items()],
                synchronous=True,
            )
        elif kind == "image":
            (record,) = group
            for name in record["files"]:
                self._upload(self.spool / name, "images")
            if not self._images_tagged:
                self.client.log_batch(
                    self.run_id, tags=[RunTag(LOGGED_IMAGES_TAG, "True")], synchronous=True
                )
                self._images_tagged = True
        elif kind == "artifact":
            (record,) = group
            for name in record["files"]:
                self._upload(self.spool / name, record["artifact_path"])
        elif kind == "terminate":
            (record,) = group
            self.client.set_terminated(self.run_id, record["status"], record["end_time"])
        else:
            raise ValueError(f"unknown record kind {kind!r} in {self._records_file}")

    def _upload(self, path: Path, artifact_path: str | None) -> None:
        if self._artifact_repo is None:
            artifact_uri = self.client.get_run(self.run_id).info.artifact_uri
            self._artifact_repo = get_artifact_repository(
                artifact_uri, tracking_uri=self.tracking_uri
            )
        repo = self._artifact_repo
        if not isinstance(repo, HttpArtifactRepository):
            if path.is_dir():
                repo.log_artifacts(str(path), posixpath.join(artifact_path or "", path.name))
            else:
                repo.log_artifact(str(path), artifact_path)
            return
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            parts = [artifact_path] if artifact_path else []
            if path.is_dir():
                parts += [path.name, *file.relative_to(path).parent.parts]
            # As HttpArtifactRepository.log_artifact (MLflow 3.17), bounded, without retries.
            endpoint = posixpath.join("/", *parts, file.name)
            with open(file, "rb") as body:
                response = http_request(
                    repo._host_creds,
                    endpoint,
                    "PUT",
                    data=body,
                    extra_headers={"Content-Type": _guess_mime_type(file.name)},
                    max_retries=0,
                    backoff_factor=0,
                    backoff_jitter=0.0,
                    timeout=(self.limits.timeout, self.limits.upload_timeout),
                )
            augmented_raise_for_status(response)

    def _acknowledge(self, group: list[dict[str, Any]]) -> None:
        for record in group:
            self._pending.popleft()
            self._counts["sent"] += 1
            self._counts["delayed"] += record["seq"] <= self._delayed_through
            self._counts["resent"] += bool(record.get("_resent"))
        self._mark_acked(group[-1]["seq"])
        for record in group:
            if record.get("files"):
                shutil.rmtree(self.spool / "files" / str(record["seq"]), ignore_errors=True)

    def _reject(self, record: dict[str, Any], error: Exception) -> None:
        logger.warning(
            "MLflow at %s refused a %s record of run %s for good (%s); it is kept in %s",
            self.tracking_uri,
            record["kind"],
            self.run_id,
            _describe(error),
            self.spool / "rejected.jsonl",
        )
        with open(self.spool / "rejected.jsonl", "a") as out:
            kept = {k: v for k, v in record.items() if not k.startswith("_")}
            out.write(json.dumps({**kept, "error": _describe(error)}) + "\n")
        self._pending.popleft()
        self._counts["rejected"] += 1
        self._mark_acked(record["seq"])

    def _mark_acked(self, seq: int) -> None:
        self._acked_seq = seq
        self._write_json(self._state_file, {"acked_seq": seq})
        self._file_has_acked = True

    def _compact(self) -> None:
        """Drop acknowledged records from the spool file."""
        if not self._file_has_acked:
            return
        if not self._unsent():
            self._records_file.unlink(missing_ok=True)
        else:
            temporary = self._records_file.with_suffix(".tmp")
            with open(self._records_file) as lines, open(temporary, "w") as out:
                for line in lines:
                    with contextlib.suppress(json.JSONDecodeError):
                        if json.loads(line)["seq"] > self._acked_seq:
                            out.write(line)
            os.replace(temporary, self._records_file)
        self._file_has_acked = False

    def _remove_spool(self) -> None:
        self._records_file.unlink(missing_ok=True)  # first: state.json alone means nothing
        for name in ("state.json", "spool.json", ".lock"):
            (self.spool / name).unlink(missing_ok=True)
        shutil.rmtree(self.spool / "files", ignore_errors=True)
        with contextlib.suppress(OSError):
            self.spool.rmdir()
            self.spool_root.rmdir()

    def _warn_about_other_runs(self) -> None:
        for other in sorted(self.spool_root.glob("*/records.jsonl")):
            if other.parent != self.spool:
                logger.warning(
                    "%s holds records of another MLflow run (%s) that were never "
                    "sent; send them with `python -m flows.recorder replay %s`",
                    other.parent,
                    other.parent.name,
                    other.parent,
                )

    @staticmethod
    def _write_json(path: Path, content: dict[str, Any]) -> None:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(content))
        os.replace(temporary, path)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _refused_for_good(error: Exception) -> bool:
    if isinstance(error, RestException):
        return error.get_http_status_code() in _REFUSED_FOR_GOOD
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error.response.status_code in _REFUSED_FOR_GOOD
    return False


def _describe(error: Exception) -> str:
    text = str(error)
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text or "timeout" in text.lower():
        return "no answer in time"
    return text.splitlines()[0][:200] if text else type(error).__name__


def end_run(
    recorder: TrackingRecorder, status: str = "FINISHED", wait_seconds: float = 30.0
) -> RecorderSummary:
    """End the recorder's run in bounded time: its status goes after every record (kept in
    the spool with them when the server is away), then the recorder closes, and MLflow's
    active run, if it is this one, is ended with bounded requests (it is taken off MLflow's
    stack of active runs even when the server does not answer)."""
    recorder.set_terminated(status)
    summary = recorder.close(wait_seconds)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == recorder.run_id:
        tracking.end_run(status, timeout=recorder.limits.timeout)
    return summary


def replay(
    spool_folder: str | os.PathLike, tracking_uri: str | None = None, wait_seconds: float = 30.0
) -> list[RecorderSummary]:
    """Send the records left in `spool_folder` (a spool, or one run's folder in it) to their
    runs, at the tracking URI they were recorded for unless `tracking_uri` is given."""
    folder = Path(spool_folder)
    runs = (
        [folder]
        if (folder / "spool.json").is_file()
        else sorted(p.parent for p in folder.glob("*/spool.json"))
    )
    summaries = []
    for run_folder in runs:
        saved = json.loads((run_folder / "spool.json").read_text())
        recorder = TrackingRecorder(
            saved["run_id"],
            run_folder.parent,
            tracking_uri=tracking_uri or saved["tracking_uri"],
            continues_run=False,
        )
        summaries.append(recorder.close(wait_seconds))
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.recorder", description="Send MLflow records left in a spool folder."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser("replay", help="send the records kept in a spool folder")
    send.add_argument("spool_folder")
    send.add_argument(
        "--tracking-uri", help="where to send them (default: where they were recorded for)"
    )
    send.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to keep trying while the server does not answer",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summaries = replay(args.spool_folder, args.tracking_uri, args.wait)
    if not summaries:
        print(f"nothing to send in {args.spool_folder}")
    for summary in summaries:  # close() has warned about any late, refused or unsent ones
        if not (summary.unsent or summary.delayed or summary.rejected):
            print(summary.message())
    return 1 if any(s.unsent for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
