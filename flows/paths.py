"""Where the pipeline's files live, and the command-line options that move them.

    data/prepared/<data set>/   manifest.json, <split>.<array>.npy        (flows.prepare)
        train.x.npy, test.x.npy, …: one file per array (abp/datasets.py says which)
    models/<experiment>/                                                    (flows.train)
        generator.pt       {"config": generator config, "state_dict": weights}
        latent_bank.pt     the training latents, one per training example
        history.json       per-epoch energy and reconstruction error
        mlflow_run.json    the MLflow run (and logged model) this training recorded into
        checkpoints/last.pt  full training state (persists across DVC reruns: resume)
    metrics/experiments/<experiment>.json                                   (flows.evaluate)
        the evaluation's errors, flat numbers (`dvc metrics diff` columns), committed with
        git beside params.yaml so that versions compare (metrics/summary.json: the report's)
    reports/experiments/<experiment>/                                       (flows.evaluate)
        figures/ (PNG), media/ (mp4, wav and index.json, the list of what was written)

dvc.yaml passes each stage's folders on its command line, so that it reads like the data
flow; these are the defaults when a person runs a flow by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PARAMS_FILE = Path("params.yaml")
PREPARED_ROOT = Path("data/prepared")
MODELS_ROOT = Path("models")
REPORTS_ROOT = Path("reports")
METRICS_ROOT = Path("metrics")


def experiment_arguments(description: str, *, reports: bool = False) -> argparse.ArgumentParser:
    """The command line of the per-experiment flows (train, evaluate)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("experiment", help="a key under experiments: in params.yaml")
    parser.add_argument("--params", default=str(PARAMS_FILE))
    parser.add_argument(
        "--prepared-root",
        default=str(PREPARED_ROOT),
        help="the prepared data sets: <root>/<data set>/",
    )
    parser.add_argument(
        "--models-root", default=str(MODELS_ROOT), help="the trained models: <root>/<experiment>/"
    )
    if reports:
        parser.add_argument(
            "--reports-root",
            default=str(REPORTS_ROOT),
            help="figures and media go to <root>/experiments/<experiment>/",
        )
        parser.add_argument(
            "--metrics-root",
            default=str(METRICS_ROOT),
            help="the errors go to <root>/experiments/<experiment>.json",
        )
    return parser
