"""Train and evaluate flows under Prefect, recorded in a temporary MLflow store: what was
logged, resuming from a checkpoint, and the champion alias."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from media import write_images
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter

from flows import tracking
from flows.evaluate import main as evaluate_main
from flows.prepare import main as prepare_main
from flows.train import main as train_main

EXPERIMENT = {
    "dataset": "pics_P50",
    "generator": {"kind": "image", "latent_dim": 4, "widths": [16, 8]},
    "abp": {
        "sigma": 0.3,
        "step_size": 0.1,
        "langevin_steps": 3,
        "learning_rate": 0.003,
        "batch_size": 8,
    },
    "training": {"epochs": 3, "checkpoint_every": 1, "media_every": 2},
    "evaluation": {"n_steps": 20, "n_samples": 4},
}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A repository-like folder with prepared data and its own MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # System metrics are sampled every 10 s by default: longer than these tiny trainings.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    write_images(tmp_path / "raw", 24, size=(16, 16), mode="L")
    params = {
        "datasets": {
            "pics": {"kind": "images", "source": "raw", "image_size": 16, "test_fraction": 0.25}
        },
        "variants": {
            "pics_P50": {
                "kind": "occlusion",
                "base": "pics",
                "pattern": "salt_pepper",
                "hidden_fraction": 0.5,
                "block": 3,
            },
            "pics_own": {
                "kind": "compressed",
                "base": "pics",
                "operator": "gaussian",
                "ratio": 0.25,
                "per_example": True,
            },
        },
        "experiments": {"tiny": EXPERIMENT, "own": {**EXPERIMENT, "dataset": "pics_own"}},
    }
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert prepare_main(["pics"]) == 0 and prepare_main(["pics_P50"]) == 0
    return tmp_path


def set_epochs(epochs: int, **execution: bool) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["experiments"]["tiny"]["training"]["epochs"] = epochs
    params["experiments"]["tiny"].setdefault("execution", {}).update(execution)
    Path("params.yaml").write_text(yaml.safe_dump(params))


def test_train_and_evaluate_record_everything_in_one_mlflow_run(workspace):
    assert train_main(["tiny"]) == 0
    models = workspace / "models" / "tiny"
    assert {p.name for p in models.iterdir()} >= {
        "generator.pt",
        "latent_bank.pt",
        "history.json",
        "mlflow_run.json",
        "checkpoints",
    }
    assert torch.load(models / "latent_bank.pt", weights_only=True).shape == (18, 4)
    assert [h["epoch"] for h in json.loads((models / "history.json").read_text())] == [1, 2, 3]
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    trained = client.get_run(json.loads((models / "mlflow_run.json").read_text())["mlflow_run_id"])
    assert trained.info.status == "FINISHED"

    assert evaluate_main(["tiny"]) == 0
    # The metrics live apart from the figures, in a folder committed with git.
    metrics = json.loads((workspace / "metrics" / "experiments" / "tiny.json").read_text())
    errors = {"train_mae", "train_hidden_mae", "heldout_mae", "heldout_hidden_mae"}
    assert set(metrics) == (
        errors
        | {f"{baseline}_{k}" for k in errors for baseline in ("vae", "vae_refined", "pca")}
        | {f"trivial_{k}" for k in errors}
        | {"pca_components", "latent_size", "train_examples"}
    )
    assert metrics["pca_components"] == metrics["latent_size"] == 4  # PCA with the same d
    assert metrics["train_examples"] == 18
    assert 0 < metrics["trivial_heldout_hidden_mae"] < 0.5  # random pixels: no method wins
    report = workspace / "reports" / "experiments" / "tiny"
    assert not (report / "metrics.json").exists()
    assert {p.name for p in (report / "figures").iterdir()} == {
        "samples.png",
        "vae_samples.png",
        "truth.png",
        "reconstructions.png",
        "training.png",
    }
    index = json.loads((report / "media" / "index.json").read_text())  # never an empty folder
    assert index["media"] == [] and "no sound or video" in index["note"]
    assert {f["file"] for f in index["figures"]} == {
        f"../figures/{name}"
        for name in (
            "samples.png",
            "vae_samples.png",
            "truth.png",
            "reconstructions.png",
            "training.png",
        )
    }
    assert "truth, observed, ABP, VAE, VAE + descent, PCA d=4" in next(
        f["shows"] for f in index["figures"] if f["file"].endswith("reconstructions.png")
    )

    run_info = json.loads((models / "mlflow_run.json").read_text())
    run = client.get_run(run_info["mlflow_run_id"])
    # Evaluation logged into the run without reopening it: its duration is the training's.
    assert (run.info.status, run.info.end_time) == (trained.info.status, trained.info.end_time)
    assert run.info.artifact_uri.startswith("abp-local:/mlartifacts/")  # beside mlflow.db
    # and the evaluation's numbers on the logged generator's page (Models view) too
    logged = client.get_logged_model(run_info["model_uri"].removeprefix("models:/"))
    assert {"heldout_mae", "vae_heldout_mae", "pca_heldout_mae"} <= {m.key for m in logged.metrics}
    assert client.get_experiment(run.info.experiment_id).name == "abp-pics_P50"
    assert run.info.run_name == "tiny-image-abp"
    assert run.data.params["abp.sigma"] == "0.3" and run.data.params["generator.kind"] == "image"
    assert run.data.params["generator_resolved.image_size"] == "16"
    assert {"git_commit", "dvc_stage", "prefect_flow_run_id", "device"} <= set(run.data.tags)
    assert run.data.tags["dvc_stage"] == "train@tiny" and run.data.tags["device"] == "cpu"
    energy = client.get_metric_history(run.info.run_id, "energy")
    assert [m.step for m in energy] == [1, 2, 3]
    assert run.data.metrics["heldout_mae"] == pytest.approx(metrics["heldout_mae"])
    assert run.data.metrics["pca_components"] == 4
    assert any(k.startswith("system/") for k in run.data.metrics)  # system metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"latents", "history.json", "evaluation", "images"} <= artifacts
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert evaluation == {
        f"evaluation/{name}"
        for name in (  # no media folder for images
            "samples.png",
            "vae_samples.png",
            "truth.png",
            "reconstructions.png",
            "training.png",
        )
    }
    images = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert any("samples+step+0+" in p for p in images)  # before training: the chart's start
    assert any("samples+step+2+" in p for p in images)  # the sample grid at epoch 2
    assert any("samples+step+3+" in p for p in images)  # and at the last epoch

    version = client.get_model_version_by_alias("abp-tiny", "champion")
    assert str(version.version) == "1" and version.tags["mlflow_run_id"] == run.info.run_id
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    model = mlflow.pytorch.load_model("models:/abp-tiny@champion")
    assert model(torch.zeros(2, 4)).shape == (2, 1, 16, 16)

    # Prefect: flow runs named after what they did, artifacts linking to the MLflow run.
    with get_client(sync_client=True) as prefect:
        names = {r.name for r in prefect.read_flow_runs()}
        assert {"train tiny", "evaluate tiny"} <= names
        url = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        link = f"[{run.info.run_id}]({url}) (open `mlflow ui` first)"
        for key in ("train-tiny", "evaluate-tiny"):
            assert (
                link
                in prefect.read_latest_artifacts(
                    artifact_filter=ArtifactCollectionFilter(key={"any_": [key]})
                )[0].data
            )


def test_per_example_measurements_train_and_evaluate_beside_the_baselines(workspace):
    assert prepare_main(["pics_own"]) == 0
    assert train_main(["own"]) == 0 and evaluate_main(["own"]) == 0
    metrics = json.loads((workspace / "metrics" / "experiments" / "own.json").read_text())
    for method in ("", "vae_", "vae_refined_", "pca_", "trivial_"):
        for error in ("train_mae", "heldout_mae"):
            assert 0 < metrics[f"{method}{error}"] < 1, (method, error, metrics)


def test_more_epochs_resume_the_checkpoint_into_the_same_run(workspace):
    set_epochs(2)
    assert train_main(["tiny"]) == 0
    first = json.loads((workspace / "models" / "tiny" / "mlflow_run.json").read_text())
    set_epochs(4, cuda_graphs=True)  # a switch of how it runs, not what: still resumes
    with pytest.warns(UserWarning, match="cuda_graphs is on but training runs on cpu"):
        assert train_main(["tiny"]) == 0
    resumed = json.loads((workspace / "models" / "tiny" / "mlflow_run.json").read_text())
    assert resumed["mlflow_run_id"] == first["mlflow_run_id"] and resumed["epochs"] == 4
    history = json.loads((workspace / "models" / "tiny" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    resumed_weights = torch.load(workspace / "models" / "tiny" / "generator.pt", weights_only=True)

    # The same 4 epochs in one go (a fresh models folder) give the same weights.
    assert train_main(["tiny", "--models-root", "straight"]) == 0
    straight = torch.load(workspace / "straight" / "tiny" / "generator.pt", weights_only=True)
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed_weights["state_dict"][key], value, atol=1e-6, rtol=0)


def test_champion_alias_moves_only_to_a_better_model(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    client.create_registered_model("abp-x")
    for error in (0.5, 0.7, 0.4):
        with mlflow.start_run():
            mlflow.log_text("weights", "model.txt")
            uri = f"runs:/{mlflow.active_run().info.run_id}/model.txt"
        version = client.create_model_version("abp-x", uri).version
        tracking.promote_if_better("abp-x", version, error)
    assert str(client.get_model_version_by_alias("abp-x", "champion").version) == "3"
    assert [tracking.promote_if_better("abp-x", "2", 0.7)] == [False]


def test_bad_generator_settings_fail_before_any_work(workspace, capsys):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["experiments"]["tiny"]["generator"] = {"kind": "image", "latent_dim": 4, "widths": [8]}
    params["experiments"]["tiny"]["generator"]["image_size"] = 8
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert train_main(["tiny"]) == 2
    assert (
        "experiments.tiny.generator: the generator makes signals of shape [1, 8, 8], "
        "but pics_P50 holds [1, 16, 16]"
    ) in capsys.readouterr().err
    assert not (workspace / "models").exists() and not (workspace / "mlflow.db").exists()
