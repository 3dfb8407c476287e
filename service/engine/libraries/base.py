"""Library metrics: how a boosting library's evaluation metric is declared, named and resolved.

A metric is a function declared with `@metric(library, name, ...)`, written like a catalogue loss
(`registry.register`): positional `(predictions, labels, convention, /)`, keyword-only options
with `Annotated[..., Doc(...)]` markers named as the library names its parameters, a docstring
with Formula, Shapes and Follows sections, and a `LossValues` of unweighted values as result.
The reduction is the libraries' own (`reduction.reduce_library`): sum(w l) / sum(w), its
square root for `aggregate="root_mean"`, or the weighted sum itself for `aggregate="sum"`.
A metric may have `aliases` (the other names the library accepts for it; answers carry `name`),
name itself its library's way (`describe`), hold labels and weights in float32 as its library
does (`float32_targets`), and sum its weights its library's way (`weight_sum`).
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.engine.conventions import LIBRARIES, Convention, Library
from service.engine.errors import LossInputError
from service.engine.reduction import Aggregate, LossValues
from service.engine.registry import LossSpec, OptionSpec, resolve, spec_of

# What the library's `predict` returns is the default; `margin: true` says the predictions are
# raw scores, to which the metric applies its objective's link first.
MARGIN_DOC = "predictions are raw margins (predict(output_margin=True)); the metric applies its objective's link"
# A metric name as a library writes it, with an optional "@parameter" (XGBoost's error@0.7) or
# ":key=value;key=value" (CatBoost's Quantile:alpha=0.3).
NAME_PATTERN = (
    r"^[A-Za-z][A-Za-z0-9_\-]{0,63}(@[0-9eE+\-.]{1,32}|:[A-Za-z_]{1,32}=[^;]{1,32}(;[A-Za-z_]{1,32}=[^;]{1,32}){0,7})?$"
)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

LIBRARY_TITLES: dict[Library, str] = {"xgboost": "XGBoost", "lightgbm": "LightGBM", "catboost": "CatBoost"}
# How a library writes parameters into a metric's name: XGBoost and LightGBM `name@value` (one
# parameter), CatBoost `Name:key=value;key=value` (any of the metric's parameters, by name).
SEPARATORS: dict[Library, str] = {"xgboost": "@", "lightgbm": "@", "catboost": ":"}


_PARAMETERS = re.compile("[@:]")


def base_name(name: str) -> str:
    """The metric's name without its parameters: `error` of error@0.7, `Quantile` of Quantile:alpha=0.3."""
    return _PARAMETERS.split(name, maxsplit=1)[0]


@dataclass(frozen=True)
class LibraryMetric:
    """One evaluation metric of one library.

    `spec`: the metric function's description (options, Formula, Shapes, Follows), built as a
    catalogue entry is but not catalogued. `loss`: the catalogue loss whose formula it computes
    with the library's constants, or None where none is the same function. `parameter`: the
    option that `name@value` sets (XGBoost's `error@t`, `tweedie-nloglik@rho`); `link`: what
    `margin: true` applies; `precision`: how the library computes it.
    """

    library: Library
    name: str
    spec: LossSpec
    loss: str | None
    aggregate: Aggregate
    link: str
    precision: str
    parameter: str | None = None
    # The library's name of a configured metric: with "@value" when the parameter is not its default.
    always_suffixed: bool = False
    # Other names the library accepts for this metric (LightGBM's `mse` for `l2`); answers say `name`.
    aliases: tuple[str, ...] = ()
    # The library's name of a configured metric where it is not name@value (CatBoost's descriptions).
    describe: Callable[[Mapping[str, Any]], str] | None = None
    # The library holds labels and weights as float32 (CatBoost's `float` arrays, LightGBM's
    # label_t): `compute` rounds them to float32 before the metric sees them, whatever the working
    # dtype, and refuses values beyond float32's range.
    float32_targets: bool = False
    # How the library sums the weights the mean divides by, when not in float64 (None: float64).
    weight_sum: Callable[[NDArray[np.floating]], float] | None = None

    def forms(self) -> list[str]:
        """How the name may be written: `error`, `error@<threshold>`, `Quantile:alpha=<alpha>`."""
        if self.parameter is None:
            return [self.name]
        separator = SEPARATORS[self.library]
        value = f"{self.parameter}=<{self.parameter}>" if separator == ":" else f"<{self.parameter}>"
        suffixed = f"{self.name}{separator}{value}"
        return [suffixed] if self.always_suffixed else [self.name, suffixed]

    def display_name(self, bound: Mapping[str, Any]) -> str:
        if self.describe is not None:
            return self.describe(bound)
        if self.parameter is None:
            return self.name
        value = bound[self.parameter]
        option = next(o for o in self.spec.options if o.name == self.parameter)
        if value == option.default and not self.always_suffixed:
            return self.name
        return f"{self.name}@{value:g}"  # C++ ostream's default format, as XGBoost prints it


