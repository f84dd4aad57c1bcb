"""Splits, hashes, atomic prepared folders, and the stored form of prepared arrays."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from abp.datasets import (
    PIXELS,
    SAMPLES,
    DataError,
    Encoding,
    decode,
    encode,
    open_split,
    quantize,
    read_manifest,
    read_split,
    split_by_source,
    split_indices,
    training_examples,
    write_prepared,
)
from abp.observe import LocalAverage, Mask


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
    assert manifest["name"] == "toy" and set(manifest["files"]) == {"train.x.npy", "test.x.npy"}
    assert manifest["arrays"]["train"]["x"] == {
        "file": "train.x.npy",
        "shape": [3, 1, 2, 2],
        "dtype": "float32",  # no encoding named: stored as it is
        "scale": 1.0,
        "offset": 0.0,
    }
    assert torch.equal(read_split(folder, "train")["x"], splits["train"]["x"])
    write_prepared(folder, {"train": {"x": torch.zeros(2, 1, 2, 2)}}, {"name": "toy2"})
    assert json.loads((folder / "manifest.json").read_text())["name"] == "toy2"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "train.x.npy"]
    assert [p.name for p in folder.parent.iterdir()] == ["toy"]  # no temporaries left


def every_kind() -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Encoding]]:
    """Quantized images and sounds, a mask, measurements and clip indices, the encodings
    of the signals, in splits of 5 and 2 examples."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (7, 3, 4, 5), generator=generator)
    images = decode(pixels.to(torch.uint8), PIXELS.scale, PIXELS.offset)
    sound = quantize(torch.rand(7, 1, 64, generator=generator) * 2 - 1, SAMPLES)
    examples = {
        "x": images,
        "sound": sound,
        "mask": torch.rand(7, 1, 4, 5, generator=generator) > 0.5,
        "y": torch.randn(7, 9, generator=generator),
        "clip_start": torch.arange(7) * 1000,
    }
    splits = {
        "train": {k: v[:5] for k, v in examples.items()},
        "test": {k: v[5:] for k, v in examples.items()},
    }
    return splits, {"x": PIXELS, "sound": SAMPLES}


def test_every_kind_of_array_round_trips_exactly_in_its_compact_dtype(tmp_path):
    splits, encodings = every_kind()
    write_prepared(tmp_path / "all", splits, {"name": "all"}, encodings)
    arrays = read_manifest(tmp_path / "all")["arrays"]
    bytes_per_value = {"x": 1, "sound": 2, "mask": 1, "y": 4, "clip_start": 8}
    dtypes = {"x": "uint8", "sound": "int16", "mask": "bool", "y": "float32", "clip_start": "int64"}
    for split, tensors in splits.items():
        read = read_split(tmp_path / "all", split)
        for key, tensor in tensors.items():
            assert read[key].dtype == tensor.dtype and torch.equal(read[key], tensor), key
            path = tmp_path / "all" / f"{split}.{key}.npy"
            assert np.load(path).dtype == np.dtype(dtypes[key]) == arrays[split][key]["dtype"]
            # the values, and the .npy header (128 bytes for these shapes), no more
            assert path.stat().st_size == 128 + tensor.numel() * bytes_per_value[key], key
    assert arrays["train"]["x"]["scale"] == PIXELS.scale and arrays["train"]["x"]["offset"] == -1


def test_rows_by_id_are_the_rows_of_the_whole_split_read_from_a_memory_map(tmp_path):
    splits, encodings = every_kind()
    write_prepared(tmp_path / "all", splits, {"name": "all"}, encodings)
    opened, whole = open_split(tmp_path / "all", "train"), read_split(tmp_path / "all", "train")
    ids = torch.tensor([4, 0, 2, 2])
    for key, stored in opened.items():
        assert len(stored) == 5
        assert torch.equal(stored.rows(ids), whole[key][ids]), key
        assert torch.equal(stored.decoded(), whole[key]), key
    assert opened["x"].array.dtype == torch.uint8 and opened["sound"].array.dtype == torch.int16
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the file is mapped, not read
        assert str(tmp_path / "all" / "train.x.npy") in maps.read_text()
    opened["x"].array[0] += 1  # copy on write: a change to the mapped array stays in memory
    assert torch.equal(read_split(tmp_path / "all", "train")["x"], whole["x"])


