"""The prepare flow under Prefect: each source kind and variant from files the tests make,
the bundled defaults, and bad input that must fail cleanly and leave nothing behind."""

from pathlib import Path

import pytest
import torch
import yaml
from media import write_images, write_tone, write_video

from abp.datasets import read_manifest, read_split
from abp.variants import operator_from_spec
from flows.config import dataset_config, load_params
from flows.prepare import main

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, params: dict, name: str) -> int:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return main([name, "--params", str(tmp_path / "params.yaml"),
                 "--prepared-root", str(tmp_path / "prepared")])


def test_image_folder_with_occlusion_compression_and_subsampling(tmp_path):
    write_images(tmp_path / "raw", 20, size=(70, 64))
    params = {
        "datasets": {"pics": {"kind": "images", "source": str(tmp_path / "raw"),
                              "image_size": 64, "channels": 3, "test_fraction": 0.25}},
        "variants": {
            "pics_P70": {"kind": "occlusion", "base": "pics", "pattern": "salt_pepper",
                         "hidden_fraction": 0.7, "block": 3, "seed": 1},
            "pics_M30": {"kind": "occlusion", "base": "pics", "pattern": "square", "side": 30},
            "pics_cs": {"kind": "compressed", "base": "pics", "operator": "gaussian",
                        "ratio": 0.1, "seed": 5},
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


def test_video_clips_with_missing_frames_and_frame_subsampling(tmp_path):
    write_video(tmp_path / "raw" / "clip.mp4", n_frames=30, fps=10)
    params = {
        "datasets": {"vid": {"kind": "video", "source": str(tmp_path / "raw" / "clip.mp4"),
                             "image_size": 16, "clip_frames": 8, "clip_stride": 2,
                             "test_fraction": 0.2}},
        "variants": {"vid_gaps": {"kind": "occlusion", "base": "vid", "pattern": "missing_frames",
                                  "hidden_fraction": 0.25},
                     "vid_slow": {"kind": "subsample", "base": "vid", "frame_step": 2}},
    }
    for name in ["vid", "vid_gaps", "vid_slow"]:
        assert run(tmp_path, params, name) == 0, name
    root = tmp_path / "prepared"
    assert read_manifest(root / "vid")["shapes"]["train"][1:] == [3, 8, 16, 16]
    assert read_manifest(root / "vid")["fps"] == 10
    assert read_manifest(root / "vid_gaps")["coverage"]["train"]["hidden_mean"] == 0.25
    slow = read_manifest(root / "vid_slow")
    assert slow["shapes"]["train"][2] == 4 and slow["fps"] == 5


def test_audio_folder_with_missing_segments(tmp_path):
    write_tone(tmp_path / "raw" / "a.wav", seconds=1.0, rate=16000)
    write_tone(tmp_path / "raw" / "b.flac", seconds=1.0, rate=8000, freq=220)
    params = {
        "datasets": {"snd": {"kind": "audio", "source": str(tmp_path / "raw"),
                             "sample_rate": 8000, "clip_length": 1024, "clip_stride": 512}},
        "variants": {"snd_gaps": {"kind": "occlusion", "base": "snd",
                                  "pattern": "missing_segments", "hidden_fraction": 0.3,
                                  "block": 64}},
    }
    assert run(tmp_path, params, "snd") == 0 and run(tmp_path, params, "snd_gaps") == 0
    manifest = read_manifest(tmp_path / "prepared" / "snd")
    assert manifest["sample_rate"] == 8000 and manifest["shapes"]["train"][1:] == [1, 1024]
    coverage = read_manifest(tmp_path / "prepared" / "snd_gaps")["coverage"]["train"]
    assert 0.3 <= coverage["hidden_mean"] < 0.3 + 64 / 1024


def test_every_default_in_params_yaml_is_valid_and_a_bundled_one_prepares(tmp_path):
    params = load_params(REPO / "params.yaml")
    for name in [*params["datasets"], *params["variants"]]:
        dataset_config(name, params)
    assert run(tmp_path, {"datasets": {"faces": params["datasets"]["faces"]}}, "faces") == 0
    manifest = read_manifest(tmp_path / "prepared" / "faces")
    assert manifest["counts"] == {"train": 80, "test": 20}
    assert len(manifest["inputs"]["sha256"]) == 64


@pytest.mark.parametrize("dataset, variant, message", [
    ({"kind": "images", "source": "EMPTY", "image_size": 8}, None, "the folder has no image files"),
    ({"kind": "images", "source": "RAW", "image_size": "eight"}, None,
     "datasets.d.image_size: Input should be a valid integer"),
    ({"kind": "images", "source": "bundled:imagenet", "image_size": 8}, None,
     "unknown bundled source 'imagenet'"),
    ({"kind": "video", "source": "VIDEO", "image_size": 8, "clip_frames": 50}, None,
     "fewer than the clip length 50"),
    ({"kind": "images", "source": "RAW", "image_size": 16, "test_fraction": 0.0},
     {"kind": "occlusion", "base": "d", "pattern": "square", "side": 64},
     "would hide everything"),
])
def test_bad_input_fails_with_a_message_and_leaves_nothing(tmp_path, capsys, dataset, variant, message):
    (tmp_path / "EMPTY").mkdir()
    write_images(tmp_path / "RAW", 3)
    write_video(tmp_path / "VIDEO" / "v.mp4", n_frames=5)
    dataset = {k: str(tmp_path / v) if k == "source" and v.isupper() else v for k, v in dataset.items()}
    params = {"datasets": {"d": dataset}, "variants": {"v": variant} if variant else {}}
    if variant:
        assert run(tmp_path, params, "d") == 0
    assert run(tmp_path, params, "v" if variant else "d") == 2
    assert message in capsys.readouterr().err
    left = sorted(p.name for p in (tmp_path / "prepared").glob("*")) if (tmp_path / "prepared").exists() else []
    assert left == (["d"] if variant else [])  # no half-written or temporary folder
