"""Prepare one data set or variant named in params.yaml into data/prepared/<name>/.

    python -m flows.prepare faces          # a data set (params.yaml: bundled.faces)
    python -m flows.prepare faces_P50      # a variant of it (params.yaml: variants.faces_P50)

A data set reads its source (your files, or `bundled:<name>` data shipped inside an installed
package), quantizes the signals to their stored form (8-bit pixels, 16-bit audio samples:
abp/datasets.py), splits them into train and test, and writes them with a manifest. Video
and audio clips overlap in time, so they are split by file, or (one file, or too few for
test_fraction) by time with a gap of one clip between the sides; the manifest's `split`
says which (abp/datasets.py explains both). A variant reads its prepared base and
adds occlusion masks, compressed measurements (and the operator's spec) or subsampling. The
DVC stages in dvc.yaml run exactly these commands.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from abp import datasets, variants
from abp.sources.audio import load_audio_clips
from abp.sources.bundled import bundled_file, bundled_images
from abp.sources.common import Clips, Skipped, SourceError, source_root
from abp.sources.idx import idx_image_files
from abp.sources.images import (
    images_from_arrays,
    load_idx_images,
    load_image_folder,
    random_patches,
)
from abp.sources.video import load_video_clips
from flows.config import (
    BUNDLED,
    AudioDataset,
    CompressedVariant,
    ConfigError,
    ImageDataset,
    OcclusionVariant,
    SubsampleVariant,
    VideoDataset,
    dataset_config,
    load_params,
)
from flows.paths import PARAMS_FILE, PREPARED_ROOT
from flows.process import prefect_server_for_this_process, run_command


def _bundled_name(source: str) -> str | None:
    return source[len(BUNDLED) :] if source.startswith(BUNDLED) else None


@task(cache_policy=NO_CACHE)
def read_source(
    cfg: ImageDataset | VideoDataset | AudioDataset,
) -> tuple[torch.Tensor | Clips, dict[str, Any]]:
    """The source's examples (images as one tensor; video and audio as clips that know their
    file and start), and what the manifest says about the inputs."""
    bundled = _bundled_name(cfg.source)
    info: dict[str, Any] = {"source": cfg.source}
    source: torch.Tensor | Clips
    skipped: list[Skipped]
    if isinstance(cfg, ImageDataset) and bundled:
        arrays = bundled_images(bundled)[: cfg.max_examples]
        source = images_from_arrays(
            arrays, size=cfg.image_size, channels=cfg.channels, crop=cfg.crop
        )
        info["inputs"] = {"arrays": len(arrays), "sha256": datasets.sha256_arrays(arrays)}
        skipped = []
    else:
        location = bundled_file(bundled) if bundled else Path(cfg.source)
        if isinstance(cfg, ImageDataset):
            idx = bool(idx_image_files(location))  # idx files are read instead of images
            load = partial(load_idx_images, transpose=cfg.transpose) if idx else load_image_folder
            source, files, skipped = load(
                location,
                size=cfg.image_size,
                channels=cfg.channels,
                crop=cfg.crop,
                max_images=cfg.max_examples,
                on_corrupt=cfg.on_corrupt,
            )
            info["split"] = (
                {"by": "example", "note": "idx images, drawn at random"}
                if idx
                else {"by": "file", "note": "one example per image file, drawn at random"}
            )
        elif isinstance(cfg, VideoDataset):
            clips = load_video_clips(
                location,
                size=cfg.image_size,
                channels=cfg.channels,
                crop=cfg.crop,
                clip_frames=cfg.clip_frames,
                clip_stride=cfg.clip_stride,
                fps=cfg.fps,
                frame_step=cfg.frame_step,
                max_frames=cfg.max_frames,
                max_clips=cfg.max_examples,
                on_corrupt=cfg.on_corrupt,
            )
            files, skipped = clips.files, clips.skipped
            info.update(fps=clips.rate, **frame_rates(clips, cfg.frame_step))
            source = clips
        else:
            clips = load_audio_clips(
                location,
                sample_rate=cfg.sample_rate,
                clip_length=cfg.clip_length,
                clip_stride=cfg.clip_stride,
                peak_normalize=cfg.peak_normalize,
                pad_short=cfg.pad_short,
                max_clips=cfg.max_examples,
                on_corrupt=cfg.on_corrupt,
            )
            files, skipped = clips.files, clips.skipped
            info["sample_rate"] = cfg.sample_rate
            info["channels_mixed"] = {
                "files": len(clips.multichannel),
                "note": "files with several channels averaged to mono",
            }
            if clips.padded:
                info["padded"] = {
                    "files": len(clips.padded),
                    "first": clips.names(clips.padded[:3]),
                    "note": "shorter than one clip: zero-padded at the end; the mask marks the "
                    "padding unobserved",
                }
            source = clips
        info["inputs"] = {
            "files": len(files),
            "sha256": datasets.sha256_files(files, source_root(location)),
        }
    info["skipped"] = {
        "count": len(skipped),
        "files": [{"path": s.path, "reason": s.reason} for s in skipped[:50]],
    }
    return source, info


def frame_rates(clips: Clips, frame_step: int) -> dict[str, Any]:
    """Each video's own frame rate, and which ones were resampled to the data set's."""
    names = clips.names()
    target = clips.rate * frame_step
    resampled = [
        n for n, r in zip(names, clips.file_rates) if not math.isclose(r, target, rel_tol=1e-6)
    ]
    found: dict[str, Any] = {"source_fps": dict(zip(names, clips.file_rates))}
    if resampled:
        found["resampled"] = {
            "to_fps": target,
            "files": resampled,
            "how": "nearest frame in time (frames dropped or repeated)",
        }
    return found


# Keys added since data sets were first prepared, recorded in a manifest only when set.
LATER_KEYS = ("transpose", "patches", "per_example")


def recorded_settings(cfg) -> dict[str, Any]:
    """The data set's or variant's settings for its manifest. Keys added later (LATER_KEYS)
    are recorded only when set: what was prepared before they existed keeps byte-identical
    manifests, so upgrading retrains nothing that depends on it."""
    unset = {k for k in LATER_KEYS if k in type(cfg).model_fields and not getattr(cfg, k)}
    return cfg.model_dump(exclude=unset or None)


def patch_examples(
    name: str, cfg: ImageDataset, images: torch.Tensor, params_file: Path
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The crops of every image as the examples, with the image and corner of each
    (`patch_image`, `patch_corner`), split by image: an image's crops overlap one another,
    so all of them go to one side."""
    assert cfg.patches is not None
    x, image, corner = random_patches(
        images, count=cfg.patches.count, size=cfg.patches.size, seed=cfg.patches.seed
    )
    names = [f"image {i}" for i in range(len(images))]  # in the source's (sorted) order
    if cfg.test_fraction and len(names) * cfg.test_fraction < 1 - 1e-9:
        raise ConfigError(
            f"{params_file}: datasets.{name}.test_fraction: {cfg.test_fraction} with patches "
            f"of {len(names)} image(s): an image's patches overlap, so the split keeps each "
            f"image's patches on one side and needs at least {math.ceil(1 / cfg.test_fraction)} "
            "images; use test_fraction: 0 (no test split) or more images"
        )
    train, test, record = datasets.split_by_source(
        image,
        torch.zeros_like(image),
        names=names,
        clip_length=cfg.patches.size,
        test_fraction=cfg.test_fraction,
        seed=cfg.split_seed,
        unit="pixels",
    )
    record["note"] = "patches of one image overlap: each image's patches on one side"
    return {"x": x, "patch_image": image, "patch_corner": corner}, train, test, record


