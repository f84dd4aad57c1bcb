"""The report: every evaluated experiment beside its baselines, the paper's tables, and notes
computed from the numbers (never fixed text)."""

import json
from pathlib import Path

import pytest
import yaml

from flows.report import SCORES, write_outputs
from flows.report import main as report_main

ABP = {"sigma": 0.3, "step_size": 0.1, "langevin_steps": 2, "batch_size": 4}


def experiment(dataset: str, generator: dict) -> dict:
    return {"dataset": dataset, "generator": generator, "abp": ABP, "training": {"epochs": 1}}


PARAMS = {
    "datasets": {
        "pics": {"kind": "images", "source": "raw", "image_size": 8},
        "talk": {
            "kind": "audio",
            "source": "raw",
            "sample_rate": 8000,
            "clip_length": 256,
            "clip_stride": 256,
        },
        "clips": {"kind": "video", "source": "raw.mp4", "image_size": 8, "test_fraction": 0},
    },
    "variants": {
        "pics_P50": {
            "kind": "occlusion",
            "base": "pics",
            "pattern": "salt_pepper",
            "hidden_fraction": 0.5,
            "block": 3,
        },
        "pics_avg": {"kind": "compressed", "base": "pics", "operator": "local_average", "block": 2},
    },
    "experiments": {
        "pics": experiment("pics", {"kind": "image", "latent_dim": 4}),
        "pics_P50": experiment("pics_P50", {"kind": "image", "latent_dim": 4}),
        "pics_avg": experiment("pics_avg", {"kind": "image", "latent_dim": 4}),
        "talk": experiment("talk", {"kind": "audio", "latent_channels": 2, "latent_length": 4}),
        "clips": experiment("clips", {"kind": "video", "latent_channels": 2}),
        "never_run": experiment("pics", {"kind": "image", "latent_dim": 2}),
    },
}


def errors(prefix: str, **values: float) -> dict[str, float]:
    return {f"{prefix}{key}": value for key, value in values.items()}


METRICS = {  # as flows.evaluate writes them
    # held-out: loses to PCA and to the VAE refined by descent, beats the VAE's encoder;
    # training error 5× below the held-out one
    "pics": {
        **errors("", train_mae=0.01, heldout_mae=0.05),
        **errors("vae_", train_mae=0.02, heldout_mae=0.06),
        **errors("vae_refined_", heldout_mae=0.045),
        **errors("pca_", train_mae=0.03, heldout_mae=0.04),
        **errors("trivial_", train_mae=0.2, heldout_mae=0.2),
        "pca_components": 4,
        "latent_size": 4,
        "train_examples": 40,
    },
    # beats every baseline, on the hidden entries
    "pics_P50": {
        **errors(
            "", train_mae=0.03, train_hidden_mae=0.06, heldout_mae=0.04, heldout_hidden_mae=0.07
        ),
        **errors(
            "vae_", train_mae=0.04, train_hidden_mae=0.08, heldout_mae=0.05, heldout_hidden_mae=0.09
        ),
        **errors(
            "vae_refined_",
            train_mae=0.035,
            train_hidden_mae=0.065,
            heldout_mae=0.045,
            heldout_hidden_mae=0.075,
        ),
        **errors(
            "pca_", train_mae=0.05, train_hidden_mae=0.1, heldout_mae=0.05, heldout_hidden_mae=0.09
        ),
        **errors(
            "trivial_",
            train_mae=0.08,
            train_hidden_mae=0.15,
            heldout_mae=0.08,
            heldout_hidden_mae=0.15,
        ),
        "pca_components": 4,
        "latent_size": 4,
        "train_examples": 40,
    },
    # measurements through one operator: PCA and the mean signal both give A⁺y
    "pics_avg": {
        **errors("", train_mae=0.03, heldout_mae=0.03),
        **errors("pca_", train_mae=0.04, heldout_mae=0.04),
        **errors("trivial_", train_mae=0.04, heldout_mae=0.04),
        "pca_components": 4,
        "latent_size": 4,
        "train_examples": 40,
    },
    # loses to both, the trivial baseline being silence
    "talk": {
        **errors("", train_mae=0.018, heldout_mae=0.02),
        **errors("pca_", train_mae=0.015, heldout_mae=0.016),
        **errors("trivial_", train_mae=0.019, heldout_mae=0.019),
        "pca_components": 8,
        "latent_size": 8,
        "train_examples": 30,
    },
    # no test split, PCA capped at n − 1 = 2 and exact on the training clips
    "clips": {
        "train_mae": 0.03,
        "pca_train_mae": 0.0,
        "trivial_train_mae": 0.1,
        "pca_components": 2,
        "latent_size": 256,
        "train_examples": 3,
    },
}


