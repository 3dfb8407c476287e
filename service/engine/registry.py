"""The catalogue: one entry per loss, built from the loss function itself.

`@register` reads a loss's name, aliases, docstring sections (summary, Formula, Shapes, Follows)
and keyword-only options (types, defaults and `Annotated` markers) so that nothing about a loss
is written down twice.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.engine.conventions import Convention
from service.engine.errors import LossInputError, UnknownLossError
from service.engine.expectation import ExpectedFunction
from service.engine.options import Aliases, Doc, OnlyUnder, PerSample, Range
from service.engine.reduction import Array, LossValues


class LossFunction(Protocol):
    __name__: str
    __doc__: str | None

    def __call__(
        self, predictions: Array, labels: np.ndarray[Any, Any], convention: Convention, /, **options: Any
    ) -> LossValues: ...


@dataclass(frozen=True)
class OptionSpec:
    name: str
    type: Any
    default: Any
    doc: str
    range: Range | None = None
    only_under: Convention | None = None
    aliases: tuple[str, ...] = ()
    per_sample: bool = False

    def type_name(self) -> str:
        return _type_name(self.type)


@dataclass(frozen=True)
class LossSpec:
    name: str
    aliases: tuple[str, ...]
    function: LossFunction
    summary: str
    formula: str
    shapes: str
    follows: str
    options: tuple[OptionSpec, ...]
    class_labels: bool = False
    whole_batch: bool = False
    separable_with: tuple[str, ...] = ()
    reads_logits: bool = False
    # The loss's expected value under a belief about the label (`expectation`), and its formula.
    expected: ExpectedFunction | None = None
    expected_formula: str = ""
    # From `options`, once: their names, those that have aliases, and the per-sample ones (sorted).
    option_names: frozenset[str] = field(init=False, repr=False, compare=False)
    aliased: tuple[OptionSpec, ...] = field(init=False, repr=False, compare=False)
    per_sample_options: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "option_names", frozenset(o.name for o in self.options))
        object.__setattr__(self, "aliased", tuple(o for o in self.options if o.aliases))
        object.__setattr__(self, "per_sample_options", tuple(sorted(o.name for o in self.options if o.per_sample)))

    def reads_whole_batch(self, bound: Mapping[str, Any]) -> bool:
        """Whether a sample's loss depends on the rest of the batch under these bound options: a
        `whole_batch` loss unless one of its `separable_with` options is given (not None)."""
        return self.whole_batch and all(bound.get(name) is None for name in self.separable_with)

    def bind(self, options: Mapping[str, Any] | None, convention: Convention) -> dict[str, Any]:
        """Check option names, ranges and conventions; return every option with its value."""
        given = dict(options or {})
        for option in self.aliased:
            for alias in option.aliases:
                if alias in given:
                    if option.name in given:
                        raise LossInputError(f"options.{alias}", f"is an alias of {option.name!r}; give only one")
                    given[option.name] = given.pop(alias)
        if not self.option_names.issuperset(given):
            unknown = sorted(set(given) - self.option_names)
            valid = ", ".join(o.name for o in self.options) or "none"
            raise LossInputError(f"options.{unknown[0]}", f"is not an option of {self.name}; its options: {valid}")
        bound = {}
        for option in self.options:
            value = given.get(option.name, option.default)
            if value != option.default and option.only_under not in (None, convention):
                raise LossInputError(
                    f"options.{option.name}",
                    f"exists only under convention {option.only_under!r}; this request uses {convention!r}",
                )
            if option.range is not None and value is not None:
                _check_range(option, value)
            bound[option.name] = value
        return bound


def _check_range(option: OptionSpec, value: Any) -> None:
    r = option.range
    if r is None or value is None:
        return
    values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    for v in values:
        if (
            (r.ge is not None and v < r.ge)
            or (r.gt is not None and v <= r.gt)
            or (r.le is not None and v > r.le)
            or (r.lt is not None and v >= r.lt)
        ):
            raise LossInputError(f"options.{option.name}", f"must be {r.describe()}, got {v!r}")


_REGISTRY: dict[str, LossSpec] = {}
_LOOKUP: dict[str, str] = {}


def register(
    name: str,
    *,
    aliases: tuple[str, ...] = (),
    class_labels: bool = False,
    whole_batch: bool = False,
    separable_with: tuple[str, ...] = (),
    reads_logits: bool = False,
) -> Callable[[Callable[..., LossValues]], Callable[..., LossValues]]:
    """Add a loss function to the catalogue under `name` and its `aliases`.

    `class_labels`: the labels are integer class indices, passed to the function as `np.intp`.
    `whole_batch`: a sample's loss depends on the rest of the batch (classes read from all its
    labels, pairs with every other sample), so the batch is never split: not across threads, not
    into a client's chunks, not into a dataset's record batches. `separable_with`: options that,
    once given, make each sample's loss depend on its own rows alone, so that the batch splits exactly.
    `reads_logits`: the predictions are logits (or log-probabilities) whatever the options say, as
    a calibration fit and an estimate's belief must read them.
    """

    def decorate(function: Callable[..., LossValues]) -> Callable[..., LossValues]:
        spec = spec_of(name, function, aliases=aliases, class_labels=class_labels, whole_batch=whole_batch)
        unknown = set(separable_with) - {option.name for option in spec.options}
        if unknown:
            raise TypeError(f"{name}: separable_with names no option of it: {sorted(unknown)}")
        spec = dataclasses.replace(spec, separable_with=separable_with, reads_logits=reads_logits)
        for key in (name, *aliases):
            if key in _LOOKUP:
                raise ValueError(f"loss name {key!r} registered twice")
            _LOOKUP[key] = name
        _REGISTRY[name] = spec
        return function

    return decorate


def expectation(name: str) -> Callable[[ExpectedFunction], ExpectedFunction]:
    """Attach `function` to the registered loss `name` as its expected loss (`expectation.ExpectedFunction`);
    the Formula section of its docstring is the catalogue's `expected_formula`."""

    def decorate(function: ExpectedFunction) -> ExpectedFunction:
        formula = _sections(inspect.cleandoc(function.__doc__ or "")).get("Formula", "")
        if not formula:
            raise TypeError(f"{function.__name__}: docstring needs a Formula section")
        spec = _REGISTRY[name]
        if spec.expected is not None:
            raise ValueError(f"{name} has an expected loss already")
        _REGISTRY[name] = dataclasses.replace(spec, expected=function, expected_formula=formula)
        return function

    return decorate


