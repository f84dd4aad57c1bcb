import os

# Quiet, offline tools, set before any of them is imported (the Makefile sets them too).
for key, value in {"DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
                   "MLFLOW_DISABLE_TELEMETRY": "true",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}.items():
    os.environ.setdefault(key, value)