@pytest.fixture
def evaluated(tmp_path):
    for name, metrics in METRICS.items():
        path = tmp_path / "metrics" / "experiments" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics))
    return tmp_path


def test_every_evaluated_experiment_is_summarised_beside_its_baselines(evaluated):
    found = {name: METRICS[name] for name in METRICS}
    summary = write_outputs(PARAMS, found, evaluated / "reports", evaluated / "metrics")
    assert json.loads((evaluated / "metrics" / "summary.json").read_text()) == summary
    assert summary["experiments"]["talk"] == {
        "heldout_mae": {"abp": 0.02, "pca": 0.016, "trivial": 0.019},
        "pca_components": 8,
        "latent_size": 8,
    }
    assert summary["experiments"]["pics_P50"]["heldout_hidden_mae"]["abp"] == 0.07
    assert summary["experiments"]["clips"]["train_mae"] == {"abp": 0.03, "pca": 0.0, "trivial": 0.1}
    # The paper-shaped comparisons stay, with the trivial baseline beside them.
    assert summary["pics"]["reconstruction"]["d4"] == {
        "abp": 0.05,
        "vae": 0.06,
        "vae_refined": 0.045,
        "pca": 0.04,
        "trivial": 0.2,
    }
    assert summary["pics"]["occlusion"]["P50"] == {
        "abp": 0.06,
        "vae": 0.08,
        "vae_refined": 0.065,
        "pca": 0.1,
        "trivial": 0.15,
    }
    assert summary["pics"]["compressed"]["local_average_0.25"]["pca"] == 0.04
    assert summary["talk"]["reconstruction"]["d8"]["pca"] == 0.016
    every = json.loads((evaluated / "reports" / "plots" / "experiments.json").read_text())
    assert {(row["setting"], row["method"]) for row in every} == {
        (name, method) for name in METRICS for method in ("ABP", "PCA", "trivial")
    } | {(name, method) for name in ("pics", "pics_P50") for method in ("VAE", "VAE + descent")}
    assert (evaluated / "reports" / "figures" / "experiments.png").is_file()

    report = (evaluated / "reports" / "REPORT.md").read_text()
    for name in METRICS:
        assert f"| `{name}` |" in report
    assert (
        "| `talk` | talk | held-out | 0.0200 (5.1) | – | – | **0.0160 (4.1)** d=8 of 8 |" in report
    )
    assert (
        "| `pics_P50` | pics_P50 | held-out, hidden entries | **0.0700 (17.9)** | 0.0900 (22.9) "
        "| 0.0750 (19.1) | 0.0900 (22.9) d=4 of 4 |"
    ) in report
    occlusion = report[report.index("## pics: recovery of occluded training pixels") :]
    assert occlusion.split("\n")[4:7] == [
        "| ABP | 0.0600 (15.3) |",
        "| VAE | 0.0800 (20.4) |",
        "| VAE + descent | 0.0650 (16.6) |",
    ]
    assert "ABP is below VAE + descent in 1 of 1 settings." in occlusion
    assert "## pics: recovery of occluded training pixels" in report


