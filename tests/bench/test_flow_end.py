"""The flow-end benchmark runs against a real Prefect server and prints both rows and the
difference. (Its numbers are not tested here: they are what the benchmark is for.)"""

import math

import pytest

from bench.flow_end import main

pytestmark = pytest.mark.slow  # a real Prefect server, started and stopped


def test_prints_both_rows_and_the_saving(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    main(["--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:3]}
    assert set(rows) == {"on", "off"}
    assert all(math.isfinite(float(v[0])) and float(v[0]) > 0 for v in rows.values())
    assert lines[-1].startswith("saved_per_run=")
