"""The paper's comparisons gathered from every evaluated experiment into one report.

    python -m flows.report

Reads params.yaml and reports/experiments/<experiment>/metrics.json, and writes

- reports/summary.json: per data set, `reconstruction.d<d>.{abp,pca}` (held-out
  reconstruction), `occlusion.<P50|P70|P90|M20|M30>.{abp,pca}` (recovery of the occluded
  training pixels), `compressed.<kind>_<ratio>.{abp,pca}` (recovery of the training signals
  from their measurements): mean absolute errors on the [0, 1] scale;
- reports/plots/*.json for `dvc plots` and reports/figures/*.png;
- reports/REPORT.md: the tables shaped like the paper's, with the figures, readable offline.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
from prefect import flow, get_run_logger

from flows.config import ConfigError, dataset_config, experiment_config, load_params
from flows.experiment import REPORTS_ROOT, write_json
from flows.process import prefect_server_for_this_process, run_command

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402


def comparison(name: str, params: dict, metrics: dict[str, float]) -> tuple[str, str, str] | None:
    """(data set, section, setting) of an experiment for the summary, or None if it is
    not one of the paper's comparisons (no PCA counterpart)."""
    exp = experiment_config(name, params)
    data = dataset_config(exp.dataset, params)
    latent_dim = exp.generator.get("latent_dim")
    if latent_dim is None or not any(k.startswith("pca_") for k in metrics):
        return None
    kind = getattr(data, "kind", None)
    if kind == "occlusion":
        setting = (f"P{round(100 * data.hidden_fraction)}" if data.pattern == "salt_pepper"
                   else f"M{data.side}" if data.pattern == "square" else None)
        return (data.base, "occlusion", setting) if setting else None
    if kind == "compressed":
        ratio = data.ratio if data.operator == "gaussian" else 1 / data.block ** 2
        return data.base, "compressed", f"{data.operator}_{ratio:g}"
    if kind in ("images", "video", "audio"):
        return exp.dataset, "reconstruction", f"d{latent_dim}"
    return None


SCORES = {"reconstruction": ("heldout_mae", "held-out reconstruction"),
          "occlusion": ("train_hidden_mae", "recovery of occluded training pixels"),
          "compressed": ("train_mae", "recovery of training signals from measurements")}


def summarise(params: dict, reports_root: Path) -> tuple[dict, dict]:
    summary: dict[str, Any] = defaultdict(lambda: defaultdict(dict))
    sources: dict[str, str] = {}
    for name in params.get("experiments", {}):
        path = reports_root / "experiments" / name / "metrics.json"
        if not path.is_file():
            continue
        metrics = json.loads(path.read_text())
        placed = comparison(name, params, metrics)
        if placed is None:
            continue
        dataset, section, setting = placed
        key = SCORES[section][0]
        if key not in metrics or f"pca_{key}" not in metrics:
            continue
        summary[dataset][section][setting] = {"abp": metrics[key], "pca": metrics[f"pca_{key}"]}
        sources[f"{dataset}.{section}.{setting}"] = name
    return json.loads(json.dumps(summary)), sources


def _order(setting: str) -> tuple:
    digits = "".join(c for c in setting if c.isdigit() or c == ".")
    return (setting[0], float(digits) if digits.strip(".") else 0.0)


QUALITATIVE = ("samples", "latent_grid", "large_texture", "reconstructions", "samples_frames",
               "recovered_frames", "samples_spectrograms", "recovered_spectrograms")


def qualitative_section(experiments: list[str], reports_root: Path) -> list[str]:
    """Links to every experiment's PNG figures (sample grids from the prior, the d = 2
    latent grid, larger textures, video frames, spectrograms, data / observed / recovered)."""
    lines = ["## Qualitative results", "",
             "Rows of reconstruction figures: the data, what the model saw (occluded "
             "variants), the recovery. Video and sound are under `experiments/<experiment>/media/` "
             "as mp4 and wav.", ""]
    for name in experiments:
        figures = reports_root / "experiments" / name / "figures"
        shown = [f"![{name} {stem}](experiments/{name}/figures/{stem}.png)"
                 for stem in QUALITATIVE if (figures / f"{stem}.png").is_file()]
        if shown:
            lines += [f"### {name}", "", *shown, ""]
    return lines


def write_outputs(summary: dict, sources: dict, reports_root: Path, *,
                  experiments: list[str] = (), notes: str = "") -> list[Path]:
    figures, plots = reports_root / "figures", reports_root / "plots"
    figures.mkdir(parents=True, exist_ok=True)
    written = []
    lines = ["# ABP against PCA", "",
             "Mean absolute error on the [0, 1] intensity scale (×255 in brackets); lower is "
             "better. PCA uses the same number of components d as ABP's latent dimension and "
             "learns from exactly the same (complete, occluded or compressed) training data.", ""]
    for dataset, sections in summary.items():
        for section, settings in sections.items():
            order = sorted(settings, key=_order)
            rows = [{"setting": s, "method": m, "error": settings[s][m]}
                    for s in order for m in ("abp", "pca")]
            written.append(write_json(plots / f"{dataset}_{section}.json", rows))
            fig, ax = plt.subplots(figsize=(6, 3.2))
            positions = range(len(order))
            for offset, method in ((-0.2, "abp"), (0.2, "pca")):
                ax.bar([p + offset for p in positions], [settings[s][method] for s in order],
                       width=0.4, label=method.upper())
            ax.set_xticks(list(positions), order)
            ax.set(ylabel="mean |error| on [0, 1]", title=f"{dataset}: {SCORES[section][1]}")
            ax.legend()
            fig.tight_layout()
            figure = figures / f"{dataset}_{section}.png"
            fig.savefig(figure, dpi=100)
            plt.close(fig)
            written.append(figure)
            lines += [f"## {dataset}: {SCORES[section][1]}", "",
                      "| | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
            for method in ("abp", "pca"):
                cells = [f"{settings[s][method]:.4f} ({255 * settings[s][method]:.1f})" for s in order]
                lines.append(f"| {method.upper()} | " + " | ".join(cells) + " |")
            losses = [s for s in order if settings[s]["abp"] >= settings[s]["pca"]]
            lines += ["", f"ABP is below PCA in {len(order) - len(losses)} of {len(order)} "
                      "settings" + (f"; not in {', '.join(losses)}." if losses else "."), "",
                      f"![{dataset} {section}](figures/{figure.name})", "",
                      "Experiments: " + ", ".join(f"`{sources[f'{dataset}.{section}.{s}']}`"
                                                  for s in order)
                      + " (figures of each under `experiments/<experiment>/figures/`).", ""]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    lines += qualitative_section(list(experiments), reports_root)
    written.append(write_json(reports_root / "summary.json", summary))
    report = reports_root / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    return written + [report]


@flow(name="report")
def report(params_file: str = "params.yaml", reports_root: str = str(REPORTS_ROOT)) -> dict:
    params = load_params(Path(params_file))
    summary, sources = summarise(params, Path(reports_root))
    write_outputs(summary, sources, Path(reports_root), experiments=list(params.get("experiments", {})),
                  notes=(params.get("report") or {}).get("notes", ""))
    get_run_logger().info("summary: %s", json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--reports-root", default=str(REPORTS_ROOT))
    args = parser.parse_args(argv)
    try:
        load_params(Path(args.params))
        with prefect_server_for_this_process():
            report(params_file=args.params, reports_root=args.reports_root)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    run_command(main)
