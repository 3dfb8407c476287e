"""Each loss's options as a Pydantic model generated from its engine signature: the one check of
option types and bounds, shared by the HTTP API's request models and the CLI.

The engine declares options (`service.engine.registry.OptionSpec`) and stays free of Pydantic;
this module turns the declarations into the models whose JSON schema the OpenAPI document shows
and whose errors the API and the CLI report. It imports the engine and nothing of the server.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic_core import PydanticCustomError

from service.engine import LIBRARIES, LossSpec, OptionSpec, resolve
from service.engine.libraries import LIBRARY_TITLES, LibraryMetric
from service.values.text import shown

# Pydantic builds an error for every unknown key of an object, and for every bad element of a list
# or dict (~1.4 KB each once listed: a 3 MB body of a million negative weights held 1.6 GB before
# its 422). An object with more unknown keys than this is refused in one error naming the first,
# and option lists and dicts stop at their first bad element (`fail_fast`).
MAX_UNKNOWN_KEYS = 20
UNKNOWN_KEYS = "unknown_keys"  # the error type of such an object


@cache
def _known_keys(model: type[BaseModel]) -> frozenset[str]:
    """The keys an object of `model` may hold: its fields' names and their aliases."""
    keys: set[str] = set()
    for name, info in model.__pydantic_fields__.items():
        keys.add(name)
        choices = info.validation_alias.choices if isinstance(info.validation_alias, AliasChoices) else []
        keys.update(choice for choice in choices if isinstance(choice, str))
        keys.update(alias for alias in (info.alias, info.validation_alias) if isinstance(alias, str))
    return frozenset(keys)


def few_unknown_keys(model: type[BaseModel], data: Any) -> Any:
    """Refuse, in one error, an object with more than MAX_UNKNOWN_KEYS keys that are not fields of
    `model`; fewer are left to Pydantic, which names each."""
    if type(data) is dict and len(data) > MAX_UNKNOWN_KEYS:
        known = _known_keys(model)
        unknown = [key for key in data if key not in known]
        if len(unknown) > MAX_UNKNOWN_KEYS:
            raise PydanticCustomError(
                UNKNOWN_KEYS,
                "Extra inputs are not permitted: {count} keys are not fields of this object, the first {first}",
                {"count": f"{len(unknown):,}", "first": shown(str(unknown[0]))},
            )
    return data


def _fields_only(cls: type[BaseModel], data: Any) -> Any:
    return few_unknown_keys(cls, data)


FIELDS_ONLY: dict[str, Any] = {"_fields_only": model_validator(mode="before")(_fields_only)}


def _bounded(annotation: Any, bounds: dict[str, float]) -> Any:
    """Attach numeric bounds to the numbers inside `annotation` (float, list[float], float | None)."""
    if not bounds:
        return annotation
    if annotation in (int, float):
        return Annotated[annotation, Field(**bounds)]  # type: ignore[call-overload]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_bounded(a, bounds) for a in args)]  # noqa: UP007
    if origin is list:
        return list[_bounded(args[0], bounds)]  # type: ignore[misc]
    if origin is dict:
        return dict[args[0], _bounded(args[1], bounds)]  # type: ignore[misc,valid-type]
    return annotation


def _option_field(option: OptionSpec) -> tuple[Any, Any]:
    bounds = {}
    if option.range is not None:
        bounds = {k: v for k, v in vars(option.range).items() if v is not None}
    description = option.doc
    if option.only_under:
        description += f" (only under convention {option.only_under!r})"
    alias = AliasChoices(option.name, *option.aliases) if option.aliases else None
    annotation = _fail_fast(_bounded(option.type, bounds))
    return annotation, Field(default=option.default, description=description, validation_alias=alias)


def _fail_fast(annotation: Any) -> Any:
    """`annotation` with each list and dict in it stopping at its first bad element."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_fail_fast(a) for a in args)]  # noqa: UP007
    if origin in (list, dict):
        return Annotated[annotation, Field(fail_fast=True)]
    return annotation


def title(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


@cache
def options_model(spec: LossSpec) -> type[BaseModel]:
    fields = {o.name: _option_field(o) for o in spec.options}
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{title(spec.name)}Options",
        __config__=ConfigDict(extra="forbid", strict=True, populate_by_name=True),
        __doc__=f"Options of {spec.name}.",
        __validators__=FIELDS_ONLY,
        **fields,
    )


def metric_title(metric: LibraryMetric) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", metric.name)) + metric.library.capitalize()


@cache
def library_options_model(metric: LibraryMetric) -> type[BaseModel]:
    fields = {o.name: _option_field(o) for o in metric.spec.options}
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{metric_title(metric)}Options",
        __config__=ConfigDict(extra="forbid", strict=True, populate_by_name=True),
        __doc__=f"Options of {LIBRARY_TITLES[metric.library]}'s {metric.name}.",
        __validators__=FIELDS_ONLY,
        **fields,
    )


def checked_options(loss: str, convention: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` as `service.engine.compute` takes them, checked as /v1/loss checks them: a catalogue
    loss's by its model, every option filled in; a library metric's as given, for the engine's
    `bind` to check (its name may set one: `error@0.7`). Raises pydantic's ValidationError."""
    if convention in LIBRARIES:
        return dict(options)
    return options_model(resolve(loss)).model_validate(options).model_dump()
