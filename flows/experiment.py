"""What train and evaluate share: an experiment's settings, data, generator and files.

models/<experiment>/
    generator.pt       {"config": generator config, "state_dict": weights}
    latent_bank.pt     the training latents, one per training example
    history.json       per-epoch energy and reconstruction error
    mlflow_run.json    the MLflow run (and logged model) this training recorded into
    checkpoints/last.pt  full training state (persists across DVC reruns: resume)
metrics/experiments/<experiment>.json
    the evaluation's errors, flat numbers (`dvc metrics diff` columns), committed with git
    beside params.yaml so that versions compare (metrics/summary.json is the report's)
reports/experiments/<experiment>/
    figures/ (PNG), media/ (mp4, wav and index.json, the list of what was written)
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from abp import datasets
from abp.files import atomic_path
from abp.models import Generator, build_generator
from abp.observe import Observation
from abp.train import EXECUTION_SWITCHES
from flows.config import ConfigError, ExperimentConfig, experiment_config, load_params

PREPARED_ROOT, MODELS_ROOT, REPORTS_ROOT = Path("data/prepared"), Path("models"), Path("reports")
METRICS_ROOT = Path("metrics")


@dataclass
class Experiment:
    name: str
    cfg: ExperimentConfig
    manifest: dict[str, Any]
    data_folder: Path
    model_folder: Path
    report_folder: Path
    params_file: Path = Path("params.yaml")
    metrics_root: Path = METRICS_ROOT

    @property
    def metrics_file(self) -> Path:
        return self.metrics_root / "experiments" / f"{self.name}.json"

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def split(self, split: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, Observation]:
        """The split's tensors and what a model may see of it (observations, operator)."""
        tensors = datasets.read_split(self.data_folder, split)
        y, observation = datasets.observations(tensors, self.manifest)
        return tensors, y, observation

    @property
    def signal_shape(self) -> list[int]:
        return self.manifest["shapes"]["train"][1:]

    def generator_config(self) -> dict[str, Any]:
        """The generator's settings, with the sizes the data fixes filled in."""
        config = dict(self.cfg.generator)
        channels, *rest = self.signal_shape
        if config.get("kind") == "linear":
            config.setdefault("output_shape", self.signal_shape)
            return config
        config.setdefault("channels", channels)
        if config.get("kind") == "image":
            config.setdefault("image_size", rest[-1])
        return config

    def build_generator(self) -> Generator:
        """The generator, checked to make signals of the data's shape."""
        key = f"experiments.{self.name}.generator"
        torch.manual_seed(self.cfg.training.init_seed)
        try:
            generator = build_generator(self.generator_config())
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{self.params_file}: {key}: {error}") from None
        with torch.no_grad():
            made = list(generator(generator.sample_latent(1)).shape[1:])
        if made != self.signal_shape:
            raise ConfigError(f"{self.params_file}: {key}: the generator makes signals of shape {made}, "
                              f"but {self.cfg.dataset} holds {self.signal_shape}; change its sizes")
        return generator

    def fingerprint(self) -> str:
        """Changes whenever the settings that shape training or the prepared data change: a
        checkpoint with another fingerprint belongs to another run and is not resumed. The
        number of epochs is left out, so raising it continues a finished training (exactly
        as if it had run longer in one go); so are the switches that change only how the
        iteration runs (abp.train.EXECUTION_SWITCHES), e.g. turning CUDA graphs on."""
        shaping = {**self.cfg.model_dump(mode="json", include={"dataset", "generator", "abp"}),
                   "init_seed": self.cfg.training.init_seed}
        for switch in EXECUTION_SWITCHES:
            shaping["abp"].pop(switch)
        content = json.dumps({"cfg": shaping, "data": self.manifest.get("files")}, sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()


def load_experiment(name: str, params_file: Path = Path("params.yaml"),
                    prepared_root: Path = PREPARED_ROOT, models_root: Path = MODELS_ROOT,
                    reports_root: Path = REPORTS_ROOT,
                    metrics_root: Path = METRICS_ROOT) -> Experiment:
    cfg = experiment_config(name, load_params(params_file), params_file)
    folder = Path(prepared_root) / cfg.dataset
    return Experiment(name, cfg, datasets.read_manifest(folder), folder,
                      Path(models_root) / name, Path(reports_root) / "experiments" / name,
                      Path(params_file), Path(metrics_root))


def write_json(path: Path, content: Any) -> Path:
    """Strict JSON (a NaN or infinity is an error, never a bare `NaN` in the file),
    written atomically."""
    text = json.dumps(content, indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def save_tensor_file(content: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        torch.save(content, tmp)
    return path


def load_generator(model_folder: Path) -> Generator:
    saved = torch.load(model_folder / "generator.pt", map_location="cpu", weights_only=True)
    generator = build_generator(saved["config"])
    generator.load_state_dict(saved["state_dict"])
    return generator


def experiment_arguments(description: str, *, reports: bool = False) -> argparse.ArgumentParser:
    """The command line of the per-experiment flows (train, evaluate)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("experiment", help="a key under experiments: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared-root", default=str(PREPARED_ROOT))
    parser.add_argument("--models-root", default=str(MODELS_ROOT))
    if reports:
        parser.add_argument("--reports-root", default=str(REPORTS_ROOT),
                            help="figures and media go to <root>/experiments/<experiment>/")
        parser.add_argument("--metrics-root", default=str(METRICS_ROOT),
                            help="the errors go to <root>/experiments/<experiment>.json")
    return parser