def prepare_dataset(name: str, cfg, out: Path, params_file: Path = PARAMS_FILE) -> dict[str, Any]:
    if isinstance(cfg, ImageDataset) and cfg.transpose and not idx_image_files(Path(cfg.source)):
        raise ConfigError(
            f"{params_file}: datasets.{name}.transpose: true swaps the rows and columns of idx "
            f"images, and {cfg.source} holds no idx image files (names ending images-idx3-ubyte)"
        )
    source, info = read_source(cfg)
    if isinstance(source, Clips):
        # Clips overlap in time: a random draw of clips would put most of every test clip
        # in training too, so the split is by file, or by time with a gap.
        video = isinstance(cfg, VideoDataset)
        try:
            train_ids, test_ids, info["split"] = datasets.split_by_source(
                source.file,
                source.start,
                names=source.names(),
                clip_length=cfg.clip_frames if video else cfg.clip_length,
                test_fraction=cfg.test_fraction,
                seed=cfg.split_seed,
                unit="frames" if video else "samples",
            )
        except ValueError as error:
            raise ConfigError(f"{params_file}: datasets.{name}.test_fraction: {error}") from None
        examples = {"x": source.x, "clip_file": source.file, "clip_start": source.start}
        if source.mask is not None:
            examples["mask"] = source.mask
    elif isinstance(cfg, ImageDataset) and cfg.patches is not None:
        examples, train_ids, test_ids, info["split"] = patch_examples(
            name, cfg, source, params_file
        )
    else:
        train_ids, test_ids = datasets.split_indices(len(source), cfg.test_fraction, cfg.split_seed)
        examples = {"x": source}
    kind = variants.signal_kind(examples["x"])
    # The prepared signal is its stored form: images and frames come from 8-bit pixels (a
    # resized one is rounded), sounds become 16-bit samples, so training sees what is on disk.
    encoding = datasets.SIGNAL_ENCODINGS[kind]
    examples["x"] = datasets.quantize(examples["x"], encoding)
    splits = {
        split: {k: v[ids] for k, v in examples.items()}
        for split, ids in (("train", train_ids), ("test", test_ids))
    }
    manifest = {
        "name": name,
        "kind": kind,
        **info,
        "settings": recorded_settings(cfg),
        "split_seed": cfg.split_seed,
        "counts": {s: len(t["x"]) for s, t in splits.items()},
        "shapes": {s: list(t["x"].shape) for s, t in splits.items()},
    }
    datasets.write_prepared(out, splits, manifest, {"x": encoding})
    return manifest


