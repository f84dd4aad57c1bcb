"""Compare experiments' latest finished runs side by side: the settings that differ, the
final metrics, and which run holds its model's `champion`.

    python -m flows.compare digits digits_d20              # latest run of each
    python -m flows.compare digits --runs 3f2a0c... --csv compare.csv

An experiment is a key of params.yaml experiments; its runs carry the tag `experiment`
(runs recorded before that tag are found by their `dvc_stage` tag, train@<experiment>).
Reads MLflow at MLFLOW_TRACKING_URI, else ./mlflow.db.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from flows import registry, tracking
from flows.process import run_command


class NoRuns(LookupError):
    """Nothing to compare; the message names what was looked for, and where."""


def latest_run(experiment: str, uri: str) -> pd.DataFrame:
    """The experiment's latest finished run, as one row of mlflow.search_runs."""
    if "'" in experiment:
        raise NoRuns(f"{experiment!r} is not an experiment name")
    for tag in (f"tags.experiment = '{experiment}'", f"tags.dvc_stage = 'train@{experiment}'"):
        runs = mlflow.search_runs(
            search_all_experiments=True,
            max_results=1,
            filter_string=f"{tag} and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
        if len(runs):
            return runs
    raise NoRuns(
        f"no finished run of experiment {experiment!r} (tag experiment = "
        f"{experiment!r}) in {uri}{_known()}. Train it first (python -m "
        f"flows.train {experiment}), or set MLFLOW_TRACKING_URI to the store that "
        "holds its runs."
    )


def _known() -> str:
    runs = mlflow.search_runs(
        search_all_experiments=True,
        max_results=1000,
        filter_string="attributes.status = 'FINISHED'",
    )
    names = sorted({experiment_of(run) for _, run in runs.iterrows()} - {"?"})
    return f" (experiments with finished runs there: {', '.join(names) or 'none'})"


def run_by_id(run_id: str, uri: str) -> pd.DataFrame:
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"attributes.run_id = '{run_id.replace(chr(39), '')}'",
    )
    if not len(runs):
        raise NoRuns(f"no run with id {run_id} in {uri}")
    return runs


def experiment_of(run: pd.Series) -> str:
    if isinstance(run.get("tags.experiment"), str):
        return run["tags.experiment"]
    stage = run.get("tags.dvc_stage")
    return stage.split("@", 1)[1] if isinstance(stage, str) and "@" in stage else "?"


def champion_run(experiment: str) -> tuple[str | None, str] | None:
    """(run id, version) of the version holding the `champion` alias of the experiment's
    registered model, or None."""
    try:
        version = MlflowClient().get_model_version_by_alias(
            registry.model_name(experiment), tracking.CHAMPION
        )
    except MlflowException:
        return None
    return version.tags.get("mlflow_run_id") or version.run_id, str(version.version)


def comparison(runs: pd.DataFrame) -> pd.DataFrame:
    """One column per run; rows: run id, champion, the params that differ between the runs
    (all of them for a single run), and the final metrics (system metrics left out)."""
    runs = runs.reset_index(drop=True)
    experiments = [experiment_of(run) for _, run in runs.iterrows()]
    labels = [
        e if experiments.count(e) == 1 else f"{e} ({run_id[:8]})"
        for e, run_id in zip(experiments, runs["run_id"])
    ]
    champions = {e: champion_run(e) for e in set(experiments)}
    marks = [
        f"yes (version {champion[1]})"
        if (champion := champions[e]) and champion[0] == run_id
        else "no"
        for e, run_id in zip(experiments, runs["run_id"])
    ]
    params = [c for c in runs.columns if c.startswith("params.")]
    if len(runs) > 1:
        params = [c for c in params if runs[c].astype(str).nunique(dropna=False) > 1]
    metrics = [
        c for c in runs.columns if c.startswith("metrics.") and not c.startswith("metrics.system/")
    ]
    metrics.sort(key=lambda c: (not c.endswith("_mae"), c))  # the errors first
    table = runs[params + metrics].T.astype(object)
    table.columns = labels
    head = pd.DataFrame([list(runs["run_id"]), marks], index=["run_id", "champion"], columns=labels)
    return pd.concat([head, table])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", help="keys under experiments: in params.yaml")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=[],
        metavar="RUN_ID",
        help="MLflow runs to add (any experiment)",
    )
    parser.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    if not args.experiments and not args.runs:
        parser.error("name at least one experiment or --runs RUN_ID")
    uri = tracking.configure()
    try:
        tracking.require_store(uri)
        runs = pd.concat(
            [latest_run(e, uri) for e in args.experiments] + [run_by_id(r, uri) for r in args.runs]
        )
    except (NoRuns, tracking.TrackingUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = comparison(runs)
    with pd.option_context(
        "display.max_rows",
        None,
        "display.max_columns",
        None,
        "display.width",
        200,
        "display.max_colwidth",
        40,
    ):
        print(f"MLflow: {uri}\n{table.to_string()}")
    if args.csv:
        table.to_csv(args.csv, index_label="field")
        print(f"written: {args.csv}")
    return 0


if __name__ == "__main__":
    run_command(main)
