"""params.yaml is written in the layout that `dvc exp run -S` writes back, so an experiment
that sets one value changes one line of it.

DVC reads the file with ruamel.yaml's round-trip loader, applies the -S overrides with Hydra,
and dumps the whole file again (width 80): comments stay, but a flow mapping longer than 80
columns is rewrapped (leaving trailing spaces), a flow list inside a block mapping becomes a
block list and quotes go. These tests run DVC's own function for -S on a copy of the file:
no training, no git, about a second in all.
"""

import difflib
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides  # `dvc exp run -S` calls it on params.yaml

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


def settings(node, path=""):
    """(dotted key, value) of every value a -S could set, lists and scalars."""
    for key, value in node.items():
        name = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict):
            yield from settings(value, name)
        elif value != [] and not (isinstance(value, str) and "\n" in value):
            yield name, value


def another(value) -> str:
    """A different value for `value`, written as on the command line."""
    if isinstance(value, bool):
        return str(not value).lower()
    if isinstance(value, (int, float)):
        return str(value + 1)
    if isinstance(value, list):  # the first entry changed: one line in either list style
        return "[" + ",".join(another(v) if i == 0 else str(v) for i, v in enumerate(value)) + "]"
    return f"{value}x"


def key(line: str) -> str:
    return line.split(":")[0] if ":" in line else line[: line.index("- ") + 2]


def set_params(tmp_path: Path, *overrides: str) -> list[str]:
    copy = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS, copy)
    apply_overrides(copy, list(overrides))
    return [
        line
        for line in difflib.unified_diff(
            PARAMS.read_text().splitlines(), copy.read_text().splitlines(), lineterm="", n=0
        )
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]


def test_dvc_writes_params_yaml_back_byte_for_byte(tmp_path):
    assert set_params(tmp_path) == []


def test_setting_every_value_at_once_rewraps_no_line(tmp_path):
    every = list(settings(yaml.safe_load(PARAMS.read_text())))
    assert len(every) > 200  # the whole file, not one section
    copy = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS, copy)
    apply_overrides(copy, [f"{name}={another(value)}" for name, value in every])
    before, after = PARAMS.read_text().splitlines(), copy.read_text().splitlines()
    assert len(after) == len(before)  # nothing wrapped, nothing joined
    changed = [(old, new) for old, new in zip(before, after) if old != new]
    assert len(changed) > 100
    for old, new in changed:  # the same key (or list entry) on the same line, another value
        assert key(old) == key(new) and new == new.rstrip(), (old, new)
    assert yaml.safe_load(copy.read_text()) != yaml.safe_load(PARAMS.read_text())


@pytest.mark.parametrize(
    "override, diff",
    [
        (
            "experiments.digits.training.epochs=80",
            [
                "-    training: {epochs: 40, checkpoint_every: 5, media_every: 10}",
                "+    training: {epochs: 80, checkpoint_every: 5, media_every: 10}",
            ],
        ),
        ("+experiments.faces.abp.sgd_momentum=0.9", ["+      sgd_momentum: 0.9"]),
        (
            "bundled.brick.image_size=320",
            ["-    image_size: 160", "+    image_size: 320"],
        ),
        ("experiments.brick.generator.widths=[128,64,32,16]", ["+      - 128"]),
    ],
)
def test_the_examples_in_params_yaml_and_readme_change_one_line(tmp_path, override, diff):
    assert set_params(tmp_path, override) == diff