VARIANTS = (OcclusionVariant, CompressedVariant, SubsampleVariant)


def check_variant_fits(name: str, cfg, base: dict[str, Any], params_file: Path) -> None:
    """Raise ConfigError, naming the variant's key, unless its settings fit the prepared base
    (read from the base's manifest alone, so this runs before any flow starts)."""
    shape = base["shapes"]["train"][1:]
    try:
        if isinstance(cfg, OcclusionVariant):
            variants.check_occlusion(
                shape,
                pattern=cfg.pattern,
                side=cfg.side,
                block=cfg.block,
                hidden_fraction=cfg.hidden_fraction,
            )
        elif isinstance(cfg, CompressedVariant):
            variants.check_measurement(
                shape,
                operator=cfg.operator,
                ratio=cfg.ratio,
                block=cfg.block,
                per_example=cfg.per_example,
                n_examples=max(base["counts"].values()),
            )
        else:
            variants.check_subsample(shape, frame_step=cfg.frame_step, sample_step=cfg.sample_step)
    except variants.UnfitSetting as error:
        raise ConfigError(
            f"{params_file}: variants.{name}.{error.key}: {error} (base "
            f"{cfg.base}: {base['kind']} data, {'×'.join(map(str, shape))} per "
            "example)"
        ) from None
    if isinstance(cfg, CompressedVariant) and base.get("padded"):
        # y = A·x would mix the made-up zeros into every measurement, and no mask can take
        # them out again.
        raise ConfigError(
            f"{params_file}: variants.{name}.base: {cfg.base} holds sounds "
            "zero-padded to one clip (pad_short: true), and compressed "
            "measurements would mix the padding into every measurement; set "
            f"datasets.{cfg.base}.pad_short: false, or use an occlusion or "
            "subsample variant"
        )


