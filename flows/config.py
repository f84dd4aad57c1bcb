"""params.yaml, read into typed and validated settings at the edge of the pipeline.

Every error names the params file actually read (params.yaml unless `--params` says
otherwise), the key and what is wrong, one line per problem, and is raised before any work.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from abp.evaluate import EvaluationConfig
from abp.sources.bundled import BUNDLED_FILES, BUNDLED_IMAGES
from abp.train import ABPConfig, ExecutionConfig, check_batches
from abp.vae import VAEConfig
from flows.paths import PARAMS_FILE

BUNDLED = "bundled:"


class ConfigError(ValueError):
    """A params file value that cannot be used; the message names the file and the key."""


BOOL_FOR_NUMBER = "bool_for_number"


def _admits(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether a field's type (through unions, Literal values, Optional) takes one of kinds."""
    if annotation is Any:
        return True
    if get_origin(annotation) is Literal:
        return any(type(value) in kinds for value in get_args(annotation))
    if isinstance(annotation, type) and annotation in kinds:
        return True
    return any(_admits(arg, kinds) for arg in get_args(annotation))


def _field_types(cls: type) -> dict[str, Any]:
    """A model's or a dataclass's field annotations (abp's settings are dataclasses)."""
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {name: field.annotation for name, field in cls.model_fields.items()}
    if dataclasses.is_dataclass(cls):
        return get_type_hints(cls, include_extras=True)
    return {}


def _bools_for_numbers(data: Any, types: dict[str, Any], loc: tuple[str | int, ...]) -> list:
    """A `true` or `false` given for a number, anywhere in these settings (into abp's
    dataclasses and the items of tuples too: pydantic validates those with this model's
    config but not its validators)."""
    refused = []
    for key, value in data.items() if isinstance(data, dict) else ():
        if key in types:
            refused += _bool_for_number(value, types[key], (*loc, key))
    return refused


def _bool_for_number(value: Any, annotation: Any, loc: tuple[str | int, ...]) -> list:
    if isinstance(value, bool):
        if _admits(annotation, (int, float)) and not _admits(annotation, (bool,)):
            return [
                InitErrorDetails(
                    type=PydanticCustomError(
                        BOOL_FOR_NUMBER,
                        "expected a number, got {value}",
                        {"value": str(value).lower()},
                    ),
                    loc=loc,
                    input=value,
                )
            ]
        return []
    if (
        isinstance(value, dict)
        and isinstance(annotation, type)
        and dataclasses.is_dataclass(annotation)
    ):
        return _bools_for_numbers(value, _field_types(annotation), loc)
    if isinstance(value, (list, tuple)) and get_origin(annotation) is tuple:
        return [
            refusal
            for index, (item, item_annotation) in enumerate(zip(value, get_args(annotation)))
            for refusal in _bool_for_number(item, item_annotation, (*loc, index))
        ]
    return []


class Strict(BaseModel):
    # Unknown keys are typos: reject them instead of silently ignoring a setting. No inf or
    # nan: YAML's .inf and .nan would pass every bound (sigma: .inf > 0) and poison training.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _no_bool_for_number(cls, data: Any, handler: Any) -> Any:
        # Lax mode reads YAML's `true` as 1 for an int or float field (epochs: true would
        # train one epoch); a field declared bool keeps its bools. A model validator rather
        # than a field validator for "*": pydantic allows no field validator on the `kind`
        # tags of the discriminated unions.
        refused = _bools_for_numbers(data, _field_types(cls), ())
        if not refused:
            return handler(data)
        try:  # report the other problems too, one line each
            handler(data)
            others = []
        except ValidationError as error:
            keys = {r["loc"] for r in refused}
            others = [
                InitErrorDetails(
                    type=PydanticCustomError(e["type"], e["msg"]),
                    loc=e["loc"],
                    input=e.get("input"),
                )
                for e in error.errors()
                if e["loc"] not in keys and e["loc"][:1] not in keys
            ]
        raise ValidationError.from_exception_data(cls.__name__, refused + others)


def _check_source(source: str, allowed: tuple[str, ...], what: str) -> str:
    if source.startswith(BUNDLED):
        name = source[len(BUNDLED) :]
        if name not in allowed:
            raise ValueError(
                f"unknown bundled source {name!r} for {what}; choose one of "
                + ", ".join(BUNDLED + a for a in allowed)
                + ", or give a path to your own files"
            )
    return source


class SplitSettings(Strict):
    test_fraction: float = Field(0.2, ge=0, lt=1)
    split_seed: int = 0
    on_corrupt: Literal["skip", "fail"] = "skip"


