"""Where the pipeline keeps its Prefect state: `.prefect/` at the repository root.

The pipeline's flow runs, logs and results live in `.prefect/` in the directory the pipeline
runs in (the repository root, beside mlflow.db), not in the user's ~/.prefect: importing the
`flows` package sets PREFECT_HOME to it before Prefect is imported (Prefect reads its
settings, and creates its home, at import). So `make run`, a direct `python -m flows.train`
(Prefect's temporary server) and their child processes all use one database,
`.prefect/prefect.db`, which `make prefect-ui` (flows/prefect_ui.py) shows.

PREFECT_HOME set by the user wins: then nothing is changed. Everything else the user chose
still applies: PREFECT_API_URL (a server, Prefect Cloud) is left as it is, and so is the
user's profiles file (~/.prefect/profiles.toml, e.g. a server chosen with `prefect profile
use`, read where it is); only the state (database, results, memo store) moves. So
`flows.serve`, which needs PREFECT_API_URL, keeps its state here too.

Only the standard library is imported here: `flows/__init__.py` runs this first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

STATE_DIR = ".prefect"


def project_home(root: Path | str = ".") -> Path:
    """The pipeline's PREFECT_HOME for a repository at `root`."""
    return Path(root).resolve() / STATE_DIR


def use_project_home(
    environ: MutableMapping[str, str] = os.environ, root: Path | str = "."
) -> Path | None:
    """Set PREFECT_HOME in `environ` to `project_home(root)` unless it is set already; return
    the home set, or None. The user's profiles file, if there is one, stays in use
    (PREFECT_PROFILES_PATH): its active profile still decides the Prefect API (Prefect
    otherwise looks for it in PREFECT_HOME)."""
    if environ.get("PREFECT_HOME"):
        return None
    user_profiles = Path("~", ".prefect", "profiles.toml").expanduser()
    if not environ.get("PREFECT_PROFILES_PATH") and user_profiles.is_file():
        environ["PREFECT_PROFILES_PATH"] = str(user_profiles)
    home = project_home(root)
    environ["PREFECT_HOME"] = str(home)
    return home


def use_project_home_before_prefect() -> None:
    """`use_project_home()` for this process and its children, if Prefect is not imported
    yet: once it is, its home is chosen, and a different one for the children would split
    the state in two."""
    if "prefect" not in sys.modules:
        use_project_home()
