"""The model registry: `abp-<experiment>` names, versions that say how to use them, and
registry.sample / registry.load, including the README's example run as written."""

import json
import re
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from media import write_images
from PIL import Image

from flows import registry, tracking
from flows.evaluate import record
from flows.experiment import load_experiment
from flows.prepare import main as prepare_main

README = Path(__file__).parents[2] / "README.md"
GENERATOR = {"kind": "image", "widths": [8]}
ABP = {"sigma": 0.3, "step_size": 0.1, "langevin_steps": 2, "learning_rate": 0.003, "batch_size": 4}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A repository-like folder whose ./mlflow.db (the default store, no MLFLOW_TRACKING_URI)
    holds generators of the experiments `digits` (d = 3) and `digits_d2` (d = 2),
    registered by the evaluate flow's `record`."""
    root = tmp_path_factory.mktemp("repo")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", "unset below; restored after the module")
        patch.delenv("MLFLOW_TRACKING_URI")
        write_images(root / "raw", 12, size=(8, 8), mode="L")
        Path("params.yaml").write_text(
            yaml.safe_dump(
                {
                    "datasets": {
                        "digits": {
                            "kind": "images",
                            "source": "raw",
                            "image_size": 8,
                            "test_fraction": 0.25,
                        }
                    },
                    "experiments": {
                        name: {
                            "dataset": "digits",
                            "generator": {**GENERATOR, "latent_dim": d},
                            "abp": ABP,
                            "training": {"epochs": 1},
                        }
                        for name, d in (("digits", 3), ("digits_d2", 2))
                    },
                }
            )
        )
        assert prepare_main(["digits"]) == 0
        figures = root / "figures"
        figures.mkdir()
        Image.new("L", (4, 4)).save(figures / "samples.png")
        generators = {}
        for name in ("digits", "digits_d2"):
            exp = load_experiment(name)
            generators[name] = exp.build_generator().eval()
            tracking.configure()
            with mlflow.start_run(experiment_id=tracking.experiment_id("abp-digits")) as run:
                pass
            assert record(
                exp,
                generators[name],
                {"mlflow_run_id": run.info.run_id},
                {"train_mae": 0.2, "heldout_mae": 0.1},
                figures,
            )  # the champion
        yield root, generators


def test_a_registered_version_says_how_to_use_it(store):
    root, _ = store
    assert registry.model_name("faces_P50") == "abp-faces_P50"  # underscores kept
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert {m.name for m in client.search_registered_models()} == {"abp-digits", "abp-digits_d2"}
    version = client.get_model_version_by_alias("abp-digits_d2", "champion")
    tags = version.tags
    run = client.get_run(tags["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "abp-digits"
    manifest = json.loads((root / "data" / "prepared" / "digits" / "manifest.json").read_text())
    assert {
        k: tags[k]
        for k in (
            "experiment",
            "generator_kind",
            "latent_shape",
            "dataset",
            "dataset_kind",
            "signal_shape",
            "data_digest",
        )
    } == {
        "experiment": "digits_d2",
        "generator_kind": "image",
        "latent_shape": "[2]",
        "dataset": "digits",
        "dataset_kind": "image",
        "signal_shape": "[1, 8, 8]",
        "data_digest": tracking.data_digest(manifest),
    }
    assert tags["abp.sigma"] == "0.3" and tags["generator.latent_dim"] == "2"
    assert tags["generator_resolved.image_size"] == "8" and tags["heldout_mae"] == "0.1"
    assert "fps" not in tags and "sample_rate" not in tags  # images have neither
    assert "registry.sample('digits_d2', n=16, seed=0, version=1)" in version.description
    assert 'load_model("models:/abp-digits_d2/1")' in version.description
    assert "torch.randn(16, 2)" in version.description


def test_sample_draws_from_the_registered_generator(store):
    _, generators = store
    drawn = registry.sample("digits_d2", n=5, seed=7)
    z = torch.randn((5, 2), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(drawn, generators["digits_d2"](z))
    assert not torch.equal(registry.sample("digits_d2", n=5, seed=8), drawn)
    model, info = registry.load("digits", version=1)
    assert (info.name, info.version, info.latent_shape) == ("abp-digits", "1", (3,))
    assert info.model_uri == "models:/abp-digits/1" and info.tags["experiment"] == "digits"
    assert model(torch.zeros(1, 3)).shape == (1, 1, 8, 8)


def test_a_version_without_tags_is_sampled_through_its_signature(store):
    root, _ = store
    # Registered the way evaluations did before versions carried tags.
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    source = mlflow.MlflowClient().get_model_version("abp-digits", "1").source
    mlflow.register_model(source, "abp-old")
    torch.testing.assert_close(
        registry.sample("old", n=3, seed=1, version=1), registry.sample("digits", n=3, seed=1)
    )


def test_a_missing_model_or_store_is_named(store, tmp_path):
    with pytest.raises(
        registry.NotRegistered,
        match=r"no alias champion of the registered "
        r"model abp-nope in sqlite:///.*mlflow\.db \(registered models there: "
        r"abp-digits, abp-digits_d2.*python -m flows\.evaluate nope",
    ):
        registry.sample("nope")
    with pytest.raises(
        registry.NotRegistered, match="no version 9 of the registered model abp-digits "
    ):
        registry.load("digits", version=9)
    with pytest.raises(tracking.TrackingUnavailable, match="no MLflow store at"):
        registry.load("digits", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists()  # not created empty by the look-up


def test_the_readme_example_runs_as_written(store):
    root, _ = store
    section = README.read_text().split("### Tracking with MLflow\n")[1].split("\n### ")[0]
    (example,) = [
        b for b in re.findall(r"```python\n(.*?)```", section, re.DOTALL) if "registry.sample" in b
    ]
    exec(compile(example, str(README), "exec"), {})  # the README's own code
    written = re.search(r'save_png\(.*"(.+\.png)"\)', example).group(1)
    with Image.open(root / written) as image:  # 16 digits, 4×4, enlarged
        assert image.size[0] == image.size[1] >= 256
