import atexit
import os
import shutil
import signal
import tempfile

# The processes the tests start behave as if started from a terminal, even when the suite
# runs in the background (`nohup make test &`): a shell without job control sets SIGINT to
# ignored, nohup SIGHUP, and ignored signals stay ignored in every process started since
# (Ctrl-C would do nothing; flows.process keeps a nohup'ed command alive after its parent).
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGHUP, signal.SIG_DFL)

# Prefect: the suite never touches the user's state (~/.prefect) nor the project's (.prefect/,
# where the flows keep it, see flows/prefect_home.py), nor a server the user has configured.
# Every PREFECT_ setting of the user's is dropped, and the session gets its own PREFECT_HOME,
# set before anything imports Prefect (it reads its settings and creates its home at import)
# and inherited by every process the tests start.
for key in [key for key in os.environ if key.startswith("PREFECT_")]:
    del os.environ[key]
PREFECT_HOME = tempfile.mkdtemp(prefix="abp-tests-prefect-")
os.environ["PREFECT_HOME"] = PREFECT_HOME
atexit.register(shutil.rmtree, PREFECT_HOME, ignore_errors=True)

# Quiet, offline tools, set before any of them is imported (the Makefile sets them too).
for key, value in {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}.items():
    os.environ.setdefault(key, value)
