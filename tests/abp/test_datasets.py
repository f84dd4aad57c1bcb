"""Splits, hashes and atomic prepared folders."""

import json

import pytest
import torch

from abp.datasets import read_manifest, read_split, split_by_source, split_indices, write_prepared


def test_split_is_a_reproducible_partition():
    train, test = split_indices(10, 0.3, seed=1)
    assert len(test) == 3 and sorted(train.tolist() + test.tolist()) == list(range(10))
    again = split_indices(10, 0.3, seed=1)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    assert len(split_indices(10, 0.0, seed=1)[1]) == 0
    with pytest.raises(ValueError, match="leaves an empty split"):
        split_indices(2, 0.1, seed=0)


def clips_of(lengths: list[int], stride: int):
    """(file, start) of every clip when file f has lengths[f] clips, one every `stride`."""
    file = torch.cat([torch.full((n,), f) for f, n in enumerate(lengths)])
    start = torch.cat([torch.arange(n) * stride for n in lengths])
    return file, start


def test_one_file_splits_by_time_with_a_gap_of_one_clip():
    # 61 clips of 8 frames every 4 (bikes): the last 12 are test; training clips end at
    # least 8 frames before the first test clip begins, so 3 clips in between go nowhere.
    file, start = clips_of([61], stride=4)
    train, test, record = split_by_source(
        file, start, names=["v.mp4"], clip_length=8, test_fraction=0.2, seed=0, unit="frames"
    )
    assert test.tolist() == list(range(49, 61)) and train.tolist() == list(range(46))
    assert int(start[train].max()) + 8 + 8 <= int(start[test].min())
    assert record["by"] == "time" and record["gap"] == 8 and record["unit"] == "frames"
    assert record["stretches"] == [{"file": "v.mp4", "train": [0, 188], "test": [196, 248]}]
    assert record["unused_clips"] == 3 and record["test_share"] == round(12 / 58, 4)
    with pytest.raises(ValueError, match="leave no training clip"):
        split_by_source(
            *clips_of([3], stride=4),
            names=["v.mp4"],
            clip_length=8,
            test_fraction=0.5,
            seed=0,
            unit="frames",
        )


def test_enough_files_split_by_whole_files_drawn_from_the_seed():
    file, start = clips_of([5, 5, 5, 5, 5, 5, 5, 5, 5, 5], stride=2)
    names = [f"f{i}.wav" for i in range(10)]
    splits = {}
    for seed in range(4):
        train, test, record = split_by_source(
            file, start, names=names, clip_length=4, test_fraction=0.2, seed=seed, unit="samples"
        )
        assert record["by"] == "file" and len(test) == 10 and len(train) == 40
        assert set(file[test].tolist()).isdisjoint(file[train].tolist())
        assert sorted(record["train_files"] + record["test_files"]) == names
        assert {names[f] for f in file[test].tolist()} == set(record["test_files"])
        splits[seed] = record["test_files"]
    assert len({tuple(v) for v in splits.values()}) > 1  # the seed draws the files
    again = split_by_source(
        file, start, names=names, clip_length=4, test_fraction=0.2, seed=3, unit="samples"
    )[2]["test_files"]
    assert again == splits[3]


def test_too_few_files_for_the_fraction_split_each_file_by_time():
    # Two files at test_fraction 0.2: a whole file would be half the data, so each file's
    # last fifth is its test stretch instead.
    file, start = clips_of([20, 10], stride=2)
    train, test, record = split_by_source(
        file, start, names=["a", "b"], clip_length=4, test_fraction=0.2, seed=0, unit="samples"
    )
    assert record["by"] == "time" and record["test_files"] == ["a", "b"]
    for f in (0, 1):
        train_starts, test_starts = start[train][file[train] == f], start[test][file[test] == f]
        assert int(train_starts.max()) + 4 + 4 <= int(test_starts.min())
    assert (
        split_by_source(
            file, start, names=["a", "b"], clip_length=4, test_fraction=0.0, seed=0, unit="samples"
        )[2]["by"]
        == "none"
    )


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
