"""An experiment of params.yaml, as train and evaluate both see it: its validated settings,
its prepared data, its folders (flows.paths) and the fingerprint that tells whether a
checkpoint or a trained model belongs to these settings and data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abp import datasets
from abp.evaluate import Split
from abp.models import Generator, generator_for, sized_config
from flows.config import ConfigError, ExperimentConfig, experiment_config, load_params
from flows.paths import METRICS_ROOT, MODELS_ROOT, PARAMS_FILE, PREPARED_ROOT, REPORTS_ROOT


@dataclass
class Experiment:
    name: str
    cfg: ExperimentConfig
    manifest: dict[str, Any]
    data_folder: Path
    model_folder: Path
    report_folder: Path
    params_file: Path = PARAMS_FILE
    metrics_root: Path = METRICS_ROOT

    @property
    def metrics_file(self) -> Path:
        return self.metrics_root / "experiments" / f"{self.name}.json"

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def split(self, split: str) -> Split:
        """The split `train` or `test`: the complete signals and what a model may see of
        them (observations, operator, mask)."""
        return Split.read(self.data_folder, split, self.manifest)

    @property
    def signal_shape(self) -> list[int]:
        return self.manifest["shapes"]["train"][1:]

    def generator_config(self) -> dict[str, Any]:
        """The generator's settings, with the sizes the data fix filled in."""
        return sized_config(self.cfg.generator, self.signal_shape)

    def build_generator(self) -> Generator:
        """The generator, its initial weights seeded by training.init_seed, checked to make
        signals of the data's shape; a problem names the params key."""
        try:
            return generator_for(
                self.cfg.generator,
                self.signal_shape,
                seed=self.cfg.training.init_seed,
                data_name=self.cfg.dataset,
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(
                f"{self.params_file}: experiments.{self.name}.generator: {error}"
            ) from None

    def fingerprint(self) -> str:
        """Changes whenever what training computes changes: the data set, the generator,
        abp.train.ABPConfig (not the ExecutionConfig: how the iteration runs), the initial
        weights' seed, or the prepared data. A checkpoint with another fingerprint belongs
        to another run and is not resumed. The number of epochs is left out, so raising it
        continues a finished training (exactly as if it had run longer in one go)."""
        shaping = {
            **self.cfg.model_dump(mode="json", include={"dataset", "generator", "abp"}),
            "init_seed": self.cfg.training.init_seed,
        }
        content = json.dumps({"cfg": shaping, "data": self.manifest.get("files")}, sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()


def load_experiment(
    name: str,
    params_file: Path = PARAMS_FILE,
    prepared_root: Path = PREPARED_ROOT,
    models_root: Path = MODELS_ROOT,
    reports_root: Path = REPORTS_ROOT,
    metrics_root: Path = METRICS_ROOT,
) -> Experiment:
    cfg = experiment_config(name, load_params(params_file), params_file)
    folder = Path(prepared_root) / cfg.dataset
    return Experiment(
        name,
        cfg,
        datasets.read_manifest(folder),
        folder,
        Path(models_root) / name,
        Path(reports_root) / "experiments" / name,
        Path(params_file),
        Path(metrics_root),
    )
