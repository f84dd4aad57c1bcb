"""CPU, memory, disk, network (and GPU) use of a training, as `system/...` MLflow metrics,
one set per machine.

In place of `mlflow.start_run(log_system_metrics=True)`, whose monitor talks to the server
with MLflow's default limits (minutes per call when it is down) and stops for good after one
failure: here the samples go through the training's TrackingRecorder, so an outage costs
the sampling thread nothing but spooled records, and stop() waits a bounded time.

On several machines (torchrun's nodes) the first process of every machine samples it, and
the metrics take MLflow's own per-node names, `system/node_<n>/<metric>` (what
`mlflow.system_metrics.set_system_metrics_node_id` gives). Only rank 0 talks to MLflow, so
the other machines' samples reach it in a collective at every epoch end (`collect`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from abp.distributed import World, gather_objects
from flows.recorder import TrackingRecorder

logger = logging.getLogger(__name__)

# One sample: {metric: value} and when it was taken (ms since the epoch, as MLflow stores it).
Sample = tuple[dict[str, float], int]


def metric_prefix(world: World, node: int) -> str:
    """`system/` on one machine; `system/node_<n>/` when the training spans several."""
    return "system/" if world.nodes == 1 else f"system/node_{node}/"


class RecordedSeries:
    """Samples of one machine, recorded as `<prefix><metric>` with consecutive steps (after a
    resume, continuing the steps the run already has)."""

    def __init__(self, recorder: TrackingRecorder, prefix: str):
        self.recorder = recorder
        self.prefix = prefix
        self._next_step: int | None = None

    def _first_step(self) -> int:
        try:
            history = self.recorder.client.get_metric_history(
                self.recorder.run_id, f"{self.prefix}cpu_utilization_percentage"
            )
        except Exception:  # noqa: BLE001 - the server is down: start at 0
            return 0
        return max((m.step for m in history), default=-1) + 1

    def __call__(self, sample: Sample) -> None:
        if self._next_step is None:
            self._next_step = self._first_step()
        values, timestamp = sample
        self.recorder.log_metrics(
            {f"{self.prefix}{k}": v for k, v in values.items()}, self._next_step, timestamp
        )
        self._next_step += 1


class SystemMetricsSampler:
    """This machine's CPU, memory, disk, network (and GPU) use, sampled every `interval`
    seconds in a thread and handed to `sink` (never lets a failure end the training)."""

    def __init__(self, sink: Callable[[Sample], None], interval: float | None = None):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        self.sink = sink
        # MLflow's own setting for its monitor (10 s by default) sets ours too.
        self.interval = interval or float(
            os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "10")
        )
        self.monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        with contextlib.suppress(Exception):  # no NVIDIA GPU or no pynvml
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            self.monitors.append(GPUMonitor())
        self._stop = threading.Event()
        self._last_sample = True
        self._thread: threading.Thread | None = None

    def start(self) -> SystemMetricsSampler:
        self._thread = threading.Thread(target=self._run, name="SystemMetricsSampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0, last_sample: bool = True) -> None:
        """Stop sampling, after one last sample of the stretch since the previous one unless
        `last_sample` is False (the sink may wait on a server: an interrupted run skips it).
        Waits up to `timeout` for the thread, once: a second call returns at once."""
        if self._stop.is_set():
            return
        self._last_sample = last_sample
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._sample():
                return
        # The last stretch too: a training shorter than one interval still gets its sample.
        if self._last_sample:
            self._sample()

    def _sample(self) -> bool:
        """One sample to the sink; False (and a warning) if that failed."""
        try:
            values: dict[str, float] = {}
            for monitor in self.monitors:
                monitor.collect_metrics()
                values.update(monitor.aggregate_metrics())
                monitor.clear_metrics()
            self.sink((values, int(time.time() * 1000)))
        except Exception as error:  # noqa: BLE001 - never let sampling end the training
            logger.warning("system metrics sampling stopped: %s", error)
            return False
        return True


class SystemMetrics:
    """What one training process does about system metrics.

    Rank 0 samples its machine and records the samples itself. With several machines the
    first process of each other machine samples its own and keeps the samples until
    `collect`, a collective that every rank calls at every epoch end (and `finish` once at
    the end), which brings them to rank 0. Every other process does nothing."""

    def __init__(
        self, world: World, recorder: TrackingRecorder | None, interval: float | None = None
    ):
        self.world = world
        self.recorder = recorder
        self._pending: list[Sample] = []
        self._lock = threading.Lock()
        self._series: dict[int, RecordedSeries] = {}
        self.sampler: SystemMetricsSampler | None = None
        if recorder is not None:  # rank 0
            self.sampler = SystemMetricsSampler(self._series_of(world.node), interval)
        elif world.local_rank == 0 and world.nodes > 1:
            self.sampler = SystemMetricsSampler(self._keep, interval)

    def _series_of(self, node: int) -> RecordedSeries:
        assert self.recorder is not None
        if node not in self._series:
            self._series[node] = RecordedSeries(self.recorder, metric_prefix(self.world, node))
        return self._series[node]

    def _keep(self, sample: Sample) -> None:
        with self._lock:
            self._pending.append(sample)

    def start(self) -> SystemMetrics:
        if self.sampler is not None:
            self.sampler.start()
        return self

    def collect(self) -> None:
        """Bring the other machines' samples to rank 0 (a collective on several machines;
        nothing to do on one)."""
        if self.world.nodes == 1:
            return
        with self._lock:
            mine, self._pending = self._pending, []
        gathered = gather_objects((self.world.node, mine), self.world)
        if self.recorder is None:
            return
        for node, samples in gathered:
            for sample in samples:
                self._series_of(node)(sample)

    def __call__(self, *_epoch: object) -> None:
        """As an epoch callback: `collect`."""
        self.collect()

    def stop(self, last_sample: bool = True) -> None:
        if self.sampler is not None:
            self.sampler.stop(last_sample=last_sample)

    def finish(self) -> None:
        """Stop sampling and bring the last samples in (every rank calls it: a collective)."""
        self.stop()
        self.collect()
