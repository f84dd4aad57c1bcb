"""The fault-injection suite: real processes, real servers, real signals, tiny settings.

Every test under tests/faults is marked `faults` (and `slow`: real processes), so the suite
runs alone with `pytest tests/faults` (or `pytest -m faults`) and can be left out with
`-m "not faults"` (or `make test-fast`).
The fixtures give each test a repository-like folder with prepared data, its own MLflow
store, and one Prefect server shared by the whole suite (so that each process does not
start its own).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

HERE = Path(__file__).parent
TINY = {
    "dataset": "pics_P50",
    "generator": {"kind": "image", "latent_dim": 4, "widths": [16, 8]},
    "abp": {
        "sigma": 0.3,
        "step_size": 0.1,
        "langevin_steps": 3,
        "learning_rate": 0.003,
        "batch_size": 6,
    },
    "training": {"epochs": 3, "checkpoint_every": 1, "media_every": 2},
    "evaluation": {"n_steps": 20, "n_samples": 4},
}


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.slow)


class Workspace:
    """A repository-like folder: params.yaml with the experiment `tiny`, prepared data,
    models/, an MLflow store; runs the project's commands in it as separate processes."""

    def __init__(self, path: Path, env: dict[str, str]):
        self.path, self.env = path, env

    @property
    def models(self) -> Path:
        return self.path / "models" / "tiny"

    @property
    def checkpoint(self) -> Path:
        return self.models / "checkpoints" / "last.pt"

    def set(self, section: str, **values) -> None:
        """Change experiments.tiny.<section> in params.yaml."""
        params = yaml.safe_load((self.path / "params.yaml").read_text())
        if section == "generator":
            params["experiments"]["tiny"]["generator"] = values
        else:
            params["experiments"]["tiny"][section].update(values)
        (self.path / "params.yaml").write_text(yaml.safe_dump(params))

    def reset_experiment(self) -> None:
        """experiments.tiny back to the suite's tiny settings."""
        params = yaml.safe_load((self.path / "params.yaml").read_text())
        params["experiments"]["tiny"] = TINY
        (self.path / "params.yaml").write_text(yaml.safe_dump(params))

    def command(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", f"flows.{module}", *args]

    def run(
        self, module: str, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(module, *args),
            cwd=self.path,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, module: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(module, *args),
            cwd=self.path,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def checkpoint_epoch(self) -> int | None:
        try:
            return torch.load(self.checkpoint, weights_only=True)["epoch"]
        except (OSError, RuntimeError, EOFError, KeyError):
            return None


def fault_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))
    }
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """One real Prefect server on 127.0.0.1 for the suite, with its own database."""
    from flows.local_server import local_prefect_server

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
        with local_prefect_server() as api_url:
            yield api_url


@pytest.fixture(scope="session")
def prepared_template(tmp_path_factory, prefect_api) -> Path:
    """Raw images and their prepared data set and occlusion variant, made once."""
    from media import write_images

    root = tmp_path_factory.mktemp("template")
    write_images(root / "raw", 24, size=(16, 16), mode="L")
    params = {
        "datasets": {
            "pics": {"kind": "images", "source": "raw", "image_size": 16, "test_fraction": 0.25}
        },
        "variants": {
            "pics_P50": {
                "kind": "occlusion",
                "base": "pics",
                "pattern": "salt_pepper",
                "hidden_fraction": 0.5,
                "block": 3,
            }
        },
        "experiments": {"tiny": TINY},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("pics", "pics_P50"):
        done = subprocess.run(
            [sys.executable, "-m", "flows.prepare", name],
            cwd=root,
            env=fault_env(PREFECT_API_URL=prefect_api),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture
def workspace(tmp_path, prepared_template, prefect_api) -> Workspace:
    path = tmp_path / "ws"
    shutil.copytree(prepared_template, path)
    return Workspace(
        path,
        fault_env(
            PREFECT_API_URL=prefect_api, MLFLOW_TRACKING_URI=f"sqlite:///{path / 'mlflow.db'}"
        ),
    )