def spec_of(
    name: str,
    function: Callable[..., LossValues],
    *,
    aliases: tuple[str, ...] = (),
    class_labels: bool = False,
    whole_batch: bool = False,
) -> LossSpec:
    """The description of a loss function, read from its docstring and keyword-only options
    (also used for the library metrics of `service.engine.libraries`, which are not catalogued)."""
    doc = inspect.cleandoc(function.__doc__ or "")
    sections = _sections(doc)
    spec = LossSpec(
        name=name,
        aliases=aliases,
        function=typing.cast(LossFunction, function),
        summary=doc.splitlines()[0] if doc else name,
        formula=sections.get("Formula", ""),
        shapes=sections.get("Shapes", ""),
        follows=sections.get("Follows", ""),
        options=_options_of(function),
        class_labels=class_labels,
        whole_batch=whole_batch,
    )
    if not (spec.formula and spec.shapes and spec.follows):
        raise TypeError(f"{function.__name__}: docstring needs Formula, Shapes and Follows sections")
    return spec


def _sections(doc: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in doc.splitlines()[1:]:
        if line and not line[0].isspace() and line.endswith(":"):
            current = sections.setdefault(line[:-1], [])
        elif current is not None:
            current.append(line)
    return {key: inspect.cleandoc("\n".join(lines)) for key, lines in sections.items()}


def _options_of(function: Callable[..., Any]) -> tuple[OptionSpec, ...]:
    hints = typing.get_type_hints(function, include_extras=True)
    options = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        hint = hints[parameter.name]
        base, metadata = hint, ()
        if typing.get_origin(hint) is typing.Annotated:
            base, *extra = typing.get_args(hint)
            metadata = tuple(extra)
        doc_marker = _marker(metadata, Doc)
        if doc_marker is None:
            raise TypeError(f"{function.__name__}: option {parameter.name!r} needs a Doc(...)")
        options.append(
            OptionSpec(
                name=parameter.name,
                type=base,
                default=parameter.default,
                doc=doc_marker.text,
                range=_marker(metadata, Range),
                only_under=getattr(_marker(metadata, OnlyUnder), "convention", None),
                aliases=getattr(_marker(metadata, Aliases), "names", ()),
                per_sample=_marker(metadata, PerSample) is not None,
            )
        )
    return tuple(options)


M = typing.TypeVar("M")


def _marker(metadata: tuple[Any, ...], kind: type[M]) -> M | None:
    return next((item for item in metadata if isinstance(item, kind)), None)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    return str(annotation)


def resolve(name: str) -> LossSpec:
    try:
        return _REGISTRY[_LOOKUP[name]]
    except KeyError:
        raise UnknownLossError(name, sorted(_REGISTRY)) from None


def catalogue() -> tuple[LossSpec, ...]:
    return tuple(_REGISTRY[name] for name in sorted(_REGISTRY))