def test_decoding_is_exact_on_the_grid_and_quantize_puts_values_on_it():
    pixels = torch.arange(256, dtype=torch.uint8)
    values = decode(pixels, PIXELS.scale, PIXELS.offset)
    assert values.dtype == torch.float32 and values[0] == -1 and values[255] == 1
    assert torch.equal(encode(values, PIXELS), pixels)
    assert torch.equal(quantize(values, PIXELS), values)
    samples = torch.tensor([-32768, -1, 0, 1, 32767], dtype=torch.int16)
    assert decode(samples, SAMPLES.scale, SAMPLES.offset).tolist() == [
        -1.0,
        -(2**-15),
        0.0,
        2**-15,
        1 - 2**-15,
    ]
    sound = torch.rand(100) * 2.2 - 1.1  # beyond [−1, 1] too: clipped
    once = quantize(sound, SAMPLES)
    assert torch.equal(quantize(once, SAMPLES), once)
    assert (once - sound.clamp(-1, 1)).abs().max() <= 2**-15
    assert torch.equal(quantize(torch.tensor([1.5, -3.0]), PIXELS), torch.tensor([1.0, -1.0]))


def test_a_signal_off_its_encodings_grid_is_refused(tmp_path):
    x = torch.tensor([[0.0, 0.001]])
    with pytest.raises(ValueError, match=r"train\.x\.npy .* quantize it first"):
        write_prepared(tmp_path / "toy", {"train": {"x": x}}, {}, {"x": PIXELS})
    assert list(tmp_path.iterdir()) == []


def test_an_old_format_folder_says_to_prepare_it_again(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    torch.save({"x": torch.zeros(2, 1, 4, 4)}, folder / "train.pt")
    (folder / "manifest.json").write_text(json.dumps({"name": "faces", "files": {}}))
    for read in (open_split, read_split):
        with pytest.raises(DataError, match="old format") as error:
            read(folder, "train")
        assert str(folder) in str(error.value) and "dvc repro" in str(error.value)
        assert "python -m flows.prepare faces" in str(error.value)


def test_a_damaged_or_missing_array_file_is_named(tmp_path):
    splits, encodings = every_kind()
    folder = tmp_path / "all"
    write_prepared(folder, splits, {"name": "all"}, encodings)
    whole = (folder / "train.x.npy").read_bytes()
    (folder / "train.x.npy").write_bytes(whole[:-10])  # cut short, as a full disk leaves it
    with pytest.raises(DataError, match="cannot be read") as error:
        read_split(folder, "train")
    assert f"{folder / 'train.x.npy'} cannot be read" in str(error.value)
    assert "python -m flows.prepare all" in str(error.value)
    (folder / "train.x.npy").write_bytes(whole[:40])  # not even the header
    with pytest.raises(DataError, match=r"train\.x\.npy cannot be read"):
        open_split(folder, "train")
    (folder / "train.x.npy").unlink()
    with pytest.raises(DataError, match=r"train\.x\.npy cannot be read"):
        open_split(folder, "train")
    np.save(folder / "train.x.npy", np.zeros((5, 3, 4, 5), np.float32))  # another dtype
    with pytest.raises(DataError, match="where the manifest says"):
        open_split(folder, "train")
    assert torch.equal(read_split(folder, "test")["x"], splits["test"]["x"])  # the rest reads
    with pytest.raises(FileNotFoundError, match="no valid split"):
        read_split(folder, "valid")


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "toy"
    with pytest.raises(TypeError):
        write_prepared(folder, {"train": {"x": torch.zeros(1)}}, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["complete", "occluded", "measured"])
def test_training_examples_read_per_id_are_the_observations_of_the_decoded_split(tmp_path, kind):
    splits, encodings = every_kind()
    keep = {"complete": {"x"}, "occluded": {"x", "mask"}, "measured": {"x", "y"}}[kind]
    splits = {s: {k: v for k, v in t.items() if k in keep} for s, t in splits.items()}
    manifest = {"name": kind, "operator": {"kind": "local_average", "block": 2, "n_dims": 1}}
    folder = write_prepared(tmp_path / kind, splits, manifest, encodings)
    whole = read_split(folder, "train")
    examples, observation = training_examples(folder, "train", read_manifest(folder))
    ids = torch.tensor([3, 1, 1, 0])
    if kind == "occluded":
        assert torch.equal(examples.rows(ids), (whole["x"] * whole["mask"])[ids])
        assert isinstance(observation, Mask) and observation.mask.dtype == torch.bool
        assert torch.equal(observation.select(ids).mask, whole["mask"][ids].float())
    else:
        assert torch.equal(examples.rows(ids), whole["y" if kind == "measured" else "x"][ids])
    if kind == "measured":
        assert isinstance(observation, LocalAverage) and observation.block == 2
