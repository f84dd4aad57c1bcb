"""ABP against its baselines, gathered from every evaluated experiment into one report.

    python -m flows.report

Reads params.yaml and metrics/experiments/<experiment>.json (python -m flows.evaluate), and
writes

- metrics/summary.json, flat numbers for `dvc metrics`: `experiments.<experiment>.<error>.
  <method>` for every evaluated experiment (with its pca_components and latent_size),
  <error> being its held-out error where it has a test split and its training error
  otherwise, over the hidden entries for occluded data; and per data set the paper's
  comparisons, `reconstruction.d<d>` (held-out reconstruction), `occlusion.<P50|…|M30>`
  (recovery of the occluded training pixels), `compressed.<kind>_<ratio>` (recovery of the
  training signals from their measurements), each `<method>`: mean absolute errors on the
  [0, 1] scale, <method> being abp, vae (the VAE's encoder), vae_refined (its decoder's
  latents descended from the encoder's guesses), pca or trivial;
- reports/plots/*.json for `dvc plots`, one row per setting and method (drawn as grouped
  bars by .dvc/plots/bars_by_method.json), and the same charts as reports/figures/*.png;
- reports/REPORT.md: every experiment beside its baselines, the tables shaped like the
  paper's, notes computed from the numbers (where ABP loses and by how much, overfitting,
  a PCA with fewer components than the latent size), the optional `report.notes` of
  params.yaml, and the figures and media, readable offline.

The summary keeps its keys (P50, local_average_0.25) so that `dvc metrics diff` compares
versions; the tables, charts and plots data name the settings as the paper does (P.5, M20,
2×2, d = 10).

    python -m flows.report --plots-page dvc_plots/page.html   # `make plots`

writes the page template `dvc plots show --html-template` fills: Vega's scripts inside it,
so the charts draw offline, and a notice pointing to the PNGs where they do not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
from prefect import flow, get_run_logger

from abp.files import write_json
from flows.config import ConfigError, dataset_config, experiment_config, load_params
from flows.paths import METRICS_ROOT, REPORTS_ROOT
from flows.process import prefect_server_for_this_process, run_command

matplotlib.use("Agg")
from matplotlib import pyplot as plt

METHODS = ("abp", "vae", "vae_refined", "pca", "trivial")
METHOD_NAMES = {
    "abp": "ABP",
    "vae": "VAE",
    "vae_refined": "VAE + descent",
    "pca": "PCA",
    "trivial": "trivial",
}
BASELINES = METHODS[1:]
# The error an experiment is judged by: held-out where there is a test split, the hidden
# entries' where some are hidden (the observed ones are kept, by every method alike).
HEADLINE = ("heldout_hidden_mae", "heldout_mae", "train_hidden_mae", "train_mae")
ERROR_NAMES = {
    "heldout_hidden_mae": "held-out, hidden entries",
    "heldout_mae": "held-out",
    "train_hidden_mae": "training, hidden entries",
    "train_mae": "training",
}
OVERFITTING = 1.5  # held-out error at least this many times the training error
NARROW = 0.05  # a win by less than 5 % of the better baseline's error is a narrow one


def headline(metrics: dict[str, float]) -> str:
    return next(key for key in HEADLINE if key in metrics)


def base_kind(dataset: str, params: dict) -> str | None:
    """images, video or audio: the kind of data a data set or variant holds."""
    data = dataset_config(dataset, params)
    base = getattr(data, "base", None)
    return base_kind(base, params) if base else data.kind


class Setting(NamedTuple):
    """One column of a comparison."""

    key: str  # in metrics/summary.json; never renamed, so `dvc metrics diff` spans versions
    label: str  # the paper's name: REPORT.md, the PNG charts and reports/plots all show it
    rank: tuple  # the paper's column order


def occlusion_setting(data) -> Setting | None:
    if data.pattern == "salt_pepper":  # the paper's P.5: half the pixels hidden
        fraction = data.hidden_fraction
        return Setting(
            f"P{round(100 * fraction)}", f"P{fraction:g}".replace("P0.", "P."), (0, fraction)
        )
    if data.pattern == "square":  # M20: one 20×20 square missing
        return Setting(f"M{data.side}", f"M{data.side}", (1, data.side))
    return None


def compressed_setting(data, params: dict) -> Setting:
    if data.operator == "gaussian" and getattr(data, "per_example", False):
        # Each example through its own matrix: beside the shared matrix at the same ratio.
        return Setting(
            f"gaussian_{data.ratio:g}_per_example",
            f"Gaussian {data.ratio:g}, own A per example",
            (0, data.ratio, 1),
        )
    if data.operator == "gaussian":
        return Setting(f"gaussian_{data.ratio:g}", f"Gaussian {data.ratio:g}", (0, data.ratio))
    # The key's ratio is 1/block² for every kind of data (sounds average 1-D blocks, but the
    # key stays as it was); the label says what was averaged.
    label = (
        f"mean of {data.block}"
        if base_kind(data.base, params) == "audio"
        else f"{data.block}×{data.block}"
    )
    return Setting(f"local_average_{1 / data.block**2:g}", label, (1, data.block))


def comparison(
    name: str, params: dict, metrics: dict[str, float]
) -> tuple[str, str, Setting] | None:
    """(data set, section, setting) of an experiment in the paper's comparisons, or None if
    it is not one of them."""
    exp = experiment_config(name, params)
    data = dataset_config(exp.dataset, params)
    latent_size = metrics.get("latent_size", exp.generator.get("latent_dim"))
    if latent_size is None or not any(k.startswith("pca_") for k in metrics):
        return None
    kind = getattr(data, "kind", None)
    if kind == "occlusion":
        setting = occlusion_setting(data)
        return (data.base, "occlusion", setting) if setting else None
    if kind == "compressed":
        return data.base, "compressed", compressed_setting(data, params)
    if kind in ("images", "video", "audio"):
        size = f"{latent_size:g}"
        return exp.dataset, "reconstruction", Setting(f"d{size}", f"d = {size}", (latent_size,))
    return None


SCORES = {
    "reconstruction": ("heldout_mae", "held-out reconstruction"),
    "occlusion": ("train_hidden_mae", "recovery of occluded training pixels"),
    "compressed": ("train_mae", "recovery of training signals from measurements"),
}


def read_metrics(params: dict, metrics_root: Path) -> dict[str, dict[str, float]]:
    """{experiment: its metrics} for the experiments of params that have been evaluated."""
    found = {}
    for name in params.get("experiments") or {}:
        path = metrics_root / "experiments" / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text())
    return found


def methods(metrics: dict[str, float], key: str) -> dict[str, float]:
    """{abp, vae, vae_refined, pca, trivial: the error `key`} for the methods that have it
    (a method's metrics are ABP's keys prefixed with its name)."""
    prefixed = {m: key if m == "abp" else f"{m}_{key}" for m in METHODS}
    return {m: metrics[k] for m, k in prefixed.items() if k in metrics}


def summarise(params: dict, found: dict[str, dict[str, float]]) -> tuple[dict, dict]:
    """The summary, and {"<data set>.<section>.<key>": (its setting, the experiment)}."""
    summary: dict[str, Any] = defaultdict(lambda: defaultdict(dict))
    sources: dict[str, tuple[Setting, str]] = {}
    for name, metrics in found.items():
        key = headline(metrics)
        entry: dict[str, dict[str, float] | float] = {
            key: methods(metrics, key),
            **{
                size: metrics[size] for size in ("pca_components", "latent_size") if size in metrics
            },
        }
        if "texture_spectrum_distance" in metrics:
            entry["texture_spectrum_distance"] = {
                row: metrics[key] for row, key, _ in TEXTURE_ROWS if key in metrics
            }
        summary["experiments"][name] = entry
        placed = comparison(name, params, metrics)
        if placed is None:
            continue
        dataset, section, setting = placed
        scores = methods(metrics, SCORES[section][0])
        if {"abp", "pca"} <= set(scores):
            summary[dataset][section][setting.key] = scores
            sources[f"{dataset}.{section}.{setting.key}"] = (setting, name)
    return json.loads(json.dumps(summary)), sources


# Texture syntheses against their training examples (abp.texture_stats): each row's
# summary key, its spectrum distance's and histogram distance's metrics, and its label.
TEXTURE_ROWS = (
    ("samples", "texture_spectrum_distance", "prior samples at the training size"),
    ("large", "texture_spectrum_distance_large", "from a latent map 2×3 times as large"),
    ("shuffled", "shuffled_spectrum_distance", "baseline: the examples' pixels shuffled"),
    ("vae_samples", "vae_texture_spectrum_distance", "VAE: prior samples at the training size"),
    ("vae_large", "vae_texture_spectrum_distance_large", "VAE: from the larger latent map"),
)
# A synthesis "looks like" its source when its spectrum is this much closer than noise's.
TEXTURE_MARGIN = 0.5


def texture_section(found: dict[str, dict[str, float]]) -> list[str]:
    """A table per texture experiment: how far its syntheses' power spectra and grey levels
    are from its training examples', beside noise with the examples' histogram."""
    textures = [name for name, m in found.items() if "texture_spectrum_distance" in m]
    if not textures:
        return []
    lines = [
        "## Textures: do the syntheses look like their source?",
        "",
        (
            "Distances from the training examples (0: the same): the power spectrum's "
            "total variation (how the energy spreads over spatial frequencies and "
            "orientations; Welch's estimate over 32×32 tiles, so sizes compare) and the "
            "pixel values' Wasserstein-1 distance on the [0, 1] scale. The baseline has the "
            "examples' histogram exactly and none of their structure. A synthesis is taken "
            f"to look like its source when its spectrum distance is below {TEXTURE_MARGIN:g}× "
            "the baseline's."
        ),
        "",
    ]
    for name in textures:
        metrics = found[name]
        lines += [f"### {name}", "", "| | spectrum | histogram |", "|---|---|---|"]
        for _, key, label in TEXTURE_ROWS:
            if key not in metrics:
                continue
            histogram = key.replace("spectrum", "histogram")
            grey = f"{metrics[histogram]:.4f}" if histogram in metrics else "0 (the same pixels)"
            lines.append(f"| {label} | {metrics[key]:.3f} | {grey} |")
        lines.append("")
    return lines


def texture_notes(found: dict[str, dict[str, float]]) -> list[str]:
    notes = []
    for name, metrics in found.items():
        if "texture_spectrum_distance" not in metrics:
            continue
        baseline = metrics.get("shuffled_spectrum_distance")
        if baseline is None:
            continue
        # The samples', and the larger texture's where there is one; ABP's, then the VAE's.
        for model, rows in (("ABP", TEXTURE_ROWS[:2]), ("the VAE", TEXTURE_ROWS[3:])):
            distances = [metrics[key] for _, key, _ in rows if key in metrics]
            if not distances:
                continue
            worst = max(distances)
            verdict = "look like" if worst < TEXTURE_MARGIN * baseline else "do not yet look like"
            notes.append(
                f"The textures {model} learned from `{name}` {verdict} their source by the "
                f"spectrum: at most {worst:.3f} from the training examples (the larger one "
                f"included), against {baseline:.3f} for their pixels shuffled."
            )
    return notes


def columns(
    dataset: str, section: str, settings: dict, sources: dict[str, tuple[Setting, str]]
) -> list[tuple[Setting, str]]:
    """(setting, experiment) of each column of one comparison, in the paper's order."""
    return sorted(
        (sources[f"{dataset}.{section}.{key}"] for key in settings),
        key=lambda column: column[0].rank,
    )


