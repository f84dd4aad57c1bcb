"""Settings as plain dataclasses whose bounds are written once, in their type annotations.

    sigma: Annotated[float, Gt(0)] = 0.3

The same annotations serve twice: `check_fields` (called from each settings class's
`__post_init__`) enforces them for a library user, and pydantic, which reads
annotated-types' bounds, `Literal` choices and dataclass fields natively, enforces them at
the pipeline's edge (flows/config.py validates params.yaml into these very classes and
names the key). So a setting, its default and its bounds exist in one place, and `abp`
needs neither pydantic nor a second copy of the rules.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

import annotated_types

BOUNDS = {
    annotated_types.Gt: ("gt", ">", lambda v, b: v > b),
    annotated_types.Ge: ("ge", "≥", lambda v, b: v >= b),
    annotated_types.Lt: ("lt", "<", lambda v, b: v < b),
    annotated_types.Le: ("le", "≤", lambda v, b: v <= b),
}


def _rules(annotation: Any) -> tuple[list[Any], tuple[Any, ...] | None, bool]:
    """(bounds, Literal choices or None, whether None is allowed) of one annotation."""
    bounds: list[Any] = []
    choices: tuple[Any, ...] | None = None
    optional = False
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *metadata = typing.get_args(annotation)
        bounds += [m for m in metadata if type(m) in BOUNDS]
        more, choices, optional = _rules(inner)
        bounds += more
    elif origin is Literal:
        choices = typing.get_args(annotation)
    elif origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is type(None):
                optional = True
                continue
            more, found, _ = _rules(arg)
            bounds += more
            choices = found or choices
    return bounds, choices, optional


def check_fields(settings: Any) -> None:
    """Raise ValueError, naming the field, for a value outside its annotated bounds or
    choices (what pydantic checks at the pipeline's edge, for a library user)."""
    hints = typing.get_type_hints(type(settings), include_extras=True)
    for field in dataclasses.fields(settings):
        _check(field.name, getattr(settings, field.name), hints[field.name])


def _check(name: str, value: Any, annotation: Any) -> None:
    if typing.get_origin(annotation) is tuple and isinstance(value, (tuple, list)):
        for index, (item, item_annotation) in enumerate(zip(value, typing.get_args(annotation))):
            _check(f"{name}[{index}]", item, item_annotation)
        return
    bounds, choices, optional = _rules(annotation)
    if value is None and optional:
        return
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be " + " or ".join(map(repr, choices)) + f", got {value!r}")
    for bound in bounds:
        attribute, symbol, holds = BOUNDS[type(bound)]
        limit = getattr(bound, attribute)
        if isinstance(value, bool) or not holds(value, limit):
            raise ValueError(f"{name} must be {symbol} {limit}, got {value!r}")


def as_dict(settings: Any) -> dict[str, Any]:
    """Plain values (tuples as lists), as checkpoints and JSON keep them."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()
    }
