"""params.yaml validation: every error names the params file, the key and what is wrong."""

from pathlib import Path

import pytest

from abp.evaluate import EvaluationConfig
from abp.train import ABPConfig, ExecutionConfig
from abp.vae import VAEConfig
from flows.config import ConfigError, dataset_config, experiment_config, load_params

GOOD = {
    "bundled": {"faces": {"kind": "images", "source": "bundled:lfw_faces", "image_size": 32}},
    "variants": {
        "faces_P50": {
            "kind": "occlusion",
            "base": "faces",
            "pattern": "salt_pepper",
            "hidden_fraction": 0.5,
            "block": 3,
        }
    },
}


def with_change(section, name, **change):
    params = {k: {n: dict(v) for n, v in s.items()} for k, s in GOOD.items()}
    params[section][name].update(change)
    return params


def test_good_settings_are_typed():
    cfg = dataset_config("faces", GOOD)
    assert cfg.image_size == 32 and cfg.channels == 1 and cfg.test_fraction == 0.2
    assert dataset_config("faces_P50", GOOD).hidden_fraction == 0.5


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_size": "big"}, "bundled.faces.image_size: Input should be a valid integer.*'big'"),
        ({"channels": 2}, "bundled.faces.channels: Input should be 1 or 3"),
        ({"source": "bundled:celeba"}, "bundled.faces.source: .*unknown bundled source 'celeba'"),
        ({"imagesize": 32}, "bundled.faces.imagesize: Extra inputs are not permitted"),
        ({"test_fraction": 1.5}, "bundled.faces.test_fraction: Input should be less than 1"),
        (
            {"kind": "pictures"},
            "bundled.faces: Input tag 'pictures' found using 'kind' does not match",
        ),
    ],
)
def test_bad_dataset_values_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        dataset_config("faces", with_change("bundled", "faces", **change))


def test_bad_variant_values_name_the_key():
    with pytest.raises(
        ConfigError, match=r"variants\.faces_P50\.hidden_fraction: Input should be less than 1"
    ):
        dataset_config("faces_P50", with_change("variants", "faces_P50", hidden_fraction=1.0))
    message = r"variants\.faces_P50: Value error, pattern 'salt_pepper' needs block"
    with pytest.raises(ConfigError, match=message):
        dataset_config("faces_P50", with_change("variants", "faces_P50", block=None))
    with pytest.raises(ConfigError, match=r"variants\.faces_P50\.base: 'celeb' is not a data set"):
        dataset_config("faces_P50", with_change("variants", "faces_P50", base="celeb"))
    with pytest.raises(ConfigError, match="no data set or variant named 'cats'"):
        dataset_config("cats", GOOD)


def test_unreadable_params_files_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("datasets: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


EXPERIMENT = {
    "dataset": "faces",
    "generator": {"kind": "image"},
    "abp": {},
    "training": {"epochs": 3},
}


def with_experiment(**sections):
    experiment = dict(EXPERIMENT)
    for section, change in sections.items():
        experiment[section] = {**experiment.get(section, {}), **change}
    return {**GOOD, "experiments": {"tiny": experiment}}


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"abp": {"sigma": float("inf")}},
            r"other.yaml: experiments.tiny.abp.sigma: Input should be a finite number \(got inf\)",
        ),
        (
            {"abp": {"learning_rate": float("nan")}},
            r"experiments.tiny.abp.learning_rate: Input should be a finite number \(got nan\)",
        ),
        ({"abp": {"step_size": float("-inf")}}, r"experiments.tiny.abp.step_size: .*finite"),
        (
            {"training": {"epochs": True}},
            r"experiments.tiny.training.epochs: expected a number, got true$",
        ),
        (
            {"abp": {"batch_size": False}},
            "experiments.tiny.abp.batch_size: expected a number, got false",
        ),
        (
            {"execution": {"inference_batch_size": True}},
            "experiments.tiny.execution.inference_batch_size: expected a number, got true",
        ),
        (
            {"abp": {"adam_betas": [False, 0.999]}},
            "experiments.tiny.abp.adam_betas.0: expected a number, got false",
        ),
        (
            {"evaluation": {"typo": 3}},
            r"experiments.tiny.evaluation.typo: Extra inputs are not permitted \(got 3\)$",
        ),
        (
            {"abp": {"adam_betas": [0.5, 1.0]}},
            r"experiments.tiny.abp.adam_betas.1: Input should be less than 1 \(got 1.0\)",
        ),
        (
            {"evaluation": {"step_size": True}},
            "experiments.tiny.evaluation.step_size: expected a number",
        ),
    ],
)
def test_inf_nan_and_bools_for_numbers_are_refused(sections, message):
    with pytest.raises(ConfigError, match=message):
        experiment_config("tiny", with_experiment(**sections), Path("other.yaml"))