def trivial_name(name: str, params: dict) -> str:
    exp = experiment_config(name, params)
    return "silence" if base_kind(exp.dataset, params) == "audio" else "the mean signal"


def pca_name(metrics: dict[str, float]) -> str:
    return f"PCA (d = {metrics['pca_components']:g})" if "pca_components" in metrics else "PCA"


def baseline_names(name: str, metrics: dict[str, float], params: dict) -> dict[str, str]:
    return {
        "vae": "the VAE's encoder",
        "vae_refined": "the VAE refined by descent",
        "pca": pca_name(metrics),
        "trivial": trivial_name(name, params),
    }


def losses(name: str, metrics: dict[str, float], params: dict) -> str | None:
    """A sentence naming the baselines ABP does not beat on its headline error, and by how
    much; None where it beats them all."""
    key = headline(metrics)
    scores = methods(metrics, key)
    names = baseline_names(name, metrics, params)
    lost = [
        f"that of {names[m]}, {scores[m]:.4f}, by {scores['abp'] - scores[m]:.4f}"
        + (f" ({100 * (scores['abp'] / scores[m] - 1):.0f} %)" if scores[m] > 0 else "")
        for m in BASELINES
        if m in scores and scores["abp"] >= scores[m]
    ]
    if not lost:
        return None
    return (
        f"`{name}`: ABP's {ERROR_NAMES[key]} error {scores['abp']:.4f} is above "
        + ", and ".join(lost)
        + "."
    )


