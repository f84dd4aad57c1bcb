"""`dvc repro` end to end on a tiny params override, in a temporary copy of the repository:
the real dvc.yaml, Prefect flows and an MLflow store in the copy. Then the comparison DVC
offers: the run committed, one setting changed with `dvc exp run -S`, and `dvc metrics diff`
and `dvc exp show` show the values before and after (the metrics live in git, under
metrics/)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.serialize import dumps_yaml

# Real `dvc repro` runs in subprocesses: `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
METRICS = "metrics/experiments/digits_P50.json"


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["bundled"] = {"digits": {**params["bundled"]["digits"]}}
    params["datasets"] = {}
    params["variants"] = {
        "digits_P50": {
            "base": "digits",
            "kind": "occlusion",
            "pattern": "salt_pepper",
            "hidden_fraction": 0.5,
            "block": 3,
            "seed": 1,
        }
    }
    params["experiments"] = {
        "digits_P50": {
            "dataset": "digits_P50",
            "generator": {"kind": "image", "latent_dim": 4, "widths": [16]},
            "abp": {"langevin_steps": 2, "batch_size": 256, "learning_rate": 0.003},
            "training": {"epochs": 2, "checkpoint_every": 1, "media_every": 1},
            "evaluation": {"n_steps": 10},
        }
    }
    return params


def dvc(copy: Path, *args: str, runs_stages: bool = True) -> subprocess.CompletedProcess:
    """`dvc <args>` in the copy; beside one local Prefect server when stages may run (as
    `make run` does), plain otherwise (a server costs ~7 s to start)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # As on a user's machine: Python writes bytecode caches (__pycache__/ in abp/, a stage
    # dependency), which must not make a stage look changed.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    server = [sys.executable, "-m", "flows.local_server", "--"] if runs_stages else []
    result = subprocess.run(
        [*server, "dvc", *args],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # Every stage ran in the warm stage runner beside the server (flows/stage.py says so
    # when one runs in its own process instead).
    assert "in this process" not in result.stderr, result.stderr[-3000:]
    return result


def git(copy: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=copy,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def json_of(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    return json.loads(out[min(i for i in (out.find("{"), out.find("[")) if i >= 0) :])


def ran(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [line for line in result.stdout.splitlines() if line.startswith("Running stage")]


def test_dvc_repro_runs_every_stage_reruns_only_what_changed_and_compares_metrics(tmp_path):
    copy = tmp_path / "repo"
    files = git(REPO, "ls-files", "--cached", "--others", "--exclude-standard").split()
    for name in files:
        if name != "dvc.lock" and not name.startswith("metrics/") and (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    # In the layout `dvc exp run -S` writes back (DVC's own YAML dumper), as params.yaml is.
    (copy / "params.yaml").write_text(dumps_yaml(tiny_params()))
    git(copy, "init", "-q")
    git(copy, "add", "-A")
    git(copy, "commit", "-qm", "copy")

    first = dvc(copy, "repro")
    stages = (
        "bundled@digits",
        "variant@digits_P50",
        "train@digits_P50",
        "evaluate@digits_P50",
        "report",
    )
    assert ran(first) == [f"Running stage '{stage}':" for stage in stages]
    shown = json_of(dvc(copy, "metrics", "show", "--json", runs_stages=False))
    values = next(iter(shown.values()))["data"][METRICS]["data"]
    assert 0 < values["heldout_hidden_mae"] < 0.5 and "train_hidden_mae" in values
    assert (copy / "mlflow.db").is_file() and any((copy / "mlartifacts").iterdir())
    figures = copy / "reports" / "experiments" / "digits_P50" / "figures"
    assert (figures / "reconstructions.png").is_file()
    summary = json.loads((copy / "metrics" / "summary.json").read_text())
    recovery = summary["digits"]["occlusion"]["P50"]
    assert recovery["abp"] == values["train_hidden_mae"]
    assert recovery["pca"] == values["pca_train_hidden_mae"]
    assert recovery["vae_refined"] == values["vae_refined_train_hidden_mae"]
    assert (figures / "vae_samples.png").is_file()
    report = (copy / "reports" / "REPORT.md").read_text()
    assert "digits: recovery of occluded training pixels" in report and "| P.5 |" in report
    assert (copy / "reports" / "figures" / "digits_occlusion.png").is_file()

    assert ran(dvc(copy, "repro")) == []

    # The metrics are git-tracked files (DVC writes no .gitignore for them), so a commit
    # keeps them, and DVC compares an experiment with it.
    git(copy, "add", "-A")
    git(copy, "commit", "-qm", "the first run")
    assert git(copy, "ls-files", "metrics").split() == [METRICS, "metrics/summary.json"]

    changed = dvc(copy, "exp", "run", "-S", "experiments.digits_P50.evaluation.n_steps=12")
    assert ran(changed) == ["Running stage 'evaluate@digits_P50':", "Running stage 'report':"]
    assert git(copy, "diff", "--numstat", "params.yaml").split() == ["1", "1", "params.yaml"]

    diff = json_of(dvc(copy, "metrics", "diff", "--all", "--json", runs_stages=False))
    heldout = diff[METRICS]["heldout_mae"]
    assert heldout["old"] > 0 and heldout["new"] > 0 and heldout["old"] != heldout["new"]
    assert diff["metrics/summary.json"]["digits.occlusion.P50.abp"]["old"] == recovery["abp"]

    # dvc exp show: the baseline commit and the experiment, each with its numbers (a
    # metrics file that is not in the commit shows as `!` here, and as `-` in the diff).
    rows = json_of(dvc(copy, "exp", "show", "--json", runs_stages=False))
    baseline = next(row for row in rows if row["rev"] != "workspace")
    experiments = [run for e in baseline["experiments"] for run in e["revs"]]
    assert len(experiments) == 1
    for row in (baseline, experiments[0]):
        metrics = row["data"]["metrics"][METRICS]["data"]
        assert metrics["heldout_mae"] > 0
    assert experiments[0]["data"]["metrics"][METRICS]["data"]["heldout_mae"] == heldout["new"]

    # `make exp-show`: the setting that changed and the errors that matter, nothing else.
    shown = subprocess.run(
        ["make", "-s", "exp-show", f"BIN={BIN}", "EXP=digits_P50"],
        cwd=copy,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    table = shown.strip().splitlines()
    header = [column.strip() for column in table[0].strip("|").split("|")]
    assert header[0] == "Experiment"
    assert header[-1] == "experiments.digits_P50.evaluation.n_steps"
    assert (
        {"heldout_mae", "pca_heldout_mae", "train_hidden_mae"}
        <= set(header[1:-1])
        <= {
            "heldout_mae",
            "vae_heldout_mae",
            "vae_refined_heldout_mae",
            "pca_heldout_mae",
            "trivial_heldout_mae",
            "train_mae",
            "train_hidden_mae",
        }
    )
    assert len(table) == 2 + 3  # header, rule, workspace, the commit, the experiment
