"""Metadata that a loss function attaches to its keyword-only options with `typing.Annotated`.

The engine stays free of Pydantic; the HTTP layer reads these markers to build each loss's
options schema, so a loss's signature is the single source of its options.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.engine.conventions import Convention


@dataclass(frozen=True)
class Range:
    """Inclusive (`ge`, `le`) or exclusive (`gt`, `lt`) numeric bounds."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        parts = []
        if self.ge is not None:
            parts.append(f">= {self.ge:g}")
        if self.gt is not None:
            parts.append(f"> {self.gt:g}")
        if self.le is not None:
            parts.append(f"<= {self.le:g}")
        if self.lt is not None:
            parts.append(f"< {self.lt:g}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Doc:
    """One-line description of an option, shown in the catalogue and the OpenAPI."""

    text: str


@dataclass(frozen=True)
class OnlyUnder:
    """The option exists in one framework only; a non-default value under the other is refused."""

    convention: Convention


@dataclass(frozen=True)
class PerSample:
    """The option holds one value per sample (a list of N): a batch computed in blocks of samples
    hands each block its own slice of it."""


@dataclass(frozen=True)
class Aliases:
    """Other names accepted for the option (e.g. Keras's `ignore_class` for `ignore_index`)."""

    names: tuple[str, ...]


Probability = Range(ge=0.0, le=1.0)
NonNegative = Range(ge=0.0)
Positive = Range(gt=0.0)