def narrow_win(name: str, metrics: dict[str, float], params: dict) -> str | None:
    """A sentence when ABP beats every baseline, but the best one by less than NARROW."""
    key = headline(metrics)
    scores = methods(metrics, key)
    baselines = {m: v for m, v in scores.items() if m != "abp"}
    if not baselines or "abp" not in scores:
        return None
    best = min(baselines, key=baselines.__getitem__)
    if not scores["abp"] < baselines[best] < scores["abp"] * (1 + NARROW):
        return None
    names = baseline_names(name, metrics, params)
    return (
        f"`{name}`: ABP's {ERROR_NAMES[key]} error {scores['abp']:.4f} is below that of "
        f"{names[best]}, {baselines[best]:.4f}, but only by "
        f"{baselines[best] - scores['abp']:.4f} "
        f"({100 * (1 - scores['abp'] / baselines[best]):.0f} %): look at the figures "
        "and media before trusting the difference."
    )


def blind_baselines(name: str, metrics: dict[str, float], params: dict) -> bool:
    """Whether PCA does exactly as well as the mean signal on compressed data."""
    data = dataset_config(experiment_config(name, params).dataset, params)
    scores = methods(metrics, headline(metrics))
    return (
        getattr(data, "kind", None) == "compressed"
        and {"pca", "trivial"} <= set(scores)
        and abs(scores["pca"] - scores["trivial"]) <= 1e-6 * max(scores["pca"], 1e-12)
    )


