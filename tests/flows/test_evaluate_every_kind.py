"""Evaluation of video and sound (flows.evaluate.compute_metrics and write_figures, without
Prefect or MLflow): both baselines for every kind of data, labelled figures, media long
enough to watch or hear, and an index of them all."""

import json
import math

import numpy as np
import pytest
import soundfile
import torch

from abp.datasets import observations
from abp.evaluate import Split, mean_absolute_error, texture_scores
from abp.media import duration_seconds
from abp.models import build_generator
from flows.config import ExperimentConfig
from flows.evaluate import compute_metrics, write_figures
from flows.experiment import Experiment

GENERATORS = {
    "video": {
        "kind": "video",
        "latent_channels": 2,
        "latent_frames": 1,
        "latent_size": 2,
        "widths": [4],
        "temporal_layers": 1,
        "channels": 3,
    },  # 3×4×8×8 clips
    "audio": {
        "kind": "audio",
        "latent_channels": 2,
        "latent_length": 4,
        "widths": [4],
        "stride": 4,
        "channels": 1,
    },  # 1×64 sounds
    "texture": {
        "kind": "texture",
        "latent_channels": 2,
        "latent_size": 2,
        "widths": [4],
        "channels": 1,
    },  # 1×8×8 textures
}


class InMemoryExperiment(Experiment):
    """An experiment whose prepared splits are tensors held here rather than files."""

    splits: dict

    def split(self, split):
        tensors = self.splits[split]
        return Split(tensors["x"], *observations(tensors, self.manifest), tensors.get("mask"))


def experiment(
    kind: str, tmp_path, *, occluded: bool = False, vae: dict | None = None
) -> tuple[Experiment, torch.nn.Module]:
    torch.manual_seed(0)
    generator = build_generator(GENERATORS[kind]).eval()
    with torch.no_grad():  # signals the generator can make, plus noise
        x = generator(generator.sample_latent(14))
    x = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    splits = {"train": {"x": x[:10]}, "test": {"x": x[10:]}}
    if occluded:
        for tensors in splits.values():
            tensors["mask"] = torch.rand_like(tensors["x"]) > 0.3
    shape = list(x.shape[1:])
    manifest = {
        "kind": kind,
        "fps": 25.0,
        "sample_rate": 8000,
        "counts": {"train": 10, "test": 4},
        "shapes": {"train": [10, *shape]},
    }
    cfg = ExperimentConfig(
        dataset="data",
        generator=GENERATORS[kind],
        abp={"sigma": 0.3, "step_size": 0.1},
        training={"epochs": 1},
        evaluation={"n_steps": 20, "n_samples": 2},
        vae=vae or {},
    )
    exp = InMemoryExperiment(
        "tiny",
        cfg,
        manifest,
        tmp_path / "data",
        tmp_path / "models",
        tmp_path / "reports" / "experiments" / "tiny",
    )
    exp.splits = splits
    exp.model_folder.mkdir(parents=True)
    torch.save(torch.zeros(10, *generator.latent_shape), exp.model_folder / "latent_bank.pt")
    return exp, generator


@pytest.mark.parametrize("kind", ["video", "audio"])
def test_every_kind_is_scored_against_pca_and_the_trivial_baseline(kind, tmp_path):
    exp, generator = experiment(kind, tmp_path)
    metrics, shown, vae = compute_metrics(exp, generator)
    latent_size = math.prod(generator.latent_shape)
    assert metrics["latent_size"] == latent_size == 8
    assert metrics["pca_components"] == min(latent_size, 10 - 1) == 8
    for prefix in ("", "vae_", "pca_", "trivial_"):
        assert {f"{prefix}train_mae", f"{prefix}heldout_mae"} <= set(metrics)
    # Complete data: the VAE's descent runs on the test split alone.
    assert "vae_refined_heldout_mae" in metrics and "vae_refined_train_mae" not in metrics
    assert vae is not None and vae.decoder.config == generator.config
    truth = exp.splits["test"]["x"]
    if kind == "audio":  # the trivial baseline of sound is silence
        assert metrics["trivial_heldout_mae"] == pytest.approx(
            mean_absolute_error(torch.zeros_like(truth), truth)
        )
    else:  # of images and video, the training mean signal
        mean = exp.splits["train"]["x"].mean(0, keepdim=True).expand_as(truth)
        assert metrics["trivial_heldout_mae"] == pytest.approx(
            mean_absolute_error(mean, truth), rel=1e-5
        )
    assert list(shown) == ["truth", "ABP", "VAE", "VAE + descent", "PCA d=8"]
    assert not any(key.startswith(("texture_", "shuffled_")) for key in metrics)