def test_settings_are_named_and_ordered_as_in_the_paper_everywhere(evaluated):
    variants = {
        "pics_M20": {"kind": "occlusion", "base": "pics", "pattern": "square", "side": 20},
        "pics_P70": {**PARAMS["variants"]["pics_P50"], "hidden_fraction": 0.7},
        "pics_avg4": {**PARAMS["variants"]["pics_avg"], "block": 4},
        # One matrix for all, and each example its own: two columns at one ratio.
        "pics_g25": {"kind": "compressed", "base": "pics", "operator": "gaussian", "ratio": 0.25},
        "pics_g25_own": {
            "kind": "compressed",
            "base": "pics",
            "operator": "gaussian",
            "ratio": 0.25,
            "per_example": True,
        },
    }
    params = {
        **PARAMS,
        "variants": {**PARAMS["variants"], **variants},
        "experiments": {
            **PARAMS["experiments"],
            **{name: experiment(name, {"kind": "image", "latent_dim": 4}) for name in variants},
        },
    }
    found = {
        **METRICS,
        "pics_M20": METRICS["pics_P50"],
        "pics_P70": METRICS["pics_P50"],
        "pics_avg4": METRICS["pics_avg"],
        "pics_g25": METRICS["pics_avg"],
        "pics_g25_own": METRICS["pics_avg"],
    }
    summary = write_outputs(params, found, evaluated / "reports", evaluated / "metrics")
    # The summary's keys stay as they were: `dvc metrics diff` compares across versions.
    assert set(summary["pics"]["occlusion"]) == {"P50", "P70", "M20"}
    assert set(summary["pics"]["compressed"]) == {
        "gaussian_0.25",
        "gaussian_0.25_per_example",
        "local_average_0.25",
        "local_average_0.0625",
    }
    assert set(summary["pics"]["reconstruction"]) == {"d4"}
    report = (evaluated / "reports" / "REPORT.md").read_text()
    plots = evaluated / "reports" / "plots"
    for section, labels, experiments in (
        ("occlusion", ["P.5", "P.7", "M20"], "`pics_P50`, `pics_P70`, `pics_M20`"),
        (
            "compressed",
            ["Gaussian 0.25", "Gaussian 0.25, own A per example", "2×2", "4×4"],
            "`pics_g25`, `pics_g25_own`, `pics_avg`, `pics_avg4`",
        ),
        ("reconstruction", ["d = 4"], "`pics`"),
    ):
        table = report[report.index(f"## pics: {SCORES[section][1]}") :]
        assert table.split("\n")[2] == "| | " + " | ".join(labels) + " |"
        assert f"Experiments: {experiments} (figures" in table
        rows = json.loads((plots / f"pics_{section}.json").read_text())
        assert list(dict.fromkeys(row["setting"] for row in rows)) == labels
        vae = {"VAE", "VAE + descent"} if section != "compressed" else set()
        assert {row["method"] for row in rows} == {"ABP", "PCA", "trivial"} | vae
        assert (evaluated / "reports" / "figures" / f"pics_{section}.png").is_file()
    assert "ABP is below PCA in 0 of 1 settings; not in d = 4." in report
    assert "ABP is below VAE + descent in 0 of 1 settings; not in d = 4." in report
    assert "ABP is below VAE in 1 of 1 settings." in report


def test_the_truth_stands_beside_the_samples_for_every_kind_of_data(evaluated):
    figures = {
        "pics": ("truth", "samples", "reconstructions"),
        "clips": ("truth_frames", "samples_frames", "reconstructions"),
        "talk": ("truth_spectrograms", "samples_spectrograms", "reconstructions"),
        "pics_P50": ("samples", "reconstructions"),
    }  # no truth figure: as before
    for name, stems in figures.items():
        folder = evaluated / "reports" / "experiments" / name / "figures"
        folder.mkdir(parents=True)
        for stem in stems:
            (folder / f"{stem}.png").write_bytes(b"")
    write_outputs(PARAMS, dict(METRICS), evaluated / "reports", evaluated / "metrics")
    report = (evaluated / "reports" / "REPORT.md").read_text()
    for name, (truth, samples, _) in list(figures.items())[:3]:
        section = report[report.index(f"### {name}\n") :]
        assert section.split("\n")[2:6] == [
            "| truth | ABP: samples from the prior |",
            "|---|---|",
            (
                f"| ![{name} {truth}](experiments/{name}/figures/{truth}.png) | "
                f"![{name} {samples}](experiments/{name}/figures/{samples}.png) |"
            ),
            "",
        ]
        assert section.split("\n")[6] == (
            f"![{name} reconstructions](experiments/{name}/figures/reconstructions.png)"
        )
    section = report[report.index("### pics_P50\n") :]
    assert section.split("\n")[2] == "![pics_P50 samples](experiments/pics_P50/figures/samples.png)"