def overfitting(name: str, metrics: dict[str, float]) -> str | None:
    """A sentence when the training error is far below the held-out error."""
    for hidden in ("_hidden", ""):
        train, heldout = metrics.get(f"train{hidden}_mae"), metrics.get(f"heldout{hidden}_mae")
        if train is not None and heldout is not None:
            break
    else:
        return None
    if heldout < OVERFITTING * train:
        return None
    examples = (
        f"its {metrics['train_examples']:g} training signals"
        if "train_examples" in metrics
        else "its training signals"
    )
    return (
        f"`{name}`: training error {train:.4f} against held-out {heldout:.4f} "
        f"({heldout / train:.1f}×): the generator fits {examples} far better than new "
        "ones (overfitting). More data, a smaller generator, or choosing the epoch on a "
        "validation split carved from the training data would tell."
    )


def capped(name: str, metrics: dict[str, float]) -> str | None:
    """A sentence when PCA had fewer components than ABP's latent size."""
    d, size = metrics.get("pca_components"), metrics.get("latent_size")
    if d is None or size is None or d >= size:
        return None
    n = metrics.get("train_examples")
    why = (
        f"{n:g} training examples span at most {n - 1:g} dimensions (n − 1)"
        if n is not None and d == n - 1
        else "the signal has no more entries"
    )
    sentence = f"`{name}`: PCA has d = {d:g} components, not ABP's latent size {size:g}: {why}."
    if "heldout_mae" not in metrics and metrics.get("pca_train_mae", 1) < 1e-6:
        sentence += (
            " With d = n − 1 it reproduces every training signal exactly (error 0), "
            "and without a test split nothing tells it apart from a good model."
        )
    return sentence