class Patches(Strict):
    """Random square crops of every image, after it is resized to image_size, each crop an
    example: many views of one texture, so that a model learns its statistics (and samples
    from the prior look like it) instead of one image's layout."""

    count: int = Field(ge=1)  # per image
    size: int = Field(ge=4)
    seed: int = 0


class ImageDataset(SplitSettings):
    """A folder of images (recursively), idx image files (the MNIST family: one file or a
    folder of them, read instead of image files when there are any), or a bundled image set."""

    kind: Literal["images"]
    source: str
    image_size: int = Field(ge=4, le=1024)
    channels: Literal[1, 3] = 1
    crop: Literal["center", "none"] = "center"
    max_examples: int | None = Field(None, ge=1)
    # idx images only: swap rows and columns (EMNIST's files store every image transposed).
    transpose: bool = False
    # Crops of each image as the examples (the split then keeps an image's crops together).
    patches: Patches | None = None

    @field_validator("patches")
    @classmethod
    def _patches_fit(cls, v: Patches | None, info: ValidationInfo) -> Patches | None:
        size = info.data.get("image_size")
        if v is not None and size is not None and v.size > size:
            raise ValueError(f"size {v.size} is larger than the images (image_size {size})")
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v, BUNDLED_IMAGES, "images")


class VideoDataset(SplitSettings):
    """One video file or a folder of them, as clips of clip_frames frames (1: single frames)."""

    kind: Literal["video"]
    source: str
    image_size: int = Field(ge=4, le=1024)
    channels: Literal[1, 3] = 3
    crop: Literal["center", "none"] = "center"
    clip_frames: int = Field(8, ge=1)
    clip_stride: int = Field(8, ge=1)
    # Frames per second every file is brought to before frame_step (nearest frame in time:
    # dropped or repeated); None: the first readable file's own rate.
    fps: float | None = Field(None, gt=0)
    frame_step: int = Field(1, ge=1)
    max_frames: int | None = Field(None, ge=1)
    max_examples: int | None = Field(None, ge=1)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v, tuple(f for f in BUNDLED_FILES if f.endswith(".mp4")), "video")


class AudioDataset(SplitSettings):
    """A folder of audio files (or one file), averaged to mono, resampled, cut into clips."""

    kind: Literal["audio"]
    source: str
    sample_rate: int = Field(ge=100)
    clip_length: int = Field(ge=16)
    clip_stride: int = Field(ge=1)
    peak_normalize: bool = True
    # A sound shorter than clip_length: false leaves it out; true zero-pads it to one clip
    # whose padding a mask marks as unobserved.
    pad_short: bool = False
    max_examples: int | None = Field(None, ge=1)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v, tuple(f for f in BUNDLED_FILES if f.endswith(".wav")), "audio")