def test_the_notes_are_computed_from_the_numbers(evaluated):
    found = {name: METRICS[name] for name in METRICS}
    write_outputs(PARAMS, found, evaluated / "reports", evaluated / "metrics")
    report = (evaluated / "reports" / "REPORT.md").read_text()
    start = report.index("## Notes computed")
    notes = report[start : report.index("\n## ", start + 1)]
    assert "ABP's error is below every baseline's in 2 of 5 evaluated experiments." in notes
    assert (
        "`pics`: ABP's held-out error 0.0500 is above that of the VAE refined by descent, "
        "0.0450, by 0.0050 (11 %), and that of PCA (d = 4), 0.0400, by 0.0100 (25 %)."
    ) in notes
    assert (
        "`talk`: ABP's held-out error 0.0200 is above that of PCA (d = 8), 0.0160, by "
        "0.0040 (25 %), and that of silence, 0.0190, by 0.0010 (5 %)."
    ) in notes
    assert (
        "`clips`: ABP's training error 0.0300 is above that of PCA (d = 2), 0.0000, by 0.0300."
    ) in notes
    assert "`pics_P50`: ABP" not in notes  # it beats both
    assert "`pics`: training error 0.0100 against held-out 0.0500 (5.0×)" in notes
    assert "its 40 training signals far better than new ones (overfitting)" in notes
    assert "`talk`: training error" not in notes  # 0.018 against 0.02: no overfitting
    assert (
        "`clips`: PCA has d = 2 components, not ABP's latent size 256: 3 training examples "
        "span at most 2 dimensions (n − 1). With d = n − 1 it reproduces every training "
        "signal exactly"
    ) in notes
    assert "Not evaluated yet (no metrics file): `never_run`." in notes
    assert "but only by" not in notes
    assert "`pics_avg`: PCA scores exactly as the mean signal does." in notes
    assert "Notes from params.yaml" not in report  # none given

    better = {**found, "pics": {**found["pics"], "heldout_mae": 0.0388}}
    write_outputs(PARAMS, better, evaluated / "reports", evaluated / "metrics")
    report = (evaluated / "reports" / "REPORT.md").read_text()
    assert "`pics`: ABP's held-out error 0.0388 is above" not in report
    assert "below every baseline's in 3 of 5 evaluated experiments" in report
    assert (
        "`pics`: ABP's held-out error 0.0388 is below that of PCA (d = 4), 0.0400, but only "
        "by 0.0012 (3 %)"
    ) in report


def test_the_command_reads_the_metrics_folder_and_prints_the_users_notes(evaluated, monkeypatch):
    monkeypatch.chdir(evaluated)
    params = {**PARAMS, "report": {"notes": "Tried σ = 0.1 on faces: no better."}}
    Path("params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    assert report_main(["--metrics-root", "metrics", "--reports-root", "out"]) == 0
    report = (evaluated / "out" / "REPORT.md").read_text()
    assert "## Notes from params.yaml\n\nTried σ = 0.1 on faces: no better.\n" in report
    summary = json.loads((evaluated / "metrics" / "summary.json").read_text())
    assert set(summary["experiments"]) == set(METRICS)


TEXTURE = {  # as flows.evaluate writes a texture experiment's (abp.texture_stats)
    "texture_spectrum_distance": 0.2,
    "texture_spectrum_distance_large": 0.25,
    "shuffled_spectrum_distance": 0.8,
    "texture_histogram_distance": 0.03,
    "texture_histogram_distance_large": 0.04,
    "vae_texture_spectrum_distance": 0.3,
    "vae_texture_spectrum_distance_large": 0.5,
    "vae_texture_histogram_distance": 0.05,
    "vae_texture_histogram_distance_large": 0.06,
}


def test_texture_syntheses_stand_beside_noise_with_their_sources_histogram(evaluated):
    params = {
        **PARAMS,
        "experiments": {
            **PARAMS["experiments"],
            "wall": experiment("pics", {"kind": "texture", "latent_channels": 2}),
        },
    }
    found = {**METRICS, "wall": {**METRICS["clips"], **TEXTURE}}
    summary = write_outputs(params, found, evaluated / "reports", evaluated / "metrics")
    assert summary["experiments"]["wall"]["texture_spectrum_distance"] == {
        "samples": 0.2,
        "large": 0.25,
        "shuffled": 0.8,
        "vae_samples": 0.3,
        "vae_large": 0.5,
    }
    assert "texture_spectrum_distance" not in summary["experiments"]["pics"]
    report = (evaluated / "reports" / "REPORT.md").read_text()
    table = report[report.index("### wall\n\n| | spectrum | histogram |") :].split("\n")
    assert table[4:9] == [
        "| prior samples at the training size | 0.200 | 0.0300 |",
        "| from a latent map 2×3 times as large | 0.250 | 0.0400 |",
        "| baseline: the examples' pixels shuffled | 0.800 | 0 (the same pixels) |",
        "| VAE: prior samples at the training size | 0.300 | 0.0500 |",
        "| VAE: from the larger latent map | 0.500 | 0.0600 |",
    ]
    assert (
        "The textures ABP learned from `wall` look like their source by the spectrum: at "
        "most 0.250 from the training examples (the larger one included), against 0.800 "
        "for their pixels shuffled." in report
    )
    assert (
        "The textures the VAE learned from `wall` do not yet look like their source by the "
        "spectrum: at most 0.500" in report
    )
    # The larger texture alone above half the baseline's distance: the note says so.
    found["wall"] = {**found["wall"], "texture_spectrum_distance_large": 0.45}
    write_outputs(params, found, evaluated / "reports", evaluated / "metrics")
    report = (evaluated / "reports" / "REPORT.md").read_text()
    assert "ABP learned from `wall` do not yet look like their source by the spectrum" in report
