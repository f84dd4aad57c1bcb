"""params.yaml validation: every error names the key and what is wrong."""

import pytest

from flows.config import ConfigError, dataset_config, load_params

GOOD = {
    "datasets": {"faces": {"kind": "images", "source": "bundled:lfw_faces", "image_size": 32}},
    "variants": {"faces_P50": {"kind": "occlusion", "base": "faces", "pattern": "salt_pepper",
                               "hidden_fraction": 0.5, "block": 3}},
}


def with_change(section, name, **change):
    params = {k: {n: dict(v) for n, v in s.items()} for k, s in GOOD.items()}
    params[section][name].update(change)
    return params


def test_good_settings_are_typed():
    cfg = dataset_config("faces", GOOD)
    assert cfg.image_size == 32 and cfg.channels == 1 and cfg.test_fraction == 0.2
    assert dataset_config("faces_P50", GOOD).hidden_fraction == 0.5


@pytest.mark.parametrize("change, message", [
    ({"image_size": "big"}, "datasets.faces.image_size: Input should be a valid integer.*'big'"),
    ({"channels": 2}, "datasets.faces.channels: Input should be 1 or 3"),
    ({"source": "bundled:celeba"}, "datasets.faces.source: .*unknown bundled source 'celeba'"),
    ({"imagesize": 32}, "datasets.faces.imagesize: Extra inputs are not permitted"),
    ({"test_fraction": 1.5}, "datasets.faces.test_fraction: Input should be less than 1"),
    ({"kind": "pictures"}, "datasets.faces: Input tag 'pictures' found using 'kind' does not match"),
])
def test_bad_dataset_values_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        dataset_config("faces", with_change("datasets", "faces", **change))


def test_bad_variant_values_name_the_key():
    with pytest.raises(ConfigError, match="variants.faces_P50.hidden_fraction: Input should be less than 1"):
        dataset_config("faces_P50", with_change("variants", "faces_P50", hidden_fraction=1.0))
    with pytest.raises(ConfigError, match="variants.faces_P50: Value error, pattern 'salt_pepper' needs block"):
        dataset_config("faces_P50", with_change("variants", "faces_P50", block=None))
    with pytest.raises(ConfigError, match="variants.faces_P50.base: 'celeb' is not a data set"):
        dataset_config("faces_P50", with_change("variants", "faces_P50", base="celeb"))
    with pytest.raises(ConfigError, match="no data set or variant named 'cats'"):
        dataset_config("cats", GOOD)


def test_unreadable_params_files_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("datasets: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
