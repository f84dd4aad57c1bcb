"""The MLflow model registry: one name per experiment, versions that say how to use them,
and one call that draws samples from a registered generator.

    from flows import registry
    x = registry.sample("digits", n=16, seed=0)   # abp-digits@champion: 16×1×8×8 in [−1, 1]
    generator, info = registry.load("digits")     # info.latent_shape, info.tags, info.version

The experiment `<experiment>` of params.yaml registers its generators as `abp-<experiment>`,
exactly (`abp-faces_P50`). A version's tags say what it is and how to call it: the generator
kind, `latent_shape` (JSON, e.g. `[10]` or `[8, 2, 4, 4]`), the data set, its kind, signal
shape, fps or sample rate, data digest, the MLflow run, and every setting (flattened, e.g.
`abp.sigma`). The model is a pt2 export (a GraphModule, no `latent_shape` of its own): feed it
z ~ N(0, I) of shape (n, *latent_shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from flows import tracking

if TYPE_CHECKING:
    from abp.models import Generator
    from flows.experiment import Experiment


def model_name(experiment: str) -> str:
    """The registered model of a params.yaml experiment: `abp-<experiment>`, underscores kept."""
    return f"abp-{experiment}"


def version_tags(exp: Experiment, generator: Generator, run_id: str) -> dict[str, str]:
    """What a registered version needs to be used without the repository: shapes, data,
    the run it came from and the experiment's settings."""
    tags = {
        **{k: str(v) for k, v in tracking.experiment_params(exp).items()},
        "experiment": exp.name,
        "generator_kind": str(exp.cfg.generator.get("kind")),
        "latent_shape": json.dumps(list(generator.latent_shape)),
        "dataset": exp.cfg.dataset,
        "dataset_kind": exp.kind,
        "signal_shape": json.dumps(exp.signal_shape),
        "data_digest": tracking.data_digest(exp.manifest),
        "mlflow_run_id": run_id,
    }
    tags.update({k: str(exp.manifest[k]) for k in ("fps", "sample_rate") if k in exp.manifest})
    return tags


def usage(name: str, version: str, tags: dict[str, str]) -> str:
    """The version's description: what it generates and how to draw a sample."""
    latent = json.loads(tags["latent_shape"])
    rate = "".join(f", {k} {tags[k]}" for k in ("fps", "sample_rate") if k in tags)
    return (
        f"ABP {tags['generator_kind']} generator of params.yaml experiments."
        f"{tags['experiment']}, trained on {tags['dataset']} ({tags['dataset_kind']}, signals "
        f"of shape {tags['signal_shape']}{rate}; data digest {tags['data_digest']}) in MLflow "
        f"run {tags['mlflow_run_id']}.\n\n"
        f"Draw samples: z ~ N(0, I) of shape (n, {', '.join(map(str, latent))}) gives n "
        f"signals in [-1, 1]:\n\n"
        f"    from flows import registry\n"
        f"    x = registry.sample({tags['experiment']!r}, n=16, seed=0, version={version})\n\n"
        f"or with MLflow alone:\n\n"
        f"    import mlflow, torch\n"
        f'    generator = mlflow.pytorch.load_model("models:/{name}/{version}")\n'
        f"    x = generator(torch.randn(16, {', '.join(map(str, latent))}))\n"
    )


def register(
    exp: Experiment, generator: Generator, run_id: str, model_uri: str, heldout_error: float
) -> tuple[str, bool]:
    """Register the logged generator as a new version of `abp-<experiment>`, with its tags
    and description; move `champion` to it if it beats the champion. Returns (version,
    whether it became champion)."""
    name = model_name(exp.name)
    tags = version_tags(exp, generator, run_id)
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    MlflowClient().update_model_version(name, version, description=usage(name, version, tags))
    return version, tracking.promote_if_better(name, version, heldout_error)


class NotRegistered(LookupError):
    """No registered version answers the request; the message says where it looked."""


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    model_uri: str
    latent_shape: tuple[int, ...]
    tags: dict[str, str]
    description: str


def _find_version(name: str, version: int | str | None, uri: str):
    client = MlflowClient()
    wanted = f"version {version}" if version is not None else f"alias {tracking.CHAMPION}"
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, tracking.CHAMPION)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    known = [m.name for m in client.search_registered_models(max_results=100)]
    there = ", ".join(sorted(known)) or "none"
    old = name.replace("_", "-")  # the name evaluations used before the naming rule
    renamed = (
        f" {old} is this experiment's model under the old naming: evaluate again to "
        f"register it as {name}."
        if old != name and old in known
        else ""
    )
    raise NotRegistered(
        f"no {wanted} of the registered model {name} in {uri} (registered models there: "
        f"{there}).{renamed} Evaluate the experiment to register it (python -m flows.evaluate "
        f"{name.removeprefix('abp-')}), or set MLFLOW_TRACKING_URI to the store that holds it."
    )


def _latent_shape(found, model_uri: str) -> tuple[int, ...]:
    if "latent_shape" in found.tags:
        return tuple(json.loads(found.tags["latent_shape"]))
    # A version registered before the tags existed: its input signature has (batch, *latent).
    signature = mlflow.models.get_model_info(model_uri).signature
    return tuple(int(d) for d in signature.inputs.inputs[0].shape[1:])


def load(
    experiment: str, version: int | str | None = None, *, tracking_uri: str | None = None
) -> tuple[torch.nn.Module, VersionInfo]:
    """The generator registered for `experiment` (its champion, or `version`), and what its
    version says about it. The store is `tracking_uri`, else MLFLOW_TRACKING_URI, else
    ./mlflow.db."""
    uri = tracking_uri or tracking.configure()
    tracking.require_store(uri)
    mlflow.set_tracking_uri(uri)  # models:/ URIs resolve against it
    name = model_name(experiment)
    found = _find_version(name, version, uri)
    model_uri = f"models:/{name}/{found.version}"  # pinned: the alias may move meanwhile
    info = VersionInfo(
        name,
        str(found.version),
        model_uri,
        _latent_shape(found, model_uri),
        dict(found.tags),
        found.description or "",
    )
    return mlflow.pytorch.load_model(model_uri), info


def sample(
    experiment: str,
    n: int = 16,
    seed: int = 0,
    version: int | str | None = None,
    *,
    tracking_uri: str | None = None,
) -> torch.Tensor:
    """n signals (in [−1, 1], channels first) from the registered generator of
    `experiment` (its champion, or `version`) at z ~ N(0, I) drawn with `seed`."""
    generator, info = load(experiment, version, tracking_uri=tracking_uri)
    z = torch.randn((n, *info.latent_shape), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator(z)
