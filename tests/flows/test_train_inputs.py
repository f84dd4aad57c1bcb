"""A training run says what data it saw: the prepared data set as an MLflow dataset input
(name, digest, source) and tags that select it (experiment, data digest)."""

import json
from pathlib import Path

import mlflow
import yaml
from media import write_images

from flows import tracking
from flows.prepare import main as prepare_main
from flows.train import main as train_main


def train_once(workspace: Path) -> mlflow.entities.Run:
    assert prepare_main(["pics"]) == 0
    assert train_main(["tiny"]) == 0
    summary = json.loads((workspace / "models" / "tiny" / "mlflow_run.json").read_text())
    return mlflow.get_run(summary["mlflow_run_id"])


def test_a_run_logs_its_data_set_and_a_new_data_version_a_new_digest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_images(tmp_path / "raw", 12, size=(8, 8), mode="L")
    Path("params.yaml").write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "pics": {
                        "kind": "images",
                        "source": "raw",
                        "image_size": 8,
                        "test_fraction": 0.25,
                    }
                },
                "experiments": {
                    "tiny": {
                        "dataset": "pics",
                        "generator": {"kind": "image", "latent_dim": 2, "widths": [8]},
                        "abp": {
                            "sigma": 0.3,
                            "step_size": 0.1,
                            "langevin_steps": 2,
                            "learning_rate": 0.003,
                            "batch_size": 4,
                        },
                        "training": {"epochs": 1, "checkpoint_every": 1, "media_every": 1},
                    }
                },
            }
        )
    )
    first = train_once(tmp_path)

    manifest = json.loads((tmp_path / "data" / "prepared" / "pics" / "manifest.json").read_text())
    (dataset_input,) = first.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "pics" and dataset.digest == tracking.data_digest(manifest)
    assert len(dataset.digest) == 12
    assert json.loads(dataset.source) == {"uri": str(tmp_path / "data" / "prepared" / "pics")}
    tags = {t.key: t.value for t in dataset_input.tags}
    assert tags == {
        "mlflow.data.context": "training",
        "source": "raw",
        "kind": "image",
        "signal_shape": "[1, 8, 8]",
        "train_examples": "9",
        "test_examples": "3",
    }
    assert first.data.tags["experiment"] == "tiny"
    assert first.data.tags["data_digest"] == dataset.digest
    assert first.data.tags["dvc_stage"] == "train@tiny"

    # Another version of the same data set (one more image): a new run with a new digest.
    write_images(tmp_path / "raw", 13, size=(8, 8), mode="L")
    second = train_once(tmp_path)
    assert second.info.run_id != first.info.run_id
    (dataset_input,) = second.inputs.dataset_inputs
    assert dataset_input.dataset.name == "pics"
    assert dataset_input.dataset.digest != dataset.digest
    assert second.data.tags["data_digest"] == dataset_input.dataset.digest
