"""The answer for one loss over one batch, and how the answers for parts of a batch combine.

`LossResult` is the one shape of a loss's answer: the engine returns it, the HTTP layer writes it
as JSON (`answer`), the client reads it back, the CLI prints it. `combine` and `Totals` join the
answers for chunks of one batch (the client's requests, the datasets' record batches, Dask's
partitions) into the answer for the whole: the sum of the sums over the sum of the denominators,
with aggregate root_mean its square root, taken only once they are combined, and with aggregate
sum the sum of the sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# How `mean` follows from `sum` and `denominator`: their quotient, its square root (RMSE-type
# metrics of the library conventions, whose per_sample values are weighted squared errors), or
# `sum` itself (LightGBM's gamma_deviance, a weighted sum: the library divides by nothing; the
# denominator is reported but unused). A new kind is one name here and one entry in AGGREGATES.
Aggregate = Literal["mean", "root_mean", "sum"]


def _quotient(total: float, denominator: float) -> float:
    """`total / denominator`; nothing counted (denominator 0) gives 0, as Keras's divide_no_nan does
    for a batch whose every target is ignored."""
    return total / denominator if denominator else 0.0


AGGREGATES: dict[Aggregate, Callable[[float, float], float]] = {
    "mean": _quotient,
    "root_mean": lambda total, denominator: math.sqrt(_quotient(total, denominator)),
    # With nothing counted a sum is still the sum.
    "sum": lambda total, _denominator: total,
}


def mean_of(total: float, denominator: float, aggregate: Aggregate = "mean") -> float:
    """The mean an `aggregate` makes of a (combined) sum and denominator: `total / denominator`, its
    square root for root_mean, `total` itself for sum. Nothing counted (denominator 0) gives 0,
    except for a sum, which is the sum."""
    return AGGREGATES[aggregate](total, denominator)


@dataclass(frozen=True)
class LossResult:
    """One loss over one batch.

    `per_sample`: the framework's unreduced loss, sample weights applied, in the working dtype
    from the engine and float64 once it crossed the wire. `denominator`: what `mean` divides
    `sum` by (values, non-ignored targets or summed weights). `loss`: the catalogue name, or the
    metric as its library names it.
    """

    loss: str
    per_sample: np.ndarray[Any, Any]
    mean: float
    sum: float
    count: int
    denominator: float
    dtype: str
    convention: str
    aggregate: Aggregate = "mean"
    # Each sample's share of `sum` and of `denominator` (float64, one per sample along the first
    # axis), when the engine is asked for them (`compute(..., shares=True)`): over any subset of
    # the samples they add up to the `sum` and `denominator` of that subset alone, so a part's
    # mean is `mean_of` their sums. None otherwise; never part of the answer.
    sample_sums: np.ndarray[Any, np.dtype[np.float64]] | None = None
    sample_denominators: np.ndarray[Any, np.dtype[np.float64]] | None = None

    def answer(self) -> dict[str, Any]:
        """The fields of the JSON answer, in its order; float32 values widen exactly to float64,
        so a reader gets the framework's float32 number."""
        return {
            "loss": self.loss,
            "per_sample": self.per_sample.astype(np.float64, copy=False),
            "mean": self.mean,
            "sum": self.sum,
            "count": self.count,
            "denominator": self.denominator,
            "aggregate": self.aggregate,
            "dtype": self.dtype,
            "convention": self.convention,
        }

    @classmethod
    def read(cls, answer: Any) -> LossResult:
        """A result from its JSON answer (or an npz answer's arrays), `per_sample` as float64."""
        return cls(
            loss=answer["loss"],
            per_sample=np.asarray(answer["per_sample"], dtype=np.float64),
            mean=float(answer["mean"]),
            sum=float(answer["sum"]),
            count=int(answer["count"]),
            denominator=float(answer["denominator"]),
            dtype=answer["dtype"],
            convention=answer["convention"],
            aggregate=answer.get("aggregate", "mean"),
        )


@dataclass
class Totals:
    """What adds up across the parts of a batch: sums, denominators and counts."""

    sum: float = 0.0
    denominator: float = 0.0
    count: int = 0
    aggregate: Aggregate = "mean"

    def add(self, part: LossResult | Totals) -> None:
        self.sum += part.sum
        self.denominator += part.denominator
        self.count += part.count
        if part.count:
            self.aggregate = part.aggregate

    def mean(self) -> float:
        return mean_of(self.sum, self.denominator, self.aggregate)


def combine(parts: Sequence[LossResult]) -> LossResult:
    """The chunks of one batch as one result: per-sample values in order, the mean from the summed
    sums and denominators. One part is returned as it is (its mean is the engine's, in its dtype)."""
    if len(parts) == 1:
        return parts[0]
    totals = Totals()
    for part in parts:
        totals.add(part)
    first = parts[0]
    return LossResult(
        loss=first.loss,
        per_sample=np.concatenate([part.per_sample for part in parts]),
        mean=totals.mean(),
        sum=totals.sum,
        count=totals.count,
        denominator=totals.denominator,
        dtype=first.dtype,
        convention=first.convention,
        aggregate=first.aggregate,
    )
