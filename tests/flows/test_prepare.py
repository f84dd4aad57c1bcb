"""The prepare flow under Prefect: each source kind and variant from files the tests make,
the bundled defaults, and bad input that must fail cleanly and leave nothing behind."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from media import write_idx, write_images, write_tone, write_video

from abp.datasets import PIXELS, SAMPLES, open_split, quantize, read_manifest, read_split
from abp.variants import operator_from_spec
from flows.config import dataset_config, load_params
from flows.prepare import main

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, params: dict, name: str) -> int:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return main(
        [
            name,
            "--params",
            str(tmp_path / "params.yaml"),
            "--prepared-root",
            str(tmp_path / "prepared"),
        ]
    )


def stored_dtypes(folder: Path) -> dict[str, str]:
    """The dtype of each array file of a prepared folder, read from the files themselves,
    after checking that each file holds its values and little more (a .npy header)."""
    found = {}
    for path in sorted(folder.glob("*.npy")):
        array = np.load(path, mmap_mode="r")
        assert array.nbytes <= path.stat().st_size <= array.nbytes + 256, path
        found[path.name] = str(array.dtype)
    return found


def closest_training_clip(folder: Path, clip_length: int) -> int | None:
    """The fewest frames or samples between a test clip and a training clip of the same
    file (negative: they overlap), from the clip_file and clip_start recorded with each
    clip; None when no test clip shares a file with a training clip."""
    train, test = read_split(folder, "train"), read_split(folder, "test")
    closest = None
    for file, start in zip(test["clip_file"].tolist(), test["clip_start"].tolist()):
        starts = train["clip_start"][train["clip_file"] == file]
        if len(starts):
            # Clips [a, a+L) and [b, b+L) leave |a − b| − L frames or samples between them.
            between = int((starts - start).abs().min()) - clip_length
            closest = between if closest is None else min(closest, between)
    return closest


def test_several_videos_split_by_whole_files_and_other_frame_rates_are_resampled(tmp_path):
    for i in range(5):
        write_video(tmp_path / "raw" / f"v{i}.mp4", n_frames=12, fps=10)
    write_video(tmp_path / "raw" / "v5_fast.mp4", n_frames=24, fps=20)  # 1.2 s as well
    params = {
        "datasets": {
            "vid": {
                "kind": "video",
                "source": str(tmp_path / "raw"),
                "image_size": 8,
                "channels": 1,
                "clip_frames": 4,
                "clip_stride": 2,
                "test_fraction": 0.2,
                "split_seed": 3,
            }
        }
    }
    assert run(tmp_path, params, "vid") == 0
    folder = tmp_path / "prepared" / "vid"
    manifest = read_manifest(folder)
    split = manifest["split"]
    assert split["by"] == "file" and len(split["test_files"]) == 1
    assert sorted(split["train_files"] + split["test_files"]) == split["files"]
    assert split["files"] == ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4", "v4.mp4", "v5_fast.mp4"]
    assert manifest["counts"] == {"train": 25, "test": 5}  # 5 clips per file, 12 frames each
    assert closest_training_clip(folder, 4) is None  # no file on both sides
    for side in ("train", "test"):
        tensors = read_split(folder, side)
        assert {split["files"][f] for f in tensors["clip_file"].tolist()} == set(
            split[f"{side}_files"]
        )
        # The recorded start is where the clip's content comes from (frame i has level 20·i,
        # at 10 fps, so the resampled 20 fps file shows every other frame).
        level = (tensors["x"][:, 0, 0].mean(dim=(1, 2)) + 1) * 127.5
        fast = torch.tensor(
            [split["files"][f] == "v5_fast.mp4" for f in tensors["clip_file"].tolist()]
        )
        expected = 20 * tensors["clip_start"] * torch.where(fast, 2, 1) % 256
        torch.testing.assert_close(level, expected.float(), atol=4, rtol=0)
    assert manifest["fps"] == 10 and manifest["source_fps"]["v5_fast.mp4"] == 20
    assert manifest["resampled"]["files"] == ["v5_fast.mp4"]
    assert manifest["resampled"]["to_fps"] == 10


def test_one_sound_splits_by_time_and_no_test_clip_touches_a_training_clip(tmp_path):
    ramp = np.linspace(-0.9, 0.9, 24000, dtype=np.float32)  # every sample a value of its own
    soundfile.write(str(tmp_path / "speech.wav"), ramp, 8000, subtype="FLOAT")
    params = {
        "datasets": {
            "one": {
                "kind": "audio",
                "source": str(tmp_path / "speech.wav"),
                "sample_rate": 8000,
                "clip_length": 1024,
                "clip_stride": 512,
                "peak_normalize": False,
                "test_fraction": 0.2,
            }
        }
    }
    assert run(tmp_path, params, "one") == 0
    folder = tmp_path / "prepared" / "one"
    manifest = read_manifest(folder)
    split = manifest["split"]
    assert split["by"] == "time" and split["files"] == ["speech.wav"]
    assert split["gap"] == 1024 and split["unit"] == "samples"
    # 45 clips: the last 9 are test, 3 give way to the gap
    assert manifest["counts"] == {"train": 33, "test": 9} and split["unused_clips"] == 3
    assert closest_training_clip(folder, 1024) >= 1024
    train_end, test_start = split["stretches"][0]["train"][1], split["stretches"][0]["test"][0]
    assert test_start - train_end >= 1024
    stored = quantize(torch.from_numpy(ramp), SAMPLES)  # 16-bit samples
    assert (stored - torch.from_numpy(ramp)).abs().max() <= 2**-16
    for side in ("train", "test"):
        tensors = read_split(folder, side)
        for clip, start in zip(tensors["x"], tensors["clip_start"].tolist()):
            assert torch.equal(clip[0], stored[start : start + 1024])
    assert manifest["channels_mixed"]["files"] == 0


def test_the_bundled_single_files_hold_out_a_stretch_of_their_own(tmp_path):
    # The defaults: bikes.mp4 (250 frames) and speech.wav (30 s), one file each. Before the
    # split by time, 11 of 12 bikes test clips and all 23 speech test clips shared frames
    # or samples with training clips.
    bundled = {
        "bikes": {
            "kind": "video",
            "source": "bundled:bikes.mp4",
            "image_size": 32,
            "channels": 3,
            "clip_frames": 8,
            "clip_stride": 4,
            "test_fraction": 0.2,
        },
        "speech": {
            "kind": "audio",
            "source": "bundled:speech.wav",
            "sample_rate": 8000,
            "clip_length": 4096,
            "clip_stride": 2048,
            "test_fraction": 0.2,
        },
    }
    for name, clip_length, counts in [
        ("bikes", 8, {"train": 46, "test": 12}),
        ("speech", 4096, {"train": 90, "test": 23}),
    ]:
        assert run(tmp_path, {"bundled": bundled}, name) == 0
        folder = tmp_path / "prepared" / name
        manifest = read_manifest(folder)
        assert manifest["split"]["by"] == "time", name
        assert len(manifest["split"]["files"]) == 1 and "/" not in manifest["split"]["files"][0]
        assert manifest["counts"] == counts
        assert closest_training_clip(folder, clip_length) >= clip_length, name


def test_padded_sounds_carry_a_mask_into_their_variants(tmp_path):
    write_tone(tmp_path / "raw" / "long.wav", seconds=1.0, rate=8000)  # 7 clips of 2048 at 1024
    write_tone(tmp_path / "raw" / "short.wav", seconds=0.125, rate=8000)  # 1000 samples
    params = {
        "datasets": {
            "snd": {
                "kind": "audio",
                "source": str(tmp_path / "raw"),
                "sample_rate": 8000,
                "clip_length": 2048,
                "clip_stride": 1024,
                "test_fraction": 0.2,
                "pad_short": True,
            }
        },
        "variants": {
            "snd_gaps": {
                "kind": "occlusion",
                "base": "snd",
                "pattern": "missing_segments",
                "hidden_fraction": 0.2,
                "block": 64,
            },
            "snd_half": {"kind": "subsample", "base": "snd", "sample_step": 2},
        },
    }
    assert run(tmp_path, params, "snd") == 0
    root = tmp_path / "prepared"
    manifest = read_manifest(root / "snd")
    assert manifest["padded"]["files"] == 1 and manifest["padded"]["first"] == ["short.wav"]
    # two files at test_fraction 0.2: split by time within each file; the short one is
    # its single clip, which stays in training
    assert manifest["split"]["by"] == "time"
    train = read_split(root / "snd", "train")
    padded = train["clip_file"] == manifest["split"]["files"].index("short.wav")
    assert padded.sum() == 1 and train["mask"].shape == train["x"].shape
    assert train["mask"][padded, 0, :1000].all() and not train["mask"][padded, 0, 1000:].any()
    assert train["mask"][~padded].all()

    assert run(tmp_path, params, "snd_gaps") == 0
    gaps = read_split(root / "snd_gaps", "train")
    assert not gaps["mask"][padded, 0, 1000:].any()  # the padding stays hidden
    assert not gaps["mask"][~padded].all()  # and the occlusion hides more
    assert run(tmp_path, params, "snd_half") == 0
    half = read_split(root / "snd_half", "train")
    assert half["mask"].shape == half["x"].shape == (len(train["x"]), 1, 1024)
    assert torch.equal(half["mask"], train["mask"][..., ::2])
    assert torch.equal(half["clip_start"], train["clip_start"])


def test_compressed_measurements_of_padded_sounds_are_refused(tmp_path, capsys):
    write_tone(tmp_path / "raw" / "short.wav", seconds=0.125, rate=8000)
    write_tone(tmp_path / "raw" / "long.wav", seconds=1.0, rate=8000)
    params = {
        "datasets": {
            "snd": {
                "kind": "audio",
                "source": str(tmp_path / "raw"),
                "sample_rate": 8000,
                "clip_length": 2048,
                "clip_stride": 1024,
                "test_fraction": 0.2,
                "pad_short": True,
            }
        },
        "variants": {
            "snd_cs": {"kind": "compressed", "base": "snd", "operator": "gaussian", "ratio": 0.1}
        },
    }
    assert run(tmp_path, params, "snd") == 0
    assert run(tmp_path, params, "snd_cs") == 2
    assert "variants.snd_cs.base: snd holds sounds zero-padded" in capsys.readouterr().err
    assert not (tmp_path / "prepared" / "snd_cs").exists()


def test_idx_files_prepare_into_a_data_set_of_exactly_their_pixels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", images, gz=True)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(30, np.uint8), gz=True)
    dataset = {"kind": "images", "source": str(tmp_path / "mnist"), "image_size": 28}
    params = {"datasets": {"mnist": {**dataset, "max_examples": 25, "test_fraction": 0.2}}}
    assert run(tmp_path, params, "mnist") == 0
    folder = tmp_path / "prepared" / "mnist"
    manifest = read_manifest(folder)
    assert manifest["counts"] == {"train": 20, "test": 5}
    assert manifest["split"]["by"] == "example" and manifest["inputs"]["files"] == 1
    assert "transpose" not in manifest["settings"]  # recorded only when on
    # Every one of the first 25 images, each once, its bytes unchanged (28×28 stays 28×28).
    assert prepared_pixels(folder) == sorted(i.tobytes() for i in images[:25])

    params = {"datasets": {"emnist": {**dataset, "transpose": True}}}
    assert run(tmp_path, params, "emnist") == 0
    folder = tmp_path / "prepared" / "emnist"
    assert read_manifest(folder)["settings"]["transpose"] is True
    assert prepared_pixels(folder) == sorted(i.T.tobytes() for i in images)


def prepared_pixels(folder: Path) -> list[bytes]:
    """The bytes of every prepared grayscale image (both splits), sorted."""
    prepared = torch.cat([read_split(folder, split)["x"] for split in ("train", "test")])
    pixels = ((prepared[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    return sorted(p.tobytes() for p in pixels)


def test_per_example_measurements_keep_each_examples_seed_and_no_matrix(tmp_path, capsys):
    write_images(tmp_path / "raw", 10, size=(16, 16), mode="L")
    dataset = {"kind": "images", "source": str(tmp_path / "raw"), "image_size": 8}
    own = {"kind": "compressed", "base": "d", "operator": "gaussian", "ratio": 0.25, "seed": 4}
    params = {"datasets": {"d": dataset}, "variants": {"own": {**own, "per_example": True}}}
    assert run(tmp_path, params, "d") == 0 and run(tmp_path, params, "own") == 0
    folder = tmp_path / "prepared" / "own"
    manifest = read_manifest(folder)
    assert manifest["operator"]["kind"] == "gaussian_per_example"
    assert manifest["variant"]["per_example"] is True
    train, test = read_split(folder, "train"), read_split(folder, "test")
    seeds = torch.cat([train["a_seed"], test["a_seed"]])
    assert len(set(seeds.tolist())) == 10  # every example its own matrix
    for split in (train, test):
        operator = operator_from_spec(manifest["operator"], split["a_seed"])
        torch.testing.assert_close(operator(split["x"]), split["y"])
        assert split["y"].shape[1] == 16  # 0.25 of 64 entries; the matrices are not stored
    assert set(stored_dtypes(folder)) == {
        f"{s}.{k}.npy" for s in ("train", "test") for k in ("x", "y", "a_seed")
    }
    params["variants"]["avg"] = {
        "kind": "compressed",
        "base": "d",
        "operator": "local_average",
        "block": 2,
        "per_example": True,
    }
    assert run(tmp_path, params, "avg") == 2
    assert "variants.avg: Value error, per_example: true needs operator 'gaussian'" in (
        capsys.readouterr().err
    )


def test_patches_of_images_are_the_examples_and_an_images_patches_stay_on_one_side(tmp_path):
    write_images(tmp_path / "raw", 4, size=(40, 40), mode="L")
    patches = {"count": 5, "size": 16, "seed": 3}
    dataset = {"kind": "images", "source": str(tmp_path / "raw"), "image_size": 32}
    params = {"datasets": {"tex": {**dataset, "patches": patches, "test_fraction": 0.25}}}
    assert run(tmp_path, params, "tex") == 0
    folder = tmp_path / "prepared" / "tex"
    manifest = read_manifest(folder)
    assert manifest["counts"] == {"train": 15, "test": 5}
    assert manifest["shapes"]["train"] == [15, 1, 16, 16]
    assert manifest["settings"]["patches"] == patches and manifest["split"]["by"] == "file"
    train, test = read_split(folder, "train"), read_split(folder, "test")
    assert set(train["patch_image"].tolist()).isdisjoint(test["patch_image"].tolist())
    # Each patch is its image's pixels at its corner (the image as prepared whole, 32×32).
    whole = {"datasets": {"whole": {**dataset, "test_fraction": 0.0}}}
    assert run(tmp_path, whole, "whole") == 0
    images = read_split(tmp_path / "prepared" / "whole", "train")["x"]
    for split in (train, test):
        for x, i, (r, c) in zip(
            split["x"], split["patch_image"].tolist(), split["patch_corner"].tolist(), strict=True
        ):
            assert torch.equal(x, images[i, :, r : r + 16, c : c + 16])


def test_patches_of_too_few_images_for_a_test_split_are_refused(tmp_path, capsys):
    write_images(tmp_path / "raw", 1, size=(40, 40))
    dataset = {"kind": "images", "source": str(tmp_path / "raw"), "image_size": 32}
    params = {"datasets": {"tex": {**dataset, "patches": {"count": 8, "size": 16}}}}
    assert run(tmp_path, params, "tex") == 2
    err = capsys.readouterr().err
    assert "datasets.tex.test_fraction: 0.2 with patches of 1 image(s)" in err
    assert "needs at least 5 images" in err
    params["datasets"]["tex"]["patches"]["size"] = 33
    assert run(tmp_path, params, "tex") == 2
    assert "datasets.tex.patches: Value error, size 33 is larger than the images" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "prepared" / "tex").exists()


def test_image_folder_with_occlusion_compression_and_subsampling(tmp_path):
    write_images(tmp_path / "raw", 20, size=(70, 64))
    params = {
        "datasets": {
            "pics": {
                "kind": "images",
                "source": str(tmp_path / "raw"),
                "image_size": 64,
                "channels": 3,
                "test_fraction": 0.25,
            }
        },
        "variants": {
            "pics_P70": {
                "kind": "occlusion",
                "base": "pics",
                "pattern": "salt_pepper",
                "hidden_fraction": 0.7,
                "block": 3,
                "seed": 1,
            },
            "pics_M30": {"kind": "occlusion", "base": "pics", "pattern": "square", "side": 30},
            "pics_cs": {
                "kind": "compressed",
                "base": "pics",
                "operator": "gaussian",
                "ratio": 0.1,
                "seed": 5,
            },
            "pics_half": {"kind": "subsample", "base": "pics", "keep_fraction": 0.5},
        },
    }
    for name in ["pics", "pics_P70", "pics_M30", "pics_cs", "pics_half"]:
        assert run(tmp_path, params, name) == 0, name
    root = tmp_path / "prepared"
    base = read_manifest(root / "pics")
    assert base["counts"] == {"train": 15, "test": 5} and base["inputs"]["files"] == 20
    assert base["shapes"]["train"] == [15, 3, 64, 64]

    p70 = read_manifest(root / "pics_P70")
    for split in ("train", "test"):
        assert abs(p70["coverage"][split]["hidden_mean"] - 0.7) < 0.01
        mask = read_split(root / "pics_P70", split)["mask"]
        assert mask.shape[1] == 1 and mask.dtype == torch.bool
    assert p70["coverage"]["train"]["hidden_min"] >= 0.7
    m30 = read_manifest(root / "pics_M30")
    assert m30["coverage"]["train"]["hidden_mean"] == pytest.approx(900 / 4096)

    cs = read_manifest(root / "pics_cs")
    train = read_split(root / "pics_cs", "train")
    assert cs["operator"]["n_measurements"] == round(0.1 * 3 * 64 * 64)
    torch.testing.assert_close(operator_from_spec(cs["operator"])(train["x"]), train["y"])
    assert read_manifest(root / "pics_half")["counts"] == {"train": 8, "test": 5}

    # Stored compactly: 8-bit pixels, bool masks, float32 measurements; read back by id.
    assert stored_dtypes(root / "pics") == {"test.x.npy": "uint8", "train.x.npy": "uint8"}
    assert stored_dtypes(root / "pics_P70")["train.mask.npy"] == "bool"
    assert stored_dtypes(root / "pics_P70")["train.x.npy"] == "uint8"
    assert stored_dtypes(root / "pics_cs")["train.y.npy"] == "float32"
    x = read_split(root / "pics", "train")["x"]
    assert torch.equal(quantize(x, PIXELS), x)  # on the 8-bit grid
    ids = torch.tensor([7, 0, 3, 3])  # pics_half keeps 8 training examples
    for name in ["pics", "pics_P70", "pics_cs", "pics_half"]:
        whole = read_split(root / name, "train")
        for key, stored in open_split(root / name, "train").items():
            assert torch.equal(stored.rows(ids), whole[key][ids]), (name, key)


def test_video_clips_with_missing_frames_and_frame_subsampling(tmp_path):
    write_video(tmp_path / "raw" / "clip.mp4", n_frames=30, fps=10)
    params = {
        "datasets": {
            "vid": {
                "kind": "video",
                "source": str(tmp_path / "raw" / "clip.mp4"),
                "image_size": 16,
                "clip_frames": 8,
                "clip_stride": 2,
                "test_fraction": 0.2,
            }
        },
        "variants": {
            "vid_gaps": {
                "kind": "occlusion",
                "base": "vid",
                "pattern": "missing_frames",
                "hidden_fraction": 0.25,
            },
            "vid_slow": {"kind": "subsample", "base": "vid", "frame_step": 2},
        },
    }
    for name in ["vid", "vid_gaps", "vid_slow"]:
        assert run(tmp_path, params, name) == 0, name
    root = tmp_path / "prepared"
    assert read_manifest(root / "vid")["shapes"]["train"][1:] == [3, 8, 16, 16]
    assert read_manifest(root / "vid")["fps"] == 10
    assert read_manifest(root / "vid_gaps")["coverage"]["train"]["hidden_mean"] == 0.25
    assert stored_dtypes(root / "vid_slow") == {
        f"{side}.{key}.npy": dtype
        for side in ("train", "test")
        for key, dtype in [("x", "uint8"), ("clip_file", "int64"), ("clip_start", "int64")]
    }
    assert stored_dtypes(root / "vid_gaps")["test.mask.npy"] == "bool"
    slow = read_manifest(root / "vid_slow")
    assert slow["shapes"]["train"][2] == 4 and slow["fps"] == 5


def test_audio_folder_with_missing_segments(tmp_path):
    write_tone(tmp_path / "raw" / "a.wav", seconds=1.0, rate=16000)
    write_tone(tmp_path / "raw" / "b.flac", seconds=1.0, rate=8000, freq=220)
    params = {
        "datasets": {
            "snd": {
                "kind": "audio",
                "source": str(tmp_path / "raw"),
                "sample_rate": 8000,
                "clip_length": 1024,
                "clip_stride": 512,
            }
        },
        "variants": {
            "snd_gaps": {
                "kind": "occlusion",
                "base": "snd",
                "pattern": "missing_segments",
                "hidden_fraction": 0.3,
                "block": 64,
            }
        },
    }
    assert run(tmp_path, params, "snd") == 0 and run(tmp_path, params, "snd_gaps") == 0
    manifest = read_manifest(tmp_path / "prepared" / "snd")
    assert manifest["sample_rate"] == 8000 and manifest["shapes"]["train"][1:] == [1, 1024]
    coverage = read_manifest(tmp_path / "prepared" / "snd_gaps")["coverage"]["train"]
    assert 0.3 <= coverage["hidden_mean"] < 0.3 + 64 / 1024
    assert stored_dtypes(tmp_path / "prepared" / "snd")["train.x.npy"] == "int16"
    gaps = stored_dtypes(tmp_path / "prepared" / "snd_gaps")
    assert gaps["train.x.npy"] == "int16" and gaps["train.mask.npy"] == "bool"


def test_every_default_in_params_yaml_is_valid_and_a_bundled_one_prepares(tmp_path):
    params = load_params(REPO / "params.yaml")
    for name in [*params["bundled"], *(params["datasets"] or {}), *params["variants"]]:
        dataset_config(name, params)
    assert run(tmp_path, {"bundled": {"faces": params["bundled"]["faces"]}}, "faces") == 0
    manifest = read_manifest(tmp_path / "prepared" / "faces")
    assert manifest["counts"] == {"train": 80, "test": 20}
    assert len(manifest["inputs"]["sha256"]) == 64


@pytest.mark.parametrize(
    "dataset, variant, message",
    [
        (
            {"kind": "images", "source": "EMPTY", "image_size": 8},
            None,
            "the folder has no image files",
        ),
        (
            {"kind": "images", "source": "RAW", "image_size": "eight"},
            None,
            "datasets.d.image_size: Input should be a valid integer",
        ),
        (
            {"kind": "images", "source": "RAW", "image_size": 8, "transpose": True},
            None,
            "datasets.d.transpose: true swaps the rows and columns of idx images",
        ),
        (
            {"kind": "images", "source": "bundled:imagenet", "image_size": 8},
            None,
            "unknown bundled source 'imagenet'",
        ),
        (
            {"kind": "video", "source": "VIDEO", "image_size": 8, "clip_frames": 50},
            None,
            "fewer than the clip length 50",
        ),
        (
            {"kind": "images", "source": "RAW", "image_size": 16, "test_fraction": 0.0},
            {"kind": "occlusion", "base": "d", "pattern": "square", "side": 64},
            "would hide everything",
        ),
    ],
)
def test_bad_input_fails_with_a_message_and_leaves_nothing(
    tmp_path, capsys, dataset, variant, message
):
    (tmp_path / "EMPTY").mkdir()
    write_images(tmp_path / "RAW", 3)
    write_video(tmp_path / "VIDEO" / "v.mp4", n_frames=5)
    dataset = {
        k: str(tmp_path / v) if k == "source" and v.isupper() else v for k, v in dataset.items()
    }
    params = {"datasets": {"d": dataset}, "variants": {"v": variant} if variant else {}}
    if variant:
        assert run(tmp_path, params, "d") == 0
    assert run(tmp_path, params, "v" if variant else "d") == 2
    assert message in capsys.readouterr().err
    prepared = tmp_path / "prepared"
    left = sorted(p.name for p in prepared.glob("*")) if prepared.exists() else []
    assert left == (["d"] if variant else [])  # no half-written or temporary folder


def test_a_variant_of_a_base_in_the_old_format_says_to_prepare_it_again(tmp_path, capsys):
    base = tmp_path / "prepared" / "pics"
    base.mkdir(parents=True)
    for split, n in (("train", 3), ("test", 1)):
        torch.save({"x": torch.zeros(n, 1, 8, 8)}, base / f"{split}.pt")
    shapes = {"train": [3, 1, 8, 8], "test": [1, 1, 8, 8]}
    (base / "manifest.json").write_text(
        json.dumps({"name": "pics", "kind": "image", "shapes": shapes, "files": {}})
    )
    params = {
        "datasets": {"pics": {"kind": "images", "source": "RAW", "image_size": 8}},
        "variants": {
            "pics_M": {"kind": "occlusion", "base": "pics", "pattern": "square", "side": 20}
        },
    }
    assert run(tmp_path, params, "pics_M") == 2
    err = capsys.readouterr().err
    assert f"error: {base} holds prepared data in an old format" in err and "dvc repro" in err
    assert not (tmp_path / "prepared" / "pics_M").exists()