_TABLES: dict[Library, dict[str, LibraryMetric]] = {library: {} for library in LIBRARIES}
_ALIASES: dict[Library, dict[str, str]] = {library: {} for library in LIBRARIES}

F = typing.TypeVar("F", bound=Callable[..., LossValues])


def metric(
    library: Library,
    name: str,
    *,
    loss: str | None,
    link: str,
    precision: str,
    aggregate: Aggregate = "mean",
    parameter: str | None = None,
    always_suffixed: bool = False,
    class_labels: bool = False,
    aliases: tuple[str, ...] = (),
    describe: Callable[[Mapping[str, Any]], str] | None = None,
    float32_targets: bool = False,
    weight_sum: Callable[[NDArray[np.floating]], float] | None = None,
) -> Callable[[F], F]:
    """Add a metric to `library`'s table under the name the library gives it."""

    def decorate(function: F) -> F:
        spec = spec_of(f"{library}:{name}", function, class_labels=class_labels)
        names = {option.name for option in spec.options}
        if "margin" not in names:
            raise TypeError(f"{function.__name__}: a library metric takes the option `margin`")
        if parameter is not None and parameter not in names:
            raise TypeError(f"{function.__name__}: `{name}@...` sets {parameter!r}, which is no option")
        if loss is not None:
            resolve(loss)  # the catalogue loss it maps onto exists
        for key in (name, *aliases):
            if key in _TABLES[library] or key in _ALIASES[library]:
                raise ValueError(f"{library} metric {key!r} declared twice")
            _ALIASES[library][key] = name
        _TABLES[library][name] = LibraryMetric(
            library=library,
            name=name,
            spec=spec,
            loss=loss,
            aggregate=aggregate,
            link=link,
            precision=precision,
            parameter=parameter,
            always_suffixed=always_suffixed,
            aliases=aliases,
            describe=describe,
            float32_targets=float32_targets,
            weight_sum=weight_sum,
        )
        return function

    return decorate


def metrics(library: Library | None = None) -> tuple[LibraryMetric, ...]:
    """Every declared metric (of one library), in the order of the library's table."""
    libraries = LIBRARIES if library is None else (library,)
    return tuple(m for lib in libraries for m in _TABLES[lib].values())


def accepted(library: Library) -> str:
    """The names a library convention accepts, as a refusal lists them."""
    return ", ".join(form for m in _TABLES[library].values() for form in m.forms()) or "none yet"


def is_library_metric(name: str) -> bool:
    return find(name) is not None


def find(name: str) -> LibraryMetric | None:
    """The first library's metric that `name` (with or without its parameters) names, by name or alias."""
    base = base_name(name)
    for library in LIBRARIES:
        if base in _ALIASES[library]:
            return _TABLES[library][_ALIASES[library][base]]
    return None


def canonical(library: Library, name: str) -> str:
    """The name the library's table keeps for `name` (an alias resolved), or `name` if none."""
    base = base_name(name)
    return _ALIASES[library].get(base, base)


def lookup(convention: Convention, loss: str) -> tuple[LibraryMetric, dict[str, Any]]:
    """The metric `loss` names under a library convention, and the option its "@value" sets."""
    library = typing.cast(Library, convention)
    title = LIBRARY_TITLES[library]
    base, at, suffix = loss.partition(SEPARATORS[library])
    key = _ALIASES[library].get(base)
    found = None if key is None else _TABLES[library][key]
    if found is None:
        hint = ""
        if _is_catalogue_name(loss):
            hint = f" ({shown(loss)} is a catalogue loss: it takes convention keras or torch)"
        else:
            bare = base_name(loss)
            others = [lib for lib in LIBRARIES if lib != library and bare in _ALIASES[lib]]
            if others:
                hint = f" ({shown(bare)} is {LIBRARY_TITLES[others[0]]}'s metric: convention {others[0]!r})"
        raise LossInputError(
            "loss", f"{shown(loss)} is no {title} metric{hint}; convention {library!r} accepts: {accepted(library)}"
        )
    if not at:
        return found, {}
    if at == ":":
        return found, _described_parameters(found, loss, suffix)
    if found.parameter is None:
        raise LossInputError("loss", f"{title}'s {found.name} takes no @parameter, got {shown(loss)}")
    if not _NUMBER.fullmatch(suffix) or not math.isfinite(value := float(suffix)):
        raise LossInputError("loss", f"{shown(loss)}: the part after @ must be a number ({found.parameter})")
    option = next(o for o in found.spec.options if o.name == found.parameter)
    if option.type is int:
        if value != int(value):
            raise LossInputError("loss", f"{shown(loss)}: the part after @ must be an integer ({found.parameter})")
        return found, {found.parameter: int(value)}
    return found, {found.parameter: value}


