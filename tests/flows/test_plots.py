"""What `dvc plots show` draws from the report's data, rendered for real (Vega in-process,
vl-convert-python): each of the paper's comparisons a chart of grouped bars, ABP, PCA and the
trivial baseline a colour each, the settings named as the paper does; the PNG charts and each
experiment's figures as images; and `make plots`'s page, which carries Vega inside it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import vl_convert
import yaml

from flows.report import plots_page, write_outputs

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ABP = {"sigma": 0.3, "step_size": 0.1, "langevin_steps": 2, "batch_size": 4}


def experiment(dataset: str) -> dict:
    return {
        "dataset": dataset,
        "generator": {"kind": "image", "latent_dim": 4},
        "abp": ABP,
        "training": {"epochs": 1},
    }


def occluded(**pattern) -> dict:
    return {"kind": "occlusion", "base": "pics", "block": 3, **pattern}


def averaged(block: int) -> dict:
    return {"kind": "compressed", "base": "pics", "operator": "local_average", "block": block}


PARAMS = {
    "bundled": {},
    "datasets": {"pics": {"kind": "images", "source": "raw", "image_size": 8}},
    "variants": {
        "pics_M20": occluded(pattern="square", side=20),
        "pics_P70": occluded(pattern="salt_pepper", hidden_fraction=0.7),
        "pics_P50": occluded(pattern="salt_pepper", hidden_fraction=0.5),
        "pics_avg4": averaged(4),
        "pics_avg2": averaged(2),
    },
    "experiments": {
        name: experiment(name)
        for name in ("pics", "pics_M20", "pics_P70", "pics_P50", "pics_avg4", "pics_avg2")
    },
}


def scores(key: str, abp: float, pca: float, trivial: float | None = None) -> dict:
    found = {key: abp, f"pca_{key}": pca, "pca_components": 4, "latent_size": 4}
    return found if trivial is None else {**found, f"trivial_{key}": trivial}


METRICS = {  # the trivial baseline missing for one setting: its chart still has the others
    "pics": scores("heldout_mae", 0.05, 0.04, 0.2),
    "pics_M20": scores("train_hidden_mae", 0.09, 0.11, 0.13),
    "pics_P70": scores("train_hidden_mae", 0.08, 0.15, 0.14),
    "pics_P50": scores("train_hidden_mae", 0.07, 0.12),
    "pics_avg4": scores("train_mae", 0.13, 0.07, 0.07),
    "pics_avg2": scores("train_mae", 0.08, 0.04, 0.04),
}
# Each comparison's settings, as the paper names and orders them.
LABELS = {
    "pics_occlusion": ["P.5", "P.7", "M20"],
    "pics_compressed": ["2×2", "4×4"],
    "pics_reconstruction": ["d = 4"],
    "experiments": list(METRICS),
}
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00"
    b"\x00:~\x9bU\x00\x00\x00\nIDATx\x9cc\xf8\x0f\x00\x01\x01\x01\x00\x18\xdd\x8d\xb4\x00"
    b"\x00\x00\x00IEND\xaeB`\x82"
)  # one grey pixel


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["dvc", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A DVC project with this repository's dvc.yaml, Makefile and plot templates, and the
    report's outputs written by flows.report from the metrics above (no pipeline run)."""
    root = tmp_path_factory.mktemp("plots")
    for name in ("dvc.yaml", "Makefile"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS, allow_unicode=True))
    dvc(root, "init", "--no-scm", "-q")
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    write_outputs(PARAMS, METRICS, root / "reports", root / "metrics")
    figures = root / "reports" / "experiments" / "pics_P50" / "figures"
    figures.mkdir(parents=True)
    (figures / "reconstructions.png").write_bytes(PNG)
    return root


@pytest.fixture(scope="module")
def shown(project) -> dict:
    """`dvc plots show --json`: {plot id: its rendered definition}, for the plots whose files
    exist (not the training curves here)."""
    out = dvc(project, "plots", "show", "--json").stdout
    return {name: entries[0] for name, entries in json.loads(out)["data"].items() if entries}


def marks(node: dict, role: str, marktype: str) -> list[dict]:
    """Every scenegraph item of a mark of `marktype` whose role is `role`."""
    found = []
    if node.get("marktype") == marktype and node.get("role") == role:
        found += node["items"]
    for item in node.get("items", []):
        found += marks(item, role, marktype)
    return found


def test_each_comparison_draws_a_bar_per_setting_and_method(shown):
    template = json.loads((REPO / ".dvc" / "plots" / "bars_by_method.json").read_text())
    scale = template["encoding"]["color"]["scale"]
    colour = dict(zip(scale["domain"], scale["range"]))
    for name, labels in LABELS.items():
        plot = shown[f"reports/plots/{name}.json"]
        assert plot["type"] == "vega"
        rows = plot["content"]["data"]["values"]
        scene = vl_convert.vegalite_to_scenegraph(plot["content"])["scenegraph"]
        bars = marks(scene, "mark", "rect")
        assert bars and all(bar["height"] > 0 and bar["width"] > 0 for bar in bars), name
        for method in ("ABP", "PCA", "trivial"):  # a series each, in the legend's colour
            expected = sum(row["method"] == method for row in rows)
            assert sum(bar["fill"] == colour[method] for bar in bars) == expected, (name, method)
        assert len(bars) == len(rows)
        x_axis = [item["text"] for item in marks(scene, "axis-label", "text")]
        assert x_axis[-len(labels) :] == labels, name  # (the y axis's labels come first)
    occlusion = shown["reports/plots/pics_occlusion.json"]["content"]["data"]["values"]
    assert [row["method"] for row in occlusion if row["setting"] == "P.5"] == ["ABP", "PCA"]


def test_the_png_charts_and_each_experiments_figures_are_image_plots(shown):
    for name in ("pics_occlusion", "pics_compressed", "pics_reconstruction", "experiments"):
        assert shown[f"reports/figures/{name}.png"]["type"] == "image"
    assert shown["reports/experiments/pics_P50/figures/reconstructions.png"]["type"] == "image"


@pytest.mark.slow  # `make plots` and `dvc plots show` in subprocesses
def test_make_plots_writes_a_page_that_draws_offline(project):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    # -o: the venv is the test's own, never (re)installed into the copy.
    subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "plots", f"BIN={BIN}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    page = (project / "dvc_plots" / "index.html").read_text()
    assert "<script src=" not in page  # nothing loaded from the web
    assert page.count("window.vegaEmbed=") == 1  # Vega's scripts, inside the page
    assert page.count("vegaEmbed('#reports_plots_") == len(LABELS)  # a chart per comparison
    images = [f"static/workspace_reports_figures_{name}.png" for name in LABELS]
    images.append("static/workspace_reports_experiments_pics_P50_figures_reconstructions.png")
    for image in images:  # the PNG charts and the experiment's figure, copied beside the page
        assert page.count(f'<img src="{image}"') == 1 and (project / "dvc_plots" / image).is_file()
    assert 'id="no-charts"' in page and "{plot_divs}" not in page


def test_without_vega_the_page_says_the_charts_did_not_draw(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vl_convert", None)  # import fails: not installed
    page = plots_page(tmp_path / "page.html").read_text()
    # DVC puts its web scripts at {scripts}; the notice shows until they define vegaEmbed.
    assert "{scripts}" in page and "window.vegaEmbed=" not in page
    notice = page[page.index('<div id="no-charts">') : page.index("{plot_divs}")]
    assert "did not draw" in notice and "reports/figures/" in notice
    assert 'typeof vegaEmbed === "function"' in page