def test_bools_stay_bools_and_every_problem_gets_its_own_line():
    cfg = experiment_config("tiny", with_experiment(abp={"noise": False}, execution={"bf16": True}))
    assert cfg.abp.noise is False and cfg.execution.bf16 is True
    with pytest.raises(ConfigError) as error:
        experiment_config(
            "tiny", with_experiment(training={"epochs": True, "media_every": 0}), Path("other.yaml")
        )
    assert str(error.value).splitlines() == [
        "other.yaml: experiments.tiny.training.epochs: expected a number, got true",
        (
            "other.yaml: experiments.tiny.training.media_every: Input should be greater than or "
            "equal to 1 (got 0)"
        ),
    ]


def test_the_experiment_settings_are_abps_own_classes_with_every_knob_settable():
    """One definition of each setting: params.yaml is validated into abp's dataclasses, so a
    knob the library has (Adam's betas, SGD's momentum) is a params.yaml key too."""
    cfg = experiment_config(
        "tiny",
        with_experiment(
            abp={"optimizer": "sgd", "sgd_momentum": 0.9, "adam_betas": [0.9, 0.99]},
            execution={"inference_batch_size": 128},
            evaluation={"init": "prior"},
        ),
    )
    assert cfg.abp == ABPConfig(optimizer="sgd", sgd_momentum=0.9, adam_betas=(0.9, 0.99))
    assert cfg.execution == ExecutionConfig(inference_batch_size=128)
    assert cfg.evaluation == EvaluationConfig(init="prior")
    with pytest.raises(
        ConfigError, match=r"experiments.tiny.abp.typo: Extra inputs are not permitted"
    ):
        experiment_config("tiny", with_experiment(abp={"typo": 1}))
    with pytest.raises(
        ConfigError,
        match=r"execution.inference_batch_size: inference_batch_size "
        r"\(32\) must be at least batch_size \(64\)",
    ):
        experiment_config("tiny", with_experiment(execution={"inference_batch_size": 32}))
    with pytest.raises(ConfigError, match=r"abp.cuda_graphs: .* under experiments.tiny.execution"):
        experiment_config("tiny", with_experiment(abp={"cuda_graphs": True}))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_size": True}, "bundled.faces.image_size: expected a number, got true"),
        ({"channels": True}, "bundled.faces.channels: expected a number, got true"),
        (
            {"test_fraction": float("nan")},
            "bundled.faces.test_fraction: Input should be a finite number",
        ),
    ],
)
def test_dataset_numbers_are_finite_and_not_bools(change, message):
    with pytest.raises(ConfigError, match=message):
        dataset_config("faces", with_change("bundled", "faces", **change))
    with pytest.raises(
        ConfigError, match=r"variants\.faces_P50\.block: expected a number, got true"
    ):
        dataset_config("faces_P50", with_change("variants", "faces_P50", block=True))