def computed_notes(params: dict, found: dict[str, dict[str, float]]) -> list[str]:
    """Notes written from the numbers, one bullet each, experiment by experiment."""
    notes = []
    if found:
        beaten = [n for n, m in found.items() if losses(n, m, params) is None]
        notes.append(
            f"ABP's error is below every baseline's in {len(beaten)} of {len(found)} "
            "evaluated experiments."
        )
    for name, metrics in found.items():
        notes += [
            s
            for s in (
                losses(name, metrics, params),
                narrow_win(name, metrics, params),
                overfitting(name, metrics),
                capped(name, metrics),
            )
            if s
        ]
    blind = [n for n, m in found.items() if blind_baselines(n, m, params)]
    if blind:
        # With one operator A for all examples, what lies in A's null space never reaches a
        # linear model learned from the measurements: both baselines give A⁺y.
        notes.append(
            ", ".join(f"`{n}`" for n in blind) + ": PCA scores exactly as the mean "
            "signal does. Learned from measurements through one operator A shared by "
            "every example, a linear model never sees A's null space, so both recover "
            "A⁺y, the least-norm signal the measurements allow."
        )
    missing = [n for n in params.get("experiments") or {} if n not in found]
    if missing:
        notes.append(
            "Not evaluated yet (no metrics file): " + ", ".join(f"`{n}`" for n in missing) + "."
        )
    return notes


def tidy(bars: dict[str, dict[str, float]]) -> list[dict]:
    """One row per setting and method, in the chart's order: DVC's template draws the
    methods as bars side by side, one colour each."""
    return [
        {"setting": label, "method": METHOD_NAMES[m], "error": scores[m]}
        for label, scores in bars.items()
        for m in METHODS
        if m in scores
    ]


def bar_chart(bars: dict[str, dict[str, float]], title: str, path: Path) -> Path:
    """Grouped bars: {setting's label: {method: error}}, settings in the order given."""
    order = list(bars)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(order) + 2), 3.4))
    shown = [m for m in METHODS if any(m in bars[s] for s in order)]
    width = 0.8 / len(shown)
    for i, method in enumerate(shown):
        offset = (i - (len(shown) - 1) / 2) * width
        ax.bar(
            [p + offset for p in range(len(order))],
            [bars[s].get(method, float("nan")) for s in order],
            width=width,
            label=METHOD_NAMES[method],
        )
    ax.set_xticks(
        list(range(len(order))),
        order,
        rotation=30 if len(order) > 6 else 0,
        ha="right" if len(order) > 6 else "center",
    )
    ax.set(ylabel="mean |error| on [0, 1]", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def comparison_table(dataset: str, section: str, bars: dict[str, dict[str, float]]) -> list[str]:
    """One of the paper's tables: a column per setting, a row per method."""
    order = list(bars)
    lines = [
        f"## {dataset}: {SCORES[section][1]}",
        "",
        "| | " + " | ".join(order) + " |",
        "|---" * (len(order) + 1) + "|",
    ]
    for method in [m for m in METHODS if any(m in bars[s] for s in order)]:
        cells = [cell(bars[s].get(method), False) for s in order]
        lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) + " |")
    verdicts = []
    for method in ("vae", "vae_refined", "pca"):
        compared = [s for s in order if method in bars[s]]
        if not compared:
            continue
        lost = [s for s in compared if bars[s]["abp"] >= bars[s][method]]
        verdicts.append(
            f"- ABP is below {METHOD_NAMES[method]} in {len(compared) - len(lost)} of "
            f"{len(compared)} settings" + (f"; not in {', '.join(lost)}." if lost else ".")
        )
    return [*lines, "", *verdicts, ""]


def cell(value: float | None, best: bool) -> str:
    if value is None:
        return "–"
    text = f"{value:.4f} ({255 * value:.1f})"
    return f"**{text}**" if best else text


