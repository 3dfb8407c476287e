"""Per-segment accumulators that merge across record batches and Dask partitions alike: exact
totals (`Tally`), and a log-bucket sketch of the per-sample values for percentiles (`Sketch`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.engine import (
    LossResult,
    Totals,
)

# Percentiles are read from buckets whose bounds grow by GAMMA: any value is within this relative
# error of its bucket's representative (DDSketch's construction, vectorised).
SKETCH_ACCURACY = 0.005


_GAMMA = (1 + SKETCH_ACCURACY) / (1 - SKETCH_ACCURACY)


_LOG_GAMMA = math.log(_GAMMA)


_TINY = 1e-300  # magnitudes below count as zero


QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


@dataclass
class Sketch:
    """Counts of values by signed log bucket: mergeable, bounded by the range of magnitudes seen."""

    counts: dict[int, int] = field(default_factory=dict)
    zeros: int = 0

    def add(self, values: np.ndarray[Any, Any]) -> None:
        values = values.ravel().astype(np.float64, copy=False)
        magnitude = np.abs(values)
        small = magnitude < _TINY
        self.zeros += int(small.sum())
        index = np.ceil(np.log(magnitude[~small]) / _LOG_GAMMA).astype(np.int64)
        signed = np.where(values[~small] > 0, index + (1 << 20), -(index + (1 << 20)))
        keys, counts = np.unique(signed, return_counts=True)
        for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
            self.counts[key] = self.counts.get(key, 0) + count

    def merge(self, other: Sketch) -> None:
        self.zeros += other.zeros
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count

    def quantile(self, q: float) -> float:
        """The value at rank q (0..1), within SKETCH_ACCURACY relative error."""
        total = self.zeros + sum(self.counts.values())
        if not total:
            return math.nan
        entries = [(self._value(key), count) for key, count in self.counts.items()] + [(0.0, self.zeros)]
        entries.sort()
        rank, seen = q * (total - 1), 0
        for value, count in entries:
            seen += count
            if seen > rank:
                return value
        return entries[-1][0]

    @staticmethod
    def _value(key: int) -> float:
        index = abs(key) - (1 << 20)
        # The bucket (gamma^(i-1), gamma^i] is represented by the point of equal relative error.
        value = 2 * _GAMMA**index / (_GAMMA + 1)
        return value if key > 0 else -value


@dataclass
class Tally(Totals):
    """A dataset's or a segment's totals (`Totals`: they combine as the client's chunks do), with
    its rows and, for segments, the sketch of its per-sample values."""

    rows: int = 0
    sketch: Sketch = field(default_factory=Sketch)

    def add_batch(self, result: LossResult, rows: int, *, sketch: bool = False) -> None:
        """`sketch`: also keep the per-sample values' percentiles (segments report them; the whole
        dataset does not, and sketching costs a sort of every batch)."""
        self.add(result)
        self.rows += rows
        if sketch:
            self.sketch.add(result.per_sample)

    def merge(self, other: Tally) -> None:
        self.add(other)
        self.rows += other.rows
        self.sketch.merge(other.sketch)
