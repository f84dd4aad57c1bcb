"""Bad settings fail at the edge, through the real command lines: exit code 2, one line per
problem naming the params file actually used and the key, no traceback, and nothing started
(no flow, no MLflow store, no model folder, no prepared folder)."""

import math
from pathlib import Path

import pytest
import torch
import yaml

import flows.prepare
import flows.train
from abp.datasets import write_prepared

PARAMS = {
    "datasets": {
        "pics": {"kind": "images", "source": "raw", "image_size": 16},
        "stills": {"kind": "video", "source": "raw.mp4", "image_size": 8, "clip_frames": 1},
    },
    "variants": {
        "pics_M": {"kind": "occlusion", "base": "pics", "pattern": "square", "side": 30},
        "pics_P": {
            "kind": "occlusion",
            "base": "pics",
            "pattern": "salt_pepper",
            "hidden_fraction": 0.5,
            "block": 3,
        },
        "pics_cs": {"kind": "compressed", "base": "pics", "operator": "local_average", "block": 2},
        "stills_gaps": {
            "kind": "occlusion",
            "base": "stills",
            "pattern": "missing_frames",
            "hidden_fraction": 0.25,
        },
    },
    "experiments": {
        "tiny": {
            "dataset": "pics",
            "generator": {"kind": "image", "latent_dim": 4, "widths": [16, 8]},
            "abp": {
                "sigma": 0.3,
                "step_size": 0.1,
                "langevin_steps": 3,
                "learning_rate": 0.003,
                "batch_size": 8,
            },
            "training": {"epochs": 3},
        }
    },
}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A repository-like folder whose data sets are prepared (`pics`: 16×16 gray images,
    `stills`: one-frame clips), written directly so that no flow runs here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def no_flow(*args, **kwargs):
        pytest.fail("a flow started: bad settings must fail before any flow starts")

    monkeypatch.setattr(flows.train, "train", no_flow)
    monkeypatch.setattr(flows.prepare, "prepare", no_flow)
    splits = {"train": {"x": torch.zeros(6, 1, 16, 16)}, "test": {"x": torch.zeros(2, 1, 16, 16)}}
    write_prepared(
        tmp_path / "data" / "prepared" / "pics",
        splits,
        {
            "name": "pics",
            "kind": "image",
            "counts": {"train": 6, "test": 2},
            "shapes": {"train": [6, 1, 16, 16], "test": [2, 1, 16, 16]},
        },
    )
    clips = {"train": {"x": torch.zeros(3, 3, 1, 8, 8)}, "test": {"x": torch.zeros(1, 3, 1, 8, 8)}}
    write_prepared(
        tmp_path / "data" / "prepared" / "stills",
        clips,
        {
            "name": "stills",
            "kind": "video",
            "counts": {"train": 3, "test": 1},
            "shapes": {"train": [3, 3, 1, 8, 8], "test": [1, 3, 1, 8, 8]},
        },
    )
    return tmp_path


# The generator's messages name the params file given with --params, as every other does.
GENERATOR_IN_PARAMS_YAML = "other.yaml"
GENERATOR = "experiments.tiny.generator"