def bind(convention: Convention, loss: str, options: Mapping[str, Any] | None) -> tuple[LibraryMetric, dict[str, Any]]:
    """Resolve `loss` under a library convention and check its options: names, types and ranges
    (the API passes library options through unchecked; the engine owns their validation)."""
    found, from_name = lookup(convention, loss)
    given = dict(options or {})
    for key in from_name:
        if key in given:
            raise LossInputError(f"options.{key}", f"is also set by the name {shown(loss)}; give it once")
    given.update(from_name)
    by_name = {o.name: o for o in found.spec.options}
    for key, value in given.items():
        option = by_name.get(key)
        if option is None:
            valid = ", ".join(by_name)
            raise LossInputError(
                f"options.{key}",
                f"is not an option of {LIBRARY_TITLES[found.library]}'s {found.name}; its options: {valid}",
            )
        _check_type(option, value)
    if found.always_suffixed and found.parameter not in given:
        separator = SEPARATORS[found.library]
        value = f"{found.parameter}={_default_of(found)}" if separator == ":" else _default_of(found)
        raise LossInputError(
            "loss",
            f"{LIBRARY_TITLES[found.library]} writes this metric {found.forms()[0]} "
            f"(e.g. {found.name}{separator}{value}); give it in the name or as options.{found.parameter}",
        )
    return found, found.spec.bind(given, convention)


def _described_parameters(found: LibraryMetric, loss: str, suffix: str) -> dict[str, float]:
    """CatBoost's `Name:key=value;key=value`: each key one of the metric's parameters, once, each
    value a number (an integer for an integer parameter)."""
    title = LIBRARY_TITLES[found.library]
    types = {o.name: o.type for o in found.spec.options if o.name != "margin"}
    names = list(types)
    if not names:
        raise LossInputError("loss", f"{title}'s {found.name} takes no parameters, got {shown(loss)}")
    parameters: dict[str, float] = {}
    for part in suffix.split(";"):
        key, equals, text = part.partition("=")
        if not equals or not _KEY.fullmatch(key):
            raise LossInputError(
                "loss", f"{shown(loss)}: write the parameters as {found.name}:key=value;key=value, got {shown(part)}"
            )
        if key not in names:
            raise LossInputError(
                "loss", f"{shown(key)} is no parameter of {title}'s {found.name}; its parameters: {', '.join(names)}"
            )
        if key in parameters:
            raise LossInputError("loss", f"{shown(loss)} sets {key} twice")
        if not _NUMBER.fullmatch(text) or not math.isfinite(value := float(text)):
            raise LossInputError("loss", f"{shown(loss)}: {key} must be a number, got {shown(text)}")
        if types[key] is int:
            if value != int(value):
                raise LossInputError("loss", f"{shown(loss)}: {key} must be an integer, got {shown(text)}")
            parameters[key] = int(value)
        else:
            parameters[key] = value
    return parameters


def _default_of(found: LibraryMetric) -> str:
    option = next(o for o in found.spec.options if o.name == found.parameter)
    return f"{option.default:g}"


def _check_type(option: OptionSpec, value: Any) -> None:
    accepted_types = _types(option.type)
    if isinstance(value, bool):
        ok = bool in accepted_types
    elif isinstance(value, int | float):
        ok = float in accepted_types or (int in accepted_types and isinstance(value, int))
        if ok and not math.isfinite(value):
            raise LossInputError(f"options.{option.name}", f"must be a finite number, got {value!r}")
    elif isinstance(value, list):
        ok = list in accepted_types and bool(value) and all(_is_number(v) for v in value)
    elif isinstance(value, str):
        ok = value in _literals(option.type)
    else:
        ok = False
    if not ok:
        raise LossInputError(f"options.{option.name}", f"must be {option.type_name()}, got {shown(value)}")


def _literals(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()


def _types(annotation: Any) -> set[Any]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list:
        return {list}
    if args and typing.get_origin(annotation) is not list:
        return {t for a in args for t in _types(a)}
    return {annotation}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_catalogue_name(name: str) -> bool:
    try:
        resolve(name)
    except LookupError:
        return False
    return True


def shown(value: Any, limit: int = 64) -> str:
    """A value quoted for a message, clipped."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