def test_a_vae_that_diverges_is_a_warning_and_no_vae_rows_never_a_lost_evaluation(tmp_path, caplog):
    exp, generator = experiment("audio", tmp_path, vae={"learning_rate": 1e30})
    metrics, shown, vae = compute_metrics(exp, generator)
    assert vae is None
    assert not any(key.startswith("vae_") for key in metrics)
    assert {"heldout_mae", "pca_heldout_mae"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert list(shown) == ["truth", "ABP", "PCA d=8"]
    assert "experiments.tiny.vae:" in caplog.text and "no VAE rows" in caplog.text
    # and one turned off is not learned at all
    exp, generator = experiment("audio", tmp_path / "off", vae={"enabled": False})
    metrics, shown, vae = compute_metrics(exp, generator)
    assert vae is None and not any(key.startswith("vae_") for key in metrics)


def test_a_texture_generator_is_scored_on_its_syntheses_beside_shuffled_pixels(tmp_path):
    exp, generator = experiment("texture", tmp_path)
    metrics, _, vae = compute_metrics(exp, generator)
    texture = texture_scores(generator, exp.splits["train"]["x"], n_samples=2)
    assert texture == {k: metrics[k] for k in texture}  # the figures' samples and large map
    assert set(texture) == {
        "texture_spectrum_distance",
        "texture_spectrum_distance_large",
        "shuffled_spectrum_distance",
        "texture_histogram_distance",
        "texture_histogram_distance_large",
    }
    assert all(math.isfinite(v) and v >= 0 for v in texture.values())
    assert texture["shuffled_spectrum_distance"] > 0
    # The VAE's decoder is scored alike, beside the same baseline.
    assert vae is not None
    assert texture_scores(vae.decoder, exp.splits["train"]["x"], 2, prefix="vae_") == {
        f"vae_{k}": metrics[f"vae_{k}"] for k in texture if k != "shuffled_spectrum_distance"
    }


def test_occluded_sound_keeps_what_is_heard_and_fills_the_gaps(tmp_path):
    exp, generator = experiment("audio", tmp_path, occluded=True)
    metrics, shown, _ = compute_metrics(exp, generator)
    assert {
        "heldout_hidden_mae",
        "vae_heldout_hidden_mae",
        "vae_refined_heldout_hidden_mae",
        "vae_refined_train_hidden_mae",  # the recovery of occluded training signals
        "pca_heldout_hidden_mae",
        "trivial_heldout_hidden_mae",
        "trivial_train_hidden_mae",
    } <= set(metrics)
    test = exp.splits["test"]
    silence_in_the_gaps = test["x"] * test["mask"]
    assert metrics["trivial_heldout_mae"] == pytest.approx(
        mean_absolute_error(silence_in_the_gaps, test["x"])
    )
    assert list(shown) == ["truth", "observed", "ABP", "VAE", "VAE + descent", "PCA d=8"]
    observed = test["mask"][: len(shown["ABP"])]
    for method in ("ABP", "VAE", "VAE + descent"):
        assert torch.equal(shown[method][observed], shown["truth"][observed])


@pytest.mark.parametrize("kind, suffix", [("video", ".mp4"), ("audio", ".wav")])
def test_figures_are_labelled_and_media_last_long_enough_to_watch(kind, suffix, tmp_path):
    exp, generator = experiment(kind, tmp_path)
    _, shown, vae = compute_metrics(exp, generator)
    history = [{"epoch": 1, "energy": 10.0, "reconstruction_mse": 0.1}]
    stale = exp.report_folder / "media" / f"latents{suffix}"  # what an older version wrote
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    write_figures(exp, generator, shown, history, vae)
    figures = {p.name for p in (exp.report_folder / "figures").iterdir()}
    assert "reconstructions.png" in figures and "training.png" in figures
    # the truth beside the samples, in the report
    assert {"image": "truth.png", "video": "truth_frames.png", "audio": "truth_spectrograms.png"}[
        kind
    ] in figures
    sounds_and_videos = sorted((exp.report_folder / "media").glob(f"*{suffix}"))
    assert [p.name for p in sounds_and_videos] == [
        f"reconstructions{suffix}",
        f"samples{suffix}",
        f"truth{suffix}",
        f"vae_samples{suffix}",
    ]
    for path in sounds_and_videos:
        assert duration_seconds(path) >= 3.0  # 4 frames at 25 fps, 64 samples at 8 kHz
    index = json.loads((exp.report_folder / "media" / "index.json").read_text())
    assert {m["file"] for m in index["media"]} == {p.name for p in sounds_and_videos}
    assert all(m["seconds"] >= 3.0 for m in index["media"])
    assert ": truth, ABP, VAE, VAE + descent, PCA d=8" in next(
        m["shows"] for m in index["media"] if m["file"].startswith("reconstructions")
    )


def test_sound_is_heard_from_clips_with_signal_each_at_its_truths_level(tmp_path):
    exp, generator = experiment("audio", tmp_path)
    test = exp.splits["test"]["x"]
    test.mul_(0.02)  # recorded speech: far below full scale
    test[0] = 0  # a pause between words: never the one shown
    _, shown, vae = compute_metrics(exp, generator)
    write_figures(
        exp, generator, shown, [{"epoch": 1, "energy": 1.0, "reconstruction_mse": 0.1}], vae
    )
    index = json.loads((exp.report_folder / "media" / "index.json").read_text())
    assert index["examples"] == {"split": "test", "indices": [1, 2, 3]}

    # reconstructions.wav: each clip as truth, ABP, the VAE's two, PCA in turn, each
    # followed by a gap
    written, _ = soundfile.read(exp.report_folder / "media" / "reconstructions.wav")
    length, gap, rows = test.shape[-1], round(0.25 * 8000), len(shown)
    segments = [written[k * (length + gap) : k * (length + gap) + length] for k in range(3 * rows)]
    lsb = 2 / 32768
    for clip, i in enumerate([1, 2, 3]):
        truth, abp = segments[rows * clip], segments[rows * clip + 1]
        assert np.abs(truth).max() == pytest.approx(10 ** (-1 / 20), abs=lsb)  # −1 dBFS
        gain = 10 ** (-1 / 20) / float(test[i].abs().max())  # the truth's, for ABP's too
        np.testing.assert_allclose(abp, (shown["ABP"][i].reshape(-1) * gain).clamp(-1, 1), atol=lsb)
    assert float(test[1:].abs().max()) < 0.05  # the data themselves were not raised