def prepare_variant(
    name: str, cfg, base_folder: Path, out: Path, params_file: Path = PARAMS_FILE
) -> dict[str, Any]:
    """A variant of a prepared data set. Its examples keep the base's split, and their
    clip_file and clip_start (in the base's frames or samples). A base with a mask (sounds
    padded with pad_short) keeps it: occlusion hides entries on top of it, subsampling
    subsamples it, and compressed measurements are refused (check_variant_fits)."""
    base = datasets.read_manifest(base_folder)
    check_variant_fits(name, cfg, base, params_file)
    splits = {s: datasets.read_split(base_folder, s) for s in datasets.SPLITS}
    rng = torch.Generator().manual_seed(cfg.seed)
    manifest: dict[str, Any] = {
        "name": name,
        "base": cfg.base,
        "kind": base["kind"],
        "variant": recorded_settings(cfg),
        "base_inputs": base.get("inputs"),
        **{k: base[k] for k in ("fps", "sample_rate", "split", "padded") if k in base},
    }
    if isinstance(cfg, OcclusionVariant):
        try:
            manifest["coverage"] = variants.occlude(
                splits,
                pattern=cfg.pattern,
                rng=rng,
                hidden_fraction=cfg.hidden_fraction,
                block=cfg.block,
                side=cfg.side,
            )
        except variants.UnfitSetting:
            raise
        except ValueError as error:
            raise ConfigError(f"{params_file}: variants.{name}: {error}") from None
        if "padded" in base:
            manifest["coverage_note"] = "hidden counts the base's padding too"
    elif isinstance(cfg, CompressedVariant):
        manifest["operator"] = variants.measure(
            splits,
            operator=cfg.operator,
            ratio=cfg.ratio,
            block=cfg.block,
            seed=cfg.seed,
            per_example=cfg.per_example,
        )
        manifest["measurement_shape"] = list(splits["train"]["y"].shape[1:])
    else:
        splits = variants.thin(
            splits,
            keep_fraction=cfg.keep_fraction,
            rng=rng,
            frame_step=cfg.frame_step,
            sample_step=cfg.sample_step,
        )
        if "fps" in manifest:
            manifest["fps"] = manifest["fps"] / cfg.frame_step
        if "sample_rate" in manifest:
            manifest["sample_rate"] = manifest["sample_rate"] / cfg.sample_step
    manifest["counts"] = {s: len(t["x"]) for s, t in splits.items()}
    manifest["shapes"] = {s: list(t["x"].shape) for s, t in splits.items()}
    # The signals are the base's, so they keep its encoding (new measurements: float32).
    datasets.write_prepared(out, splits, manifest, datasets.encodings_of(base_folder))
    return manifest


@flow(name="prepare", flow_run_name="prepare {name}")
def prepare(
    name: str, params_file: str = str(PARAMS_FILE), prepared_root: str = str(PREPARED_ROOT)
) -> dict[str, Any]:
    """Prepare the data set or variant `name` from the params file into
    <prepared_root>/<name>."""
    logger = get_run_logger()
    cfg = dataset_config(name, load_params(Path(params_file)), Path(params_file))
    started = time.perf_counter()
    out = Path(prepared_root) / name
    if isinstance(cfg, VARIANTS):
        manifest = prepare_variant(
            name, cfg, Path(prepared_root) / cfg.base, out, Path(params_file)
        )
    else:
        manifest = prepare_dataset(name, cfg, out, Path(params_file))
    logger.info(
        "%s: %s train / %s test (split by %s), shape %s, %.1f s",
        out,
        manifest["counts"]["train"],
        manifest["counts"]["test"],
        manifest.get("split", {}).get("by", "example"),
        manifest["shapes"]["train"][1:],
        time.perf_counter() - started,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "name", help="a key under bundled:, datasets: or variants: in the params file"
    )
    parser.add_argument("--params", default=str(PARAMS_FILE), help="the params file")
    parser.add_argument("--prepared-root", default=str(PREPARED_ROOT))
    args = parser.parse_args(argv)
    try:
        # Validate before Prefect starts: a bad value fails at once, before any work. A
        # variant is checked against its prepared base's manifest too (its shapes), and its
        # base's files are opened (mapped, not read): an old format or a damaged file.
        params_file = Path(args.params)
        cfg = dataset_config(args.name, load_params(params_file), params_file)
        if isinstance(cfg, VARIANTS):
            base = datasets.read_manifest(Path(args.prepared_root) / cfg.base)
            check_variant_fits(args.name, cfg, base, params_file)
            for split in datasets.SPLITS:
                datasets.open_split(Path(args.prepared_root) / cfg.base, split)
        with prefect_server_for_this_process():
            prepare(args.name, params_file=args.params, prepared_root=args.prepared_root)
    except (ConfigError, SourceError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    run_command(main)
