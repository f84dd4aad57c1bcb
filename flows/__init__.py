"""Pipeline layer: Prefect flows that compose the `abp` library, tracked in MLflow.

Importing the package sets quiet, offline defaults for the tools (no telemetry or
analytics; a generous start-up time for Prefect's temporary server) and keeps the
pipeline's Prefect state in ./.prefect (see flows/prefect_home.py), unless the user has set
them already.
"""

import os

for _key, _value in {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}.items():
    os.environ.setdefault(_key, _value)

# Before anything imports Prefect, which reads its settings and creates its home at import.
from flows.prefect_home import use_project_home_before_prefect  # noqa: E402

use_project_home_before_prefect()
