"""`dvc repro` end to end on a tiny params override, in a temporary copy of the repository:
the real dvc.yaml, Prefect flows and an MLflow store in the copy."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {"digits": {**params["datasets"]["digits"]}}
    params["variants"] = {"digits_P50": {"base": "digits", "kind": "occlusion",
                                         "pattern": "salt_pepper", "hidden_fraction": 0.5,
                                         "block": 3, "seed": 1}}
    params["experiments"] = {"digits_P50": {
        "dataset": "digits_P50", "generator": {"kind": "image", "latent_dim": 4, "widths": [16]},
        "abp": {"langevin_steps": 2, "batch_size": 256, "learning_rate": 0.003},
        "training": {"epochs": 2, "checkpoint_every": 1, "media_every": 1},
        "evaluation": {"n_steps": 10}}}
    return params


def dvc(copy: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "flows.local_server", "--", "dvc", *args],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=600)


def test_dvc_repro_runs_prepare_train_evaluate_and_reruns_only_what_changed(tmp_path):
    copy = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if name != "dvc.lock" and (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    (copy / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t",
                                                    "commit", "-qm", "copy"]):
        subprocess.run(["git", *command], cwd=copy, check=True)

    first = dvc(copy, "repro")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in ("prepare@digits", "variant@digits_P50", "train@digits_P50",
                  "evaluate@digits_P50", "report"):
        assert f"Running stage '{stage}'" in first.stdout
    metrics = dvc(copy, "metrics", "show", "--json")
    shown = json.loads(metrics.stdout[metrics.stdout.index("{"):])
    values = next(iter(shown.values()))["data"]["reports/experiments/digits_P50/metrics.json"]["data"]
    assert 0 < values["heldout_hidden_mae"] < 0.5 and "train_hidden_mae" in values
    assert (copy / "mlflow.db").is_file() and any((copy / "mlartifacts").iterdir())
    assert (copy / "reports" / "experiments" / "digits_P50" / "figures" / "reconstructions.png").is_file()
    summary = json.loads((copy / "reports" / "summary.json").read_text())
    recovery = summary["digits"]["occlusion"]["P50"]
    assert recovery["abp"] == values["train_hidden_mae"]
    assert recovery["pca"] == values["pca_train_hidden_mae"]
    report = (copy / "reports" / "REPORT.md").read_text()
    assert "digits: recovery of occluded training pixels" in report and "| P50 |" in report
    assert (copy / "reports" / "figures" / "digits_occlusion.png").is_file()

    again = dvc(copy, "repro")
    assert "Running stage" not in again.stdout and again.returncode == 0

    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["experiments"]["digits_P50"]["evaluation"]["n_steps"] = 12
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = dvc(copy, "repro")
    assert changed.returncode == 0, changed.stderr[-3000:]
    ran = [line for line in changed.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'evaluate@digits_P50':", "Running stage 'report':"]
