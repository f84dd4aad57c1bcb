"""MLflow requests with bounded time, without touching the rest of the process.

MLflow reads MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES / _BACKOFF_FACTOR from os.environ on
every request (`mlflow.utils.rest_utils.http_request`; 120 s and 7 retries with backoff by
default, about 4 minutes per call against a dead server), so changing them would change every
MLflow call of every thread. `bounded_client()` passes its own limits to `http_request`
instead: a `RestStore` whose `_call_endpoint` does so, behind an `MlflowClient`. It relies
on private parts of MLflow 3.17 (`_call_endpoint`, `_tracking_client`), which
tests/flows/test_recorder.py exercises against a real server: rerun it after an upgrade.
`process_http_limits()` is the process-wide fallback, for fluent calls that take no limits
(`mlflow.end_run`, `mlflow.pytorch.log_model`) at a moment when no other thread waits on MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking._tracking_service.client import TrackingServiceClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.proto_json_utils import parse_dict
from mlflow.utils.rest_utils import http_request, verify_rest_response

_ENVIRONMENT_LOCK = threading.Lock()


@dataclass(frozen=True)
class HttpLimits:
    """Bounds of one request of the recorder to an MLflow server."""

    timeout: float = 5.0  # seconds to connect, and for each read of the answer
    max_retries: int = 0  # retries of a failed request within one attempt (never for uploads)
    backoff_factor: float = 0.0
    upload_timeout: float = 30.0  # seconds for each read of the answer to an upload


class _BoundedRestStore(RestStore):
    """MLflow's REST store with bounded requests (the stock one reads the limits from the
    process environment on each request, 120 s and 7 retries by default)."""

    def __init__(self, get_host_creds, limits: HttpLimits):
        super().__init__(get_host_creds)
        self._limits = limits

    def _call_endpoint(
        self, api, json_body=None, endpoint=None, retry_timeout_seconds=None, response_proto=None
    ):
        # As RestStore._call_endpoint and rest_utils.call_endpoint (MLflow 3.17), plus limits.
        method_to_info = self._V3_METHOD_TO_INFO if api in self._V3_APIS else self._METHOD_TO_INFO
        self._validate_workspace_support_if_specified()
        default_endpoint, method = method_to_info[api]
        endpoint = endpoint or default_endpoint
        body = json.loads(json_body) if json_body is not None else None
        response = http_request(
            self.get_host_creds(),
            endpoint,
            method,
            max_retries=self._limits.max_retries,
            backoff_factor=self._limits.backoff_factor,
            backoff_jitter=0.0,
            timeout=self._limits.timeout,
            **({"params": body} if method == "GET" else {"json": body}),
        )
        response = verify_rest_response(response, endpoint)
        response_proto = response_proto or api.Response()
        if response.status_code != 204:
            parse_dict(js_dict=json.loads(response.text), message=response_proto)
        return response_proto


class _BoundedTrackingService(TrackingServiceClient):
    def __init__(self, tracking_uri: str, store: RestStore):
        self._bounded_store = store
        super().__init__(tracking_uri)

    @property
    def store(self):
        return self._bounded_store


def bounded_client(tracking_uri: str, limits: HttpLimits = HttpLimits()) -> MlflowClient:
    """An MlflowClient whose requests to an http(s) tracking server are bounded by `limits`;
    other stores (sqlite, files) are local and get the stock client."""
    client = MlflowClient(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        store = _BoundedRestStore(lambda: get_default_host_creds(tracking_uri), limits)
        client._tracking_client = _BoundedTrackingService(tracking_uri, store)
    return client


@contextlib.contextmanager
def process_http_limits(limits: HttpLimits = HttpLimits()) -> Iterator[None]:
    """For the calls inside, bound every MLflow request of the whole process by `limits`
    (MLFLOW_HTTP_REQUEST_TIMEOUT, _MAX_RETRIES, _BACKOFF_FACTOR, which MLflow reads on each
    request; whole seconds). Meant for fluent calls that take no limits, such as
    `mlflow.end_run()`, at a moment when no other thread waits on MLflow."""
    values = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(limits.timeout))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(limits.max_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(round(limits.backoff_factor)),
    }
    with _ENVIRONMENT_LOCK:
        saved = {name: os.environ.get(name) for name in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
