"""Dagster run config classes generated from the core's config dataclasses (one source of truth)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

import dagster as dg
from pydantic import Field, create_model

from mm_pipeline.recommend.tuning import Tuning

T = TypeVar("T")


def config_from_dataclass(dc: type, name: str) -> type[dg.Config]:
    """A ``dg.Config`` with the dataclass's fields and defaults (tuples become lists for Dagster)."""
    hints = typing.get_type_hints(dc)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(dc):
        annotation = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if typing.get_origin(annotation) is tuple:
            annotation = list[typing.get_args(annotation)[0]]  # type: ignore[misc,index]
            default = list(default)
        description = f.metadata.get("description")
        fields[f.name] = (annotation, Field(default, description=description) if description else default)
    return create_model(name, __base__=dg.Config, __doc__=f"Run config for {dc.__name__}.", **fields)


def with_tuning(config: type[dg.Config], name: str, tuning: Tuning) -> type[dg.Config]:
    """``config`` plus the fields of the model's validation search (``Tuning``), its defaults from ``tuning``."""
    return create_model(
        name,
        __base__=config,
        __doc__=config.__doc__,
        tuning_budget_s=(
            float,
            Field(
                tuning.budget_s,
                description="Time budget of the validation search over this "
                "model's settings (seconds); the given settings always train once.",
            ),
        ),
        tuning_max_trials=(
            int,
            Field(
                tuning.max_trials,
                description="Most settings the validation search tries (1: train the given settings only).",
            ),
        ),
        tuning_validation_users=(
            int,
            Field(
                tuning.validation_users,
                ge=0,
                description="Validation users each trial of the search is scored on: a seeded sample when there "
                "are more (0: all). Choosing the model to ship scores all of them.",
            ),
        ),
    )


def to_dataclass(dc: type[T], config: dg.Config, **overrides: Any) -> T:
    """The dataclass from the run config's fields that it has (a run config may hold more, e.g. tuning)."""
    names = {f.name for f in dataclasses.fields(dc)}  # type: ignore[arg-type]
    values = {k: v for k, v in {**config.model_dump(), **overrides}.items() if k in names}
    hints = typing.get_type_hints(dc)
    for key, annotation in hints.items():
        if typing.get_origin(annotation) is tuple and isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    return dc(**values)
