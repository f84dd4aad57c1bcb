"""A command run beside a real local Prefect server, which is stopped afterwards."""

import sys
import urllib.request

import pytest

from flows.local_server import main

CHECK = """
import os, urllib.request
url = os.environ["PREFECT_API_URL"]
assert url.startswith("http://127.0.0.1:"), url
print(url)
assert urllib.request.urlopen(url + "/health", timeout=5).status == 200
"""


def test_command_sees_a_live_server_on_loopback_which_stops_afterwards(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert main(["--", sys.executable, "-c", CHECK]) == 0
    url = capfd.readouterr().out.strip().splitlines()[-1]
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=2)


def test_exit_status_of_the_command_is_returned(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # given: no server started
    assert main([sys.executable, "-c", "raise SystemExit(3)"]) == 3