def experiments_section(
    params: dict, found: dict[str, dict[str, float]], summary: dict, figures: Path, plots: Path
) -> list[str]:
    lines = [
        "## Every experiment",
        "",
        (
            "Each experiment's held-out error where it has a test split, its training error "
            "otherwise (over the hidden entries for occluded data); the lowest in bold."
        ),
        "",
        (
            "| experiment | data | error | ABP | VAE | VAE + descent | PCA | trivial "
            "| ABP training error |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, metrics in found.items():
        key = headline(metrics)
        scores = methods(metrics, key)
        lowest = min(scores.values())
        d = (
            f" d={metrics['pca_components']:g} of {metrics['latent_size']:g}"
            if "pca_components" in metrics and "latent_size" in metrics
            else ""
        )
        train_key = "train_hidden_mae" if "train_hidden_mae" in metrics else "train_mae"
        abp, vae, refined, pca, trivial = (
            cell(scores.get(m), scores.get(m) == lowest) for m in METHODS
        )
        lines.append(
            f"| `{name}` | {experiment_config(name, params).dataset} | "
            f"{ERROR_NAMES[key]} | {abp} | {vae} | {refined} | {pca}{d} | {trivial} "
            f"({trivial_name(name, params).removeprefix('the ')}) | "
            f"{cell(metrics.get(train_key), False)} |"
        )
    if not found:
        return [*lines, "", "No experiment has been evaluated yet.", ""]
    settings = {n: s[headline(found[n])] for n, s in summary["experiments"].items()}
    write_json(plots / "experiments.json", tidy(settings))
    bar_chart(settings, "every experiment against its baselines", figures / "experiments.png")
    return [*lines, "", "![every experiment](figures/experiments.png)", ""]


# Figure stems flows.evaluate writes, for images, video (_frames) and sound (_spectrograms).
TRUTH = ("truth", "truth_frames", "truth_spectrograms")
SAMPLES = ("samples", "samples_frames", "samples_spectrograms")
VAE_SAMPLES = tuple(f"vae_{stem}" for stem in SAMPLES)
OTHERS = ("reconstructions", "latent_grid", "large_texture", "vae_large_texture")


def experiment_figures(name: str, folder: Path) -> list[str]:
    """An experiment's figures: the truth beside the samples in a table (a generator's
    samples mean little without the data they imitate), then the rest one per line."""

    def image(stems: tuple[str, ...]) -> list[str]:
        return [
            f"![{name} {stem}](experiments/{name}/figures/{stem}.png)"
            for stem in stems
            if (folder / "figures" / f"{stem}.png").is_file()
        ]

    truth, samples, others = image(TRUTH), image(SAMPLES), image(OTHERS)
    vae = image(VAE_SAMPLES)
    if truth and samples:
        head = "| truth | ABP: samples from the prior |" + (" VAE: the same draws |" if vae else "")
        return [
            head,
            "|---|---|" + ("---|" if vae else ""),
            f"| {' '.join(truth)} | {' '.join(samples)} |" + (f" {' '.join(vae)} |" if vae else ""),
            "",
            *others,
        ]
    return [*truth, *samples, *vae, *others]


def qualitative_section(experiments: list[str], reports_root: Path) -> list[str]:
    """Links to every experiment's PNG figures (the truth, sample grids from the prior, the
    d = 2 latent grid, larger textures, video frames, spectrograms, truth / observed / ABP /
    PCA) and to its mp4 and wav files."""
    lines = [
        "## Qualitative results",
        "",
        (
            "Rows of reconstruction figures are labelled: the truth, what the model saw "
            "(occluded or compressed data), ABP's recovery, the VAE's (its encoder's guess, "
            "then refined by descent) and PCA's."
        ),
        "",
    ]
    for name in experiments:
        folder = reports_root / "experiments" / name
        shown = experiment_figures(name, folder)
        heard = [
            f"[{p.name}](experiments/{name}/media/{p.name})"
            for p in sorted((folder / "media").glob("*"))
            if p.suffix in (".mp4", ".wav")
        ]
        if shown or heard:
            lines += [f"### {name}", "", *shown, ""]
            lines += ["Media: " + ", ".join(heard), ""] if heard else []
    return lines


def write_outputs(
    params: dict,
    found: dict[str, dict[str, float]],
    reports_root: Path,
    metrics_root: Path,
    *,
    notes: str = "",
) -> dict:
    """Write the summary, plots, figures and REPORT.md; return the summary."""
    summary, sources = summarise(params, found)
    figures, plots = reports_root / "figures", reports_root / "plots"
    figures.mkdir(parents=True, exist_ok=True)
    lines = [
        "# ABP against its baselines",
        "",
        (
            "Mean absolute error on the [0, 1] intensity scale (×255 in brackets); lower is "
            "better. Every baseline learns from exactly the same (complete, occluded or "
            "compressed) training data as ABP and keeps what the data say, as ABP's "
            "recovery does. The VAE has ABP's generator as its decoder (the same settings, "
            "initial weights, σ, optimiser and epochs) and an encoder that mirrors it; "
            "`VAE` is its decoder at the encoder's guess, `VAE + descent` at the most "
            "probable latent descended from that guess as ABP's latents are (the gap "
            "between the two is the amortisation gap; the descent runs on the test split, "
            "and on the training split of incomplete or indirect data). PCA has as many "
            "components d as ABP's latent size, where the training data allow it (at most "
            "one fewer than the training examples); the trivial baseline is the training "
            "mean signal (silence for sound)."
        ),
        "",
    ]
    lines += experiments_section(params, found, summary, figures, plots)
    lines += [
        "## Notes computed from the metrics",
        "",
        *[f"- {note}" for note in computed_notes(params, found) + texture_notes(found)],
        "",
    ]
    if notes and notes.strip():
        lines += ["## Notes from params.yaml", "", notes.strip(), ""]
    for dataset, sections in summary.items():
        if dataset == "experiments":
            continue
        for section, settings in sections.items():
            ordered = columns(dataset, section, settings, sources)
            bars = {setting.label: settings[setting.key] for setting, _ in ordered}
            write_json(plots / f"{dataset}_{section}.json", tidy(bars))
            figure = bar_chart(
                bars, f"{dataset}: {SCORES[section][1]}", figures / f"{dataset}_{section}.png"
            )
            lines += comparison_table(dataset, section, bars)
            lines += [
                f"![{dataset} {section}](figures/{figure.name})",
                "",
                "Experiments: "
                + ", ".join(f"`{name}`" for _, name in ordered)
                + " (figures of each under `experiments/<experiment>/figures/`).",
                "",
            ]
    lines += texture_section(found)
    lines += qualitative_section(list(params.get("experiments") or {}), reports_root)
    write_json(metrics_root / "summary.json", summary)
    report = reports_root / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    return summary


PAGE_TEMPLATE = Path(__file__).resolve().parents[1] / ".dvc" / "plots" / "page.html"


def plots_page(out: Path, template: Path = PAGE_TEMPLATE) -> Path:
    """The page template for `dvc plots show --html-template`, with Vega's scripts inside it.
    DVC's own page loads them from the web: offline its charts are 0 px tall with no word
    why. Without vl-convert-python, DVC fills in its web scripts and the page's notice, shown
    until Vega is there, points to the PNGs on the same page."""
    page = template.read_text()
    try:
        import vl_convert
    except ImportError:
        pass
    else:  # Vega-Lite 5, the version of the specs DVC writes; it sets window.vegaEmbed
        # The stub marks `snippet` required, but it is optional at run time (signature
        # `(snippet=None, vl_version=None)`; None means the default snippet that sets the
        # globals, as the docstring says), and that default is what this page needs.
        bundle = vl_convert.javascript_bundle(vl_version="5.21")  # type: ignore[call-arg]
        page = page.replace("{scripts}", f'<script type="text/javascript">{bundle}</script>')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


@flow(name="report", flow_run_name="report")
def report(
    params_file: str = "params.yaml",
    reports_root: str = str(REPORTS_ROOT),
    metrics_root: str = str(METRICS_ROOT),
) -> dict:
    params = load_params(Path(params_file))
    found = read_metrics(params, Path(metrics_root))
    summary = write_outputs(
        params,
        found,
        Path(reports_root),
        Path(metrics_root),
        notes=(params.get("report") or {}).get("notes") or "",
    )
    get_run_logger().info("summary: %s", json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--reports-root", default=str(REPORTS_ROOT), help="REPORT.md, figures/ and plots/ go there"
    )
    parser.add_argument(
        "--metrics-root",
        default=str(METRICS_ROOT),
        help="reads <root>/experiments/*.json, writes <root>/summary.json",
    )
    parser.add_argument(
        "--plots-page",
        type=Path,
        metavar="PATH",
        help="only write the page template for `dvc plots show "
        "--html-template PATH` (make plots), and stop",
    )
    args = parser.parse_args(argv)
    if args.plots_page:
        plots_page(args.plots_page)
        return 0
    try:
        load_params(Path(args.params))
        with prefect_server_for_this_process():
            report(
                params_file=args.params,
                reports_root=args.reports_root,
                metrics_root=args.metrics_root,
            )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    run_command(main)
