"""Run a command with a local Prefect server on 127.0.0.1, then stop the server.

    python -m flows.local_server -- dvc repro

Without PREFECT_API_URL every flow process starts (and stops) its own temporary Prefect
server, which costs about 5 s per DVC stage. One server for the whole `dvc repro` saves that,
and every flow run reports to it. If PREFECT_API_URL is already set, that server is used and
none is started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from typing import Iterator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def local_prefect_server(timeout: float = 90) -> Iterator[str]:
    """Start `prefect server start` on 127.0.0.1 and a free port; yield its API URL."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(api_url):
            if server.poll() is not None:
                raise RuntimeError("the Prefect server exited at start: "
                                   + server.stderr.read().decode(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not answer on {api_url} "
                                   f"within {timeout:.0f} s")
            time.sleep(0.25)
        yield api_url
    finally:
        # SIGTERM to the whole session: the server and the workers it started.
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m flows.local_server -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if os.environ.get("PREFECT_API_URL"):
        return subprocess.call(argv)
    with local_prefect_server() as api_url:
        print(f"Prefect server on {api_url} for: {' '.join(argv)}", flush=True)
        return subprocess.call(argv, env={**os.environ, "PREFECT_API_URL": api_url})


if __name__ == "__main__":
    sys.exit(main())
