"""python -m flows.compare on a real sqlite store: the latest finished run of each
experiment, the settings that differ, the final metrics, the champion; clear errors."""

import mlflow
import pandas as pd
import pytest

from flows import registry, tracking
from flows.compare import main as compare_main


def log_run(
    experiment: str, latent_dim: int, heldout_mae: float, *, status: str = "FINISHED"
) -> str:
    with mlflow.start_run(
        experiment_id=tracking.experiment_id("abp-digits"), run_name=f"{experiment}-image-abp"
    ) as run:
        mlflow.set_tags({"experiment": experiment, "dvc_stage": f"train@{experiment}"})
        mlflow.log_params(
            {"dataset": "digits", "abp.sigma": 0.3, "generator.latent_dim": latent_dim}
        )
        for step, energy in enumerate((30.0, 20.0), start=1):
            mlflow.log_metric("energy", energy, step=step)
        mlflow.log_metrics(
            {
                "heldout_mae": heldout_mae,
                "train_mae": heldout_mae / 2,
                "system/cpu_utilization_percentage": 50.0,
            }
        )
        mlflow.log_text("weights", "model.txt")
    if status != "FINISHED":
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Runs of three experiments (digits_d2's from before runs had the `experiment` tag);
    the champion of abp-digits is the older digits run."""
    folder = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        tracking.configure()
        runs = {
            "champion": log_run("digits", 10, 0.05),
            "latest": log_run("digits", 10, 0.06),
            "failed": log_run("digits", 10, 0.01, status="FAILED"),
            "d20": log_run("digits_d20", 20, 0.04),
            "d2": log_run("digits_d2", 2, 0.1),
        }
        mlflow.MlflowClient().delete_tag(runs["d2"], "experiment")
        client, name = mlflow.MlflowClient(), registry.model_name("digits")
        client.create_registered_model(name)
        for key, error in (("champion", 0.05), ("latest", 0.06)):  # the later one is worse
            version = client.create_model_version(
                name, f"runs:/{runs[key]}/model.txt", run_id=runs[key]
            ).version
            tracking.promote_if_better(name, version, error)
        yield folder, runs


def test_latest_finished_runs_side_by_side_with_the_champion_marked(store, capsys):
    folder, runs = store
    assert compare_main(["digits", "digits_d20", "--csv", str(folder / "out.csv")]) == 0
    printed = capsys.readouterr().out
    assert f"MLflow: sqlite:///{folder / 'mlflow.db'}" in printed
    table = pd.read_csv(folder / "out.csv", index_col="field")
    assert list(table.columns) == ["digits", "digits_d20"]
    assert list(table.loc["run_id"]) == [runs["latest"], runs["d20"]]  # not the failed one
    assert list(table.loc["champion"]) == ["no", "no"]
    # Only the settings that differ; errors first, then the other final metrics.
    assert [i for i in table.index if i.startswith("params.")] == ["params.generator.latent_dim"]
    assert [i for i in table.index if i.startswith("metrics.")] == [
        "metrics.heldout_mae",
        "metrics.train_mae",
        "metrics.energy",
    ]
    assert table.loc["metrics.heldout_mae"].astype(float).tolist() == [0.06, 0.04]
    assert table.loc["metrics.energy"].astype(float).tolist() == [20.0, 20.0]  # the last step
    for line in ("params.generator.latent_dim", "metrics.heldout_mae", runs["d20"]):
        assert line in printed


def test_chosen_runs_and_runs_without_the_experiment_tag(store, capsys):
    _, runs = store
    # digits_d2's run, recorded before the `experiment` tag existed, is found by its DVC stage.
    assert compare_main(["digits_d2", "digits", "--runs", runs["champion"]]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[1].split()
    assert header == [
        "digits_d2",
        "digits",
        f"({runs['latest'][:8]})",
        "digits",
        f"({runs['champion'][:8]})",
    ]
    champion_row = next(line for line in printed.splitlines() if line.startswith("champion"))
    assert champion_row.split() == ["champion", "no", "no", "yes", "(version", "1)"]


def test_unknown_experiment_or_run_or_store_is_named(store, capsys, monkeypatch):
    folder, _ = store
    assert compare_main(["digits", "nope"]) == 2
    error = capsys.readouterr().err
    assert "no finished run of experiment 'nope' (tag experiment = 'nope')" in error
    assert f"sqlite:///{folder / 'mlflow.db'}" in error
    assert "experiments with finished runs there: digits, digits_d2, digits_d20" in error
    assert "python -m flows.train nope" in error
    assert compare_main(["--runs", "0123abcd"]) == 2
    assert "no run with id 0123abcd in sqlite:///" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'elsewhere' / 'mlflow.db'}")
    assert compare_main(["digits"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_main([])