class OcclusionVariant(Strict):
    """Occluded copies: the model will see only the observed entries."""

    kind: Literal["occlusion"]
    base: str
    pattern: Literal[
        "salt_pepper", "square", "missing_frames", "frame_occlusion", "missing_segments"
    ]
    hidden_fraction: float | None = Field(None, gt=0, lt=1)
    block: int | None = Field(None, ge=1)
    side: int | None = Field(None, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _settings(self) -> OcclusionVariant:
        needed = (
            ("side",)
            if self.pattern == "square"
            else ("hidden_fraction",)
            if self.pattern == "missing_frames"
            else ("hidden_fraction", "block")
        )
        missing = [k for k in needed if getattr(self, k) is None]
        if missing:
            raise ValueError(f"pattern {self.pattern!r} needs {' and '.join(missing)}")
        return self


class CompressedVariant(Strict):
    """Compressed measurements y = A·x: the model will see only y."""

    kind: Literal["compressed"]
    base: str
    operator: Literal["gaussian", "local_average"]
    ratio: float | None = Field(None, gt=0, lt=1)
    block: int | None = Field(None, ge=2)
    seed: int = 0
    # gaussian: each example measured through its own matrix, drawn from a seed derived from
    # the variant's seed and the example's id (kept as seeds, never as matrices).
    per_example: bool = False

    @model_validator(mode="after")
    def _settings(self) -> CompressedVariant:
        if self.operator == "gaussian" and self.ratio is None:
            raise ValueError("operator 'gaussian' needs ratio (measurements per entry)")
        if self.per_example and self.operator != "gaussian":
            raise ValueError("per_example: true needs operator 'gaussian'")
        if self.operator == "local_average" and self.block is None:
            raise ValueError("operator 'local_average' needs block (the side of each block)")
        return self


class SubsampleVariant(Strict):
    """Fewer training examples, every k-th frame, or every k-th sample."""

    kind: Literal["subsample"]
    base: str
    keep_fraction: float = Field(1.0, gt=0, le=1)
    frame_step: int = Field(1, ge=1)
    sample_step: int = Field(1, ge=1)
    seed: int = 0


DatasetConfig = Annotated[ImageDataset | VideoDataset | AudioDataset, Field(discriminator="kind")]
VariantConfig = Annotated[
    OcclusionVariant | CompressedVariant | SubsampleVariant, Field(discriminator="kind")
]


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (run from the repository root)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def _validate(adapter: TypeAdapter, raw: Any, key: str, path: Path):
    try:
        return adapter.validate_python(raw)
    except ValidationError as error:
        problems = []
        for e in error.errors():
            # With a tagged union pydantic puts the tag ("images", …) in the location: drop it.
            loc = [str(p) for p in e["loc"]]
            if loc and isinstance(raw, dict) and loc[0] == str(raw.get("kind")):
                loc = loc[1:]
            where = ".".join([key, *loc])
            shown = (
                "input" in e and not isinstance(e["input"], dict) and e["type"] != BOOL_FOR_NUMBER
            )  # that message shows the value
            got = f" (got {e['input']!r})" if shown else ""
            # abp's dataclasses reject an unknown key in their own words: say it as for the
            # rest of the file.
            message = (
                "Extra inputs are not permitted"
                if e["type"] == "unexpected_keyword_argument"
                else e["msg"]
            )
            problems.append(f"{path}: {where}: {message}{got}{_moved(loc, e['type'], key)}")
        raise ConfigError("\n".join(problems)) from None


def _moved(loc: list[str], error_type: str, key: str) -> str:
    """Where a speed switch went: params files from before abp and execution were apart
    have them under abp."""
    execution = {f.name for f in dataclasses.fields(ExecutionConfig)}
    if (
        error_type == "unexpected_keyword_argument"
        and loc[:1] == ["abp"]
        and loc[1:]
        and loc[1] in execution
    ):
        return f": how the iteration runs is now under {key}.execution"
    return ""


_DATASET = TypeAdapter(DatasetConfig)
_VARIANT = TypeAdapter(VariantConfig)


def _section(params: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    section = params.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {name}: expected a mapping of names to settings")
    return section


# The two groups of data sets in the params file: data shipped inside installed packages
# (`bundled:`, whose DVC stages depend on no file) and the user's own files (`datasets:`,
# whose stages depend on their `source` path alone).
DATASET_GROUPS = ("bundled", "datasets")


def dataset_settings(
    params: dict[str, Any], path: Path = PARAMS_FILE
) -> dict[str, tuple[str, Any]]:
    """Every data set of both groups: name → (the params key it is under, its settings).
    Names are unique across the groups and the variants."""
    found: dict[str, tuple[str, Any]] = {}
    variants = _section(params, "variants", path)
    for group in DATASET_GROUPS:
        for name, settings in _section(params, group, path).items():
            if name in found or name in variants:
                other = found[name][0].split(".")[0] if name in found else "variants"
                raise ConfigError(
                    f"{path}: {name} is both in {other} and in {group}; names must be unique"
                )
            found[name] = (f"{group}.{name}", settings)
    return found


def dataset_config(name: str, params: dict[str, Any], path: Path = PARAMS_FILE):
    """The validated settings of a data set (under bundled: or datasets:) or a variant."""
    datasets, variants = dataset_settings(params, path), _section(params, "variants", path)
    if name in datasets:
        key, settings = datasets[name]
        cfg = _validate(_DATASET, settings, key, path)
        bundled_source = cfg.source.startswith(BUNDLED)
        if key.startswith("bundled.") and not bundled_source:
            raise ConfigError(
                f"{path}: {key}.source: {cfg.source!r} is a path: move {name} "
                "under datasets:, whose stages depend on the files they read"
            )
        if key.startswith("datasets.") and bundled_source:
            raise ConfigError(
                f"{path}: {key}.source: {cfg.source!r} ships inside a package: "
                f"move {name} under bundled: (a datasets: stage depends on its "
                "source path, which a bundled source is not)"
            )
        return cfg
    if name in variants:
        variant = _validate(_VARIANT, variants[name], f"variants.{name}", path)
        if variant.base not in datasets:
            raise ConfigError(
                f"{path}: variants.{name}.base: {variant.base!r} is not a data "
                f"set under bundled or datasets (have: "
                f"{', '.join(datasets) or 'none'})"
            )
        return variant
    raise ConfigError(
        f"{path}: no data set or variant named {name!r} (bundled and datasets: "
        f"{', '.join(datasets) or 'none'}; variants: {', '.join(variants) or 'none'})"
    )


class TrainingSettings(Strict):
    """The training loop around the algorithm."""

    epochs: int = Field(ge=1)
    init_seed: int = 0  # seeds the generator's initial weights
    checkpoint_every: int = Field(5, ge=1)
    media_every: int = Field(10, ge=1)
    # On divergence, continue this many times from the last good checkpoint with the suspect
    # setting (step_size or learning_rate) halved; 0: stop with the diagnosis.
    divergence_retries: int = Field(0, ge=0)
    # Hold the training data on the device (true), or on the host and move each batch there
    # as it is needed (false: a data set larger than the device's memory); auto: on the
    # device when it takes at most half of its free memory (abp.data.fits_on_device).
    data_on_device: Literal["auto"] | bool = "auto"
    # Training processes (torchrun, flows/ranks.py): per machine (one per GPU), and machines,
    # which meet at rdzv_endpoint (host:port of torchrun's c10d rendezvous).
    nproc_per_node: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)
    rdzv_endpoint: str | None = None

    @field_validator("data_on_device", mode="before")
    @classmethod
    def _auto_or_bool(cls, v: object) -> object:
        if v != "auto" and not isinstance(v, bool):
            raise PydanticCustomError("auto_or_bool", "should be auto, true or false")
        return v

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_and_port(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[^\s:]+:\d+", v):
            raise PydanticCustomError("endpoint", "should be host:port")
        return v

    @model_validator(mode="after")
    def _machines_meet_somewhere(self) -> TrainingSettings:
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise PydanticCustomError(
                "rendezvous", "nnodes > 1 needs rdzv_endpoint (host:port where the machines meet)"
            )
        return self

    @property
    def processes(self) -> int:
        return self.nproc_per_node * self.nnodes


class ExperimentConfig(Strict):
    """One training run: a prepared data set (or variant), a generator, ABP settings.

    `abp`, `execution`, `evaluation` and `vae` are abp's own settings classes (abp.train.
    ABPConfig, abp.train.ExecutionConfig, abp.evaluate.EvaluationConfig, abp.vae.VAEConfig,
    the VAE baseline the evaluation learns beside ABP): their fields, defaults and
    bounds are defined there, once, and checked here with this file's rules (unknown keys,
    inf/nan and `true` for a number refused). `dataset`, `generator`, `abp` and `training`
    are required, so that the DVC train stage can list them as its params; `evaluation`
    and `vae` settings rerun the evaluation alone, and so does `execution` (how fast, not
    what: it retrains nothing)."""

    dataset: str
    generator: dict[str, Any]
    abp: ABPConfig
    training: TrainingSettings
    execution: ExecutionConfig = ExecutionConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    vae: VAEConfig = VAEConfig()

    @model_validator(mode="after")
    def _batches(self) -> ExperimentConfig:
        try:
            check_batches(self.abp, self.execution)
        except ValueError as error:
            raise PydanticCustomError(
                "batches",
                "{where}: {reason}",
                {"where": "execution.inference_batch_size", "reason": str(error)},
            ) from None
        return self


_EXPERIMENT = TypeAdapter(ExperimentConfig)


def experiment_config(
    name: str, params: dict[str, Any], path: Path = PARAMS_FILE
) -> ExperimentConfig:
    """The validated settings of the experiment `name` (params file: experiments.<name>)."""
    experiments = _section(params, "experiments", path)
    if name not in experiments:
        raise ConfigError(
            f"{path}: no experiment named {name!r} under experiments "
            f"(have: {', '.join(experiments) or 'none'})"
        )
    cfg = _validate(_EXPERIMENT, experiments[name], f"experiments.{name}", path)
    known = {*dataset_settings(params, path), *_section(params, "variants", path)}
    if cfg.dataset not in known:
        raise ConfigError(
            f"{path}: experiments.{name}.dataset: {cfg.dataset!r} is not a data "
            f"set or variant (have: {', '.join(sorted(known)) or 'none'})"
        )
    return cfg


class ScheduleConfig(Strict):
    """When the served deployment retrains (params file: schedule)."""

    cron: str
    timezone: str = "UTC"
    targets: list[str] = []

    @model_validator(mode="after")
    def _cron(self) -> ScheduleConfig:
        from prefect.client.schemas.schedules import CronSchedule  # Prefect's own checks

        try:
            CronSchedule(cron=self.cron, timezone=self.timezone)
        except ValidationError as error:
            reason = error.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"{reason} (cron is: minute hour day month weekday)") from None
        return self


def schedule_config(params: dict[str, Any], path: Path = PARAMS_FILE) -> ScheduleConfig:
    if "schedule" not in params:
        raise ConfigError(f"{path}: schedule: missing (e.g. schedule: {{cron: '0 3 * * *'}})")
    return _validate(TypeAdapter(ScheduleConfig), params["schedule"], "schedule", path)
