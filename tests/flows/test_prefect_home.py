"""The pipeline's Prefect state lives in .prefect/ at the repository root: `make run` and
direct flow runs record there (never in ~/.prefect), `make prefect-ui` shows it, and the test
suite uses neither."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.prefect_home import project_home, use_project_home

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_the_home_is_the_repository_s_unless_the_user_set_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no profiles file there
    repo = tmp_path / "repo"
    environ = {}
    assert use_project_home(environ, root=repo) == repo / ".prefect"
    assert environ == {"PREFECT_HOME": str(repo / ".prefect")}

    mine = {"PREFECT_HOME": "/somewhere/mine"}
    assert use_project_home(mine, root=repo) is None and mine == {"PREFECT_HOME": "/somewhere/mine"}

    # The user's server is still used; only the state moves.
    server = {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    use_project_home(server, root=repo)
    assert server == {
        "PREFECT_API_URL": "http://127.0.0.1:4200/api",
        "PREFECT_HOME": str(repo / ".prefect"),
    }


def test_the_user_s_profiles_stay_in_use(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    profiles = tmp_path / ".prefect" / "profiles.toml"
    profiles.parent.mkdir()
    profiles.write_text('active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "http://x/api"\n')
    environ = {}
    use_project_home(environ, root=tmp_path / "repo")
    assert environ["PREFECT_PROFILES_PATH"] == str(profiles)
    chosen = {"PREFECT_PROFILES_PATH": "/elsewhere/profiles.toml"}
    use_project_home(chosen, root=tmp_path / "repo")
    assert chosen["PREFECT_PROFILES_PATH"] == "/elsewhere/profiles.toml"


def test_the_test_session_has_a_temporary_prefect_home():
    from prefect.settings import get_current_settings

    # (Prefect's home as it read it at import: a session fixture may point PREFECT_HOME
    # elsewhere since, for the servers it starts.)
    home = get_current_settings().home
    assert home.name.startswith("abp-tests-prefect-") and home.is_relative_to(tempfile.gettempdir())
    assert home not in (Path.home() / ".prefect", project_home(REPO))


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user who has set nothing for Prefect, with `home` as $HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "HOME": str(home)}


SETTINGS = """
import sys
{first}
from prefect.settings import get_current_settings
settings = get_current_settings()
print(settings.home)
print(settings.server.database.connection_url.get_secret_value())
"""


def test_importing_flows_first_sets_prefect_s_home_and_database(tmp_path):
    repo, home = tmp_path / "repo", tmp_path / "home"
    repo.mkdir(), home.mkdir()

    def settings(first: str, **env: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", SETTINGS.format(first=first)],
            cwd=repo,
            env={**user_env(home), **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    # Every `python -m flows.<stage>` imports the package `flows` before its module.
    assert settings("import flows") == [
        str(repo / ".prefect"),
        f"sqlite+aiosqlite:///{repo / '.prefect' / 'prefect.db'}",
    ]
    assert not (home / ".prefect").exists()
    mine = str(tmp_path / "mine")
    assert settings("import flows", PREFECT_HOME=mine)[0] == mine
    # Prefect imported before `flows` (a notebook): its home stays, for the children too.
    assert settings("import prefect, flows, os; assert 'PREFECT_HOME' not in os.environ")[0] == str(
        home / ".prefect"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def api(url: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow  # real flow runs and a Prefect UI server
def test_runs_started_as_users_do_land_in_the_repository_which_prefect_ui_shows(tmp_path):
    repo, home = tmp_path / "repo", tmp_path / "home"
    repo.mkdir(), home.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    digits = {"bundled": {"digits": params["bundled"]["digits"]}}
    (repo / "params.yaml").write_text(yaml.safe_dump(digits))
    env = user_env(home)
    prepare = [sys.executable, "-m", "flows.prepare", "digits"]
    for command in (
        [sys.executable, "-m", "flows.local_server", "--", *prepare],  # make run's way
        prepare,
    ):  # directly: a temporary server
        done = subprocess.run(
            command, cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr[-3000:]

    database = repo / ".prefect" / "prefect.db"
    with sqlite3.connect(database) as db:
        runs = db.execute(
            "SELECT flow_run.id, flow.name, flow_run.state_type FROM flow_run "
            "JOIN flow ON flow_run.flow_id = flow.id"
        ).fetchall()
    assert [(name, state) for _, name, state in runs] == [("prepare", "COMPLETED")] * 2
    assert not (home / ".prefect").exists() and not list(home.rglob("prefect.db"))

    # `make prefect-ui` in the repository (its .venv taken as installed): the same runs.
    port = free_port()
    ui = subprocess.Popen(
        [
            "make",
            "-s",
            "-f",
            str(REPO / "Makefile"),
            "-o",
            ".venv/.installed",
            "prefect-ui",
            f"BIN={BIN}",
            f"PREFECT_UI_PORT={port}",
        ],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                api(url, "/api/health")
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, "the UI did not start"
                time.sleep(0.5)
        shown = api(url, "/api/flow_runs/filter", {})
        assert sorted(run["id"] for run in shown) == sorted(run_id for run_id, _, _ in runs)
        with urllib.request.urlopen(url, timeout=10) as page:  # the UI itself
            assert b"<html" in page.read()
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        out, _ = ui.communicate(timeout=60)
    assert f"Prefect state: {repo / '.prefect'}" in out
    assert not (home / ".prefect").exists()