def test_messages_name_the_params_file_given():
    with pytest.raises(ConfigError, match=r"^my/params-2.yaml: bundled.faces.image_size: "):
        dataset_config(
            "faces", with_change("bundled", "faces", image_size=2), Path("my/params-2.yaml")
        )


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"bundled": {"mine": {"kind": "images", "source": "data/raw/mine", "image_size": 8}}},
            r"bundled.mine.source: 'data/raw/mine' is a path: move mine under datasets:",
        ),
        (
            {
                "datasets": {
                    "faces": {"kind": "images", "source": "bundled:lfw_faces", "image_size": 8}
                }
            },
            (
                r"datasets.faces.source: 'bundled:lfw_faces' ships inside a package: "
                r"move faces under bundled:"
            ),
        ),
        (
            {
                "bundled": {
                    "faces": {"kind": "images", "source": "bundled:lfw_faces", "image_size": 8}
                },
                "datasets": {"faces": {"kind": "images", "source": "raw", "image_size": 8}},
            },
            r"faces is both in bundled and in datasets; names must be unique",
        ),
    ],
)
def test_each_data_set_group_holds_its_own_kind_of_source(params, message):
    """bundled: stages depend on no file and datasets: stages on their source path, so a
    source in the wrong group would make DVC miss a change or fail on a path that is none."""
    with pytest.raises(ConfigError, match=message):
        dataset_config("mine" if "mine" in str(params) else "faces", params)


def test_the_evaluation_and_vae_defaults_params_yaml_lists_are_the_definitions():
    """params.yaml shows the evaluation and vae keys with their defaults; the definitions
    are abp.evaluate.EvaluationConfig and abp.vae.VAEConfig, so the comments must not drift
    from them."""
    import dataclasses
    import re

    import yaml

    blocks = Path("params.yaml").read_text().split("Its keys, with their defaults:\n")[1:]
    assert len(blocks) == 2  # evaluation's, then vae's
    for block, settings in zip(blocks, (EvaluationConfig, VAEConfig)):
        lines = block.split("\n")
        listed_lines = lines[
            : next(i for i, line in enumerate(lines) if not line.startswith("#   "))
        ]
        listed = dict(re.match(r"^#   (\w+): (\S+) ", line).groups() for line in listed_lines)
        defaults = {f.name: f.default for f in dataclasses.fields(settings)}
        assert set(listed) == set(defaults)
        assert {k: yaml.safe_load(v) for k, v in listed.items()} == defaults


def test_vae_settings_are_checked_at_the_edge():
    cfg = experiment_config("tiny", with_experiment(vae={"epochs": 7, "enabled": False}))
    assert cfg.vae == VAEConfig(epochs=7, enabled=False)
    assert experiment_config("tiny", with_experiment()).vae == VAEConfig()
    with pytest.raises(
        ConfigError,
        match=r"experiments.tiny.vae.epochs: Input should be greater than or equal to 1",
    ):
        experiment_config("tiny", with_experiment(vae={"epochs": 0}))
    with pytest.raises(ConfigError, match=r"experiments.tiny.vae.lr: Extra inputs"):
        experiment_config("tiny", with_experiment(vae={"lr": 0.1}))


def test_data_on_device_is_auto_or_a_bool():
    assert experiment_config("tiny", with_experiment()).training.data_on_device == "auto"
    cfg = experiment_config(
        "tiny", with_experiment(training={"epochs": 1, "data_on_device": False})
    )
    assert cfg.training.data_on_device is False
    with pytest.raises(ConfigError, match=r"training.data_on_device: should be auto, true or fa"):
        experiment_config(
            "tiny", with_experiment(training={"epochs": 1, "data_on_device": "sometimes"})
        )


def test_several_machines_need_a_rendezvous_endpoint():
    cfg = experiment_config("tiny", with_experiment(training={"epochs": 1, "nproc_per_node": 2}))
    assert cfg.training.processes == 2 and cfg.training.rdzv_endpoint is None
    with pytest.raises(ConfigError, match=r"training: nnodes > 1 needs rdzv_endpoint"):
        experiment_config("tiny", with_experiment(training={"epochs": 1, "nnodes": 2}))
    with pytest.raises(ConfigError, match=r"training.rdzv_endpoint: should be host:port"):
        experiment_config(
            "tiny", with_experiment(training={"epochs": 1, "nnodes": 2, "rdzv_endpoint": "gpu1"})
        )
    two = {"epochs": 1, "nnodes": 2, "nproc_per_node": 4, "rdzv_endpoint": "gpu1:29400"}
    assert experiment_config("tiny", with_experiment(training=two)).training.processes == 8
