"""What a dataset evaluation is asked (`Spec`), what it answers (`DatasetResult`), and the error it
raises for a dataset it cannot evaluate (`DatasetError`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.engine import (
    Aggregate,
    Convention,
    DType,
)

# Segments kept at most: each holds its totals and a sketch (up to a few thousand buckets), so a
# key column with a value per row would otherwise grow with the dataset.
DEFAULT_MAX_GROUPS = 10_000


class DatasetError(ValueError):
    """A dataset that cannot be evaluated; the message names the file, row and column where it can."""


@dataclass(frozen=True)
class Spec:
    """What to compute: the loss and the columns it reads."""

    loss: str
    predictions: str
    labels: str
    weight: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    dtype: DType = "float64"
    convention: Convention = "keras"
    group_by: tuple[str, ...] = ()
    max_groups: int = DEFAULT_MAX_GROUPS

    @property
    def columns(self) -> list[str]:
        names = [self.predictions, self.labels, *([self.weight] if self.weight else []), *self.group_by]
        return list(dict.fromkeys(names))


@dataclass
class DatasetResult:
    loss: str
    mean: float
    sum: float
    count: int
    denominator: float
    rows: int
    dtype: str
    convention: str
    groups: list[dict[str, Any]] | None = None
    aggregate: Aggregate = "mean"

    def as_dict(self) -> dict[str, Any]:
        out = {key: value for key, value in vars(self).items() if key != "groups"}
        if self.groups is not None:
            out["groups"] = self.groups
        return out
