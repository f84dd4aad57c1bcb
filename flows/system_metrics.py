"""CPU, memory, disk, network (and GPU) use of a training, as `system/...` MLflow metrics.

In place of `mlflow.start_run(log_system_metrics=True)`, whose monitor talks to the server
with MLflow's default limits (minutes per call when it is down) and stops for good after one
failure: here the samples go through the training's TrackingRecorder, so an outage costs
the sampling thread nothing but spooled records, and stop() waits a bounded time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from flows.recorder import TrackingRecorder

logger = logging.getLogger(__name__)


class SystemMetricsSampler:
    """CPU, memory, disk, network (and GPU) use sampled in a thread and recorded as
    `system/...` metrics through a TrackingRecorder, in place of
    `mlflow.start_run(log_system_metrics=True)`, whose monitor talks to the server with the
    default limits and stops for good after one failure. Here an outage costs the thread
    nothing but spooled records, and stop() never waits more than `timeout` seconds."""

    def __init__(self, recorder: TrackingRecorder, interval: float | None = None):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        # MLflow's own setting for its monitor (10 s by default) sets ours too.
        self.recorder = recorder
        self.interval = interval or float(
            os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "10")
        )
        self.monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        with contextlib.suppress(Exception):  # no NVIDIA GPU or no pynvml
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            self.monitors.append(GPUMonitor())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SystemMetricsSampler:
        self._thread = threading.Thread(target=self._run, name="SystemMetricsSampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _first_step(self) -> int:
        """After a resume, continue the steps of the run's system metrics."""
        try:
            history = self.recorder.client.get_metric_history(
                self.recorder.run_id, "system/cpu_utilization_percentage"
            )
        except Exception:  # noqa: BLE001 - the server is down: start at 0
            return 0
        return max((m.step for m in history), default=-1) + 1

    def _run(self) -> None:
        step = self._first_step()
        while not self._stop.wait(self.interval):
            try:
                values: dict[str, float] = {}
                for monitor in self.monitors:
                    monitor.collect_metrics()
                    values.update(monitor.aggregate_metrics())
                    monitor.clear_metrics()
                self.recorder.log_metrics({f"system/{k}": v for k, v in values.items()}, step)
                step += 1
            except Exception as error:  # noqa: BLE001 - never let sampling end the training
                logger.warning("system metrics sampling stopped: %s", error)
                return
