"""The Prefect UI on the pipeline's runs, on 127.0.0.1.

    make prefect-ui                          # http://127.0.0.1:4200, Ctrl-C stops it
    python -m flows.prefect_ui --port 4300   # the same; ARGS go to `prefect server start`

It serves the database the pipeline records into (`.prefect/prefect.db` at the repository
root, see flows/prefect_home.py; PREFECT_HOME, if set, wins), so it shows the runs of
`make run` and of direct `python -m flows.<stage>` runs, past and (while it runs) new ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flows.prefect_home import use_project_home


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    use_project_home()  # as importing `flows` did, unless Prefect was imported first
    home = Path(os.environ["PREFECT_HOME"])
    print(f"Prefect state: {home} (database {home / 'prefect.db'})", flush=True)
    # A server serves its own API: a PREFECT_API_URL (e.g. exported for flows.serve) is not
    # for it.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", *argv]
    os.execve(sys.executable, command, env)  # Ctrl-C and SIGTERM go straight to the server


if __name__ == "__main__":
    sys.exit(main())
