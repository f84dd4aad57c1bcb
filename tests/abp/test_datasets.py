"""Splits, hashes and atomic prepared folders."""

import json

import pytest
import torch

from abp.datasets import read_manifest, read_split, split_indices, write_prepared


def test_split_is_a_reproducible_partition():
    train, test = split_indices(10, 0.3, seed=1)
    assert len(test) == 3 and sorted(train.tolist() + test.tolist()) == list(range(10))
    again = split_indices(10, 0.3, seed=1)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    assert len(split_indices(10, 0.0, seed=1)[1]) == 0
    with pytest.raises(ValueError, match="leaves an empty split"):
        split_indices(2, 0.1, seed=0)


def test_prepared_folder_round_trips_and_replaces_atomically(tmp_path):
    folder = tmp_path / "prepared" / "toy"
    splits = {"train": {"x": torch.rand(3, 1, 2, 2)}, "test": {"x": torch.rand(1, 1, 2, 2)}}
    write_prepared(folder, splits, {"name": "toy"})
    manifest = read_manifest(folder)
    assert manifest["name"] == "toy" and set(manifest["files"]) == {"train.pt", "test.pt"}
    assert torch.equal(read_split(folder, "train")["x"], splits["train"]["x"])
    write_prepared(folder, {"train": {"x": torch.zeros(2, 1, 2, 2)}}, {"name": "toy2"})
    assert json.loads((folder / "manifest.json").read_text())["name"] == "toy2"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "train.pt"]
    assert [p.name for p in folder.parent.iterdir()] == ["toy"]  # no temporaries left


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "toy"
    with pytest.raises(TypeError):
        write_prepared(folder, {"train": {"x": torch.zeros(1)}}, {"bad": object()})
    assert list(tmp_path.iterdir()) == []