CASES = [
    # (command, name, params file, (key to change, value), key named, message)
    (
        "train",
        "tiny",
        GENERATOR_IN_PARAMS_YAML,
        (f"{GENERATOR}.widths", []),
        GENERATOR,
        "widths must list at least one channel count",
    ),
    (
        "train",
        "tiny",
        GENERATOR_IN_PARAMS_YAML,
        (f"{GENERATOR}.widths", [16, 0]),
        GENERATOR,
        "widths[1] must be ≥ 1, got 0",
    ),
    (
        "train",
        "tiny",
        GENERATOR_IN_PARAMS_YAML,
        (f"{GENERATOR}.latent_dim", 0),
        GENERATOR,
        "latent_dim must be ≥ 1, got 0",
    ),
    (
        "train",
        "tiny",
        GENERATOR_IN_PARAMS_YAML,
        (f"{GENERATOR}.latent_dim", -3),
        GENERATOR,
        "latent_dim must be ≥ 1, got -3",
    ),
    (
        "train",
        "tiny",
        GENERATOR_IN_PARAMS_YAML,
        (f"{GENERATOR}.latent_dim", True),
        GENERATOR,
        "latent_dim must be a whole number ≥ 1, got True",
    ),
    (
        "train",
        "tiny",
        GENERATOR_IN_PARAMS_YAML,
        (f"{GENERATOR}.channels", 0),
        GENERATOR,
        "channels must be ≥ 1, got 0",
    ),
    (
        "train",
        "tiny",
        GENERATOR_IN_PARAMS_YAML,
        (GENERATOR, {"kind": "texture", "latent_channels": 0}),
        GENERATOR,
        "latent_channels must be ≥ 1, got 0",
    ),
    (
        "train",
        "tiny",
        GENERATOR_IN_PARAMS_YAML,
        (GENERATOR, {"kind": "texture", "latent_size": -1}),
        GENERATOR,
        "latent_size must be ≥ 1, got -1",
    ),
    (
        "train",
        "tiny",
        GENERATOR_IN_PARAMS_YAML,
        (GENERATOR, {"kind": "audio", "latent_length": 0}),
        GENERATOR,
        "latent_length must be ≥ 1, got 0",
    ),
    (
        "train",
        "tiny",
        "other.yaml",
        ("experiments.tiny.abp.sigma", math.inf),
        "experiments.tiny.abp.sigma",
        "Input should be a finite number",
    ),
    (
        "train",
        "tiny",
        "other.yaml",
        ("experiments.tiny.abp.learning_rate", math.nan),
        "experiments.tiny.abp.learning_rate",
        "Input should be a finite number",
    ),
    (
        "train",
        "tiny",
        "other.yaml",
        ("experiments.tiny.training.epochs", True),
        "experiments.tiny.training.epochs",
        "expected a number, got true",
    ),
    (
        "train",
        "tiny",
        "other.yaml",
        ("experiments.tiny.abp.batch_size", False),
        "experiments.tiny.abp.batch_size",
        "expected a number, got false",
    ),
    (
        "train",
        "tiny",
        "other.yaml",
        ("experiments.tiny.evaluation", {"step_size": True}),
        "experiments.tiny.evaluation.step_size",
        "expected a number, got true",
    ),
    (
        "prepare",
        "pics",
        "other.yaml",
        ("datasets.pics.image_size", True),
        "datasets.pics.image_size",
        "expected a number, got true",
    ),
    (
        "prepare",
        "pics_P",
        "other.yaml",
        ("variants.pics_P.hidden_fraction", math.nan),
        "variants.pics_P.hidden_fraction",
        "Input should be a finite number",
    ),
    (
        "prepare",
        "pics_M",
        "other.yaml",
        ("variants.pics_M.side", 70),
        "variants.pics_M.side",
        "70 does not fit these 16×16 images",
    ),
    (
        "prepare",
        "pics_P",
        "other.yaml",
        ("variants.pics_P.pattern", "missing_segments"),
        "variants.pics_P.pattern",
        "'missing_segments' is for audio data",
    ),
    (
        "prepare",
        "pics_P",
        "other.yaml",
        ("variants.pics_P.block", 64),
        "variants.pics_P.block",
        "use a block from 1 to 61",
    ),
    (
        "prepare",
        "pics_cs",
        "other.yaml",
        ("variants.pics_cs.block", 5),
        "variants.pics_cs.block",
        "use one of 2, 4, 8, 16",
    ),
    (
        "prepare",
        "stills_gaps",
        "other.yaml",
        ("variants.stills_gaps.hidden_fraction", 0.5),
        "variants.stills_gaps.pattern",
        "missing frames need clips of at least 2 frames",
    ),
]


@pytest.mark.parametrize("command, name, params_file, setting, key, message", CASES)
def test_a_bad_setting_fails_at_the_edge(
    workspace, capsys, command, name, params_file, setting, key, message
):
    params = yaml.safe_load(yaml.safe_dump(PARAMS))  # a deep copy
    path, value = setting
    *parents, last = path.split(".")
    section = params
    for part in parents:
        section = section[part]
    section[last] = value
    Path(params_file).write_text(yaml.safe_dump(params))
    prepared_before = sorted(p.name for p in (workspace / "data" / "prepared").iterdir())

    main = flows.train.main if command == "train" else flows.prepare.main
    argv = [name] if params_file == "params.yaml" else [name, "--params", params_file]
    assert main(argv) == 2

    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: ")
    assert f"{params_file}: {key}: " in err and message in err, err
    # One line per problem, each naming the params file.
    assert all(
        line.removeprefix("error: ").startswith(f"{params_file}: ") for line in err.splitlines()
    ), err
    assert not (workspace / "models").exists() and not (workspace / "mlflow.db").exists()
    assert sorted(p.name for p in (workspace / "data" / "prepared").iterdir()) == prepared_before
