"""OpenTelemetry's base-2 exponential histogram, filled a whole array at a time (NumPy; no SDK).

The SDK records one value per Python call, seconds for a batch of a million losses,
and its API refuses negative values (Keras's cosine similarity loss is negative), which OTLP's
data model holds in the negative buckets. This records a batch with a few NumPy passes (a small
one value by value in Python, cheaper than NumPy's per-call cost). It maps a value to its bucket
as the SDK's `LogarithmMapping` (scale > 0) and `ExponentMapping` (scale <= 0) do, starts at the
SDK's largest scale (20) and lowers the scale, as the SDK does, until each side (positive and
negative values) fits in 160 buckets, the SDK's default `max_size`. tests/monitoring/test_otlp.py checks it
bucket for bucket against the SDK's own aggregation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAX_SIZE = 160
MAX_SCALE = 20
MIN_SCALE = -10
SMALL = 16  # batches up to this size are recorded value by value
_MIN_NORMAL = float(np.finfo(np.float64).tiny)
_MIN_NORMAL_EXPONENT = -1022
_MAX_NORMAL_EXPONENT = 1023
_LOG2_E = 1 / math.log(2)


def bucket_index(magnitude: float, scale: int) -> int:
    """The bucket of a positive value at `scale`: bucket i holds (base**i, base**(i+1)],
    base = 2**(2**-scale), computed as the SDK's mappings compute it."""
    mantissa, exponent = math.frexp(magnitude)  # value = m * 2**e, m in [0.5, 1)
    exponent -= 1  # IEEE 754's: value = 1.f * 2**exponent
    if scale <= 0:
        if magnitude < _MIN_NORMAL:
            return _MIN_NORMAL_EXPONENT >> -scale
        return (exponent - (mantissa == 0.5)) >> -scale
    if magnitude <= _MIN_NORMAL:
        return (_MIN_NORMAL_EXPONENT << scale) - 1
    if mantissa == 0.5:
        return (exponent << scale) - 1
    return min(math.floor(math.log(magnitude) * math.ldexp(_LOG2_E, scale)), ((_MAX_NORMAL_EXPONENT + 1) << scale) - 1)


def bucket_indices(magnitudes: np.ndarray[Any, Any], scale: int) -> np.ndarray[Any, Any]:
    """`bucket_index` of each value of an array of positive values."""
    if not magnitudes.size:
        return np.zeros(0, dtype=np.int64)
    mantissas, exponents = np.frexp(magnitudes)
    power_of_two = mantissas == 0.5
    exact = power_of_two.any()
    exponent = exponents.astype(np.int64) - 1
    subnormal = magnitudes.min() <= _MIN_NORMAL
    if scale <= 0:
        indices = (exponent - power_of_two) >> -scale
        return np.where(magnitudes < _MIN_NORMAL, _MIN_NORMAL_EXPONENT >> -scale, indices) if subnormal else indices
    with np.errstate(divide="ignore"):
        logs = np.floor(np.log(magnitudes) * math.ldexp(_LOG2_E, scale))
    indices = np.minimum(logs, ((_MAX_NORMAL_EXPONENT + 1) << scale) - 1).astype(np.int64)
    if exact:
        indices = np.where(power_of_two, (exponent << scale) - 1, indices)
    if subnormal:
        indices = np.where(magnitudes <= _MIN_NORMAL, (_MIN_NORMAL_EXPONENT << scale) - 1, indices)
    return indices  # type: ignore[no-any-return]


def _change(low: int, high: int) -> int:
    """How many scales lower the buckets low..high fit in MAX_SIZE (the SDK's rule)."""
    change = 0
    while high - low >= MAX_SIZE:
        low, high, change = low >> 1, high >> 1, change + 1
    return change


class Buckets:
    """The buckets of one sign: counts[i] is bucket offset + i."""

    __slots__ = ("counts", "offset")

    def __init__(self) -> None:
        self.offset = 0
        self.counts = np.zeros(0, dtype=np.int64)

    def change_for(self, low: int, high: int) -> int:
        """The scale change these buckets need to also hold buckets low..high."""
        if self.counts.size:
            low, high = min(low, self.offset), max(high, self.offset + self.counts.size - 1)
        return _change(low, high)

    def downscale(self, change: int) -> None:
        if change and self.counts.size:
            indices = (self.offset + np.arange(self.counts.size)) >> change
            self.offset = int(indices[0])
            merged = np.zeros(int(indices[-1]) - self.offset + 1, dtype=np.int64)
            np.add.at(merged, indices - self.offset, self.counts)
            self.counts = merged

    def _cover(self, low: int, high: int) -> None:
        """Grow the buckets to cover low..high."""
        if not self.counts.size:
            self.offset, self.counts = low, np.zeros(high - low + 1, dtype=np.int64)
            return
        end = self.offset + self.counts.size - 1
        if low < self.offset or high > end:
            start = min(low, self.offset)
            grown = np.zeros(max(high, end) - start + 1, dtype=np.int64)
            grown[self.offset - start : self.offset - start + self.counts.size] = self.counts
            self.offset, self.counts = start, grown

    def add(self, indices: np.ndarray[Any, Any]) -> None:
        low, high = int(indices.min()), int(indices.max())
        self._cover(low, high)
        self.counts[low - self.offset : high - self.offset + 1] += np.bincount(indices - low)

    def bump(self, index: int) -> None:
        self._cover(index, index)
        self.counts[index - self.offset] += 1

    def as_list(self) -> list[int]:
        return self.counts.tolist()


class ExponentialHistogram:
    """One series' counts, sum, min and max since it began (or since it was last taken)."""

    __slots__ = ("count", "max", "min", "negative", "positive", "scale", "sum", "zero_count")

    def __init__(self) -> None:
        self.scale = MAX_SCALE
        self.count = 0
        self.zero_count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.positive = Buckets()
        self.negative = Buckets()

    def _rescale(self, change: int) -> None:
        change = min(change, self.scale - MIN_SCALE)
        self.positive.downscale(change)
        self.negative.downscale(change)
        self.scale -= change

    def record(self, values: np.ndarray[Any, Any]) -> None:
        """Every value of a finite float64 array (NaN and infinities never reach the metrics)."""
        if values.size <= SMALL:
            for value in values.tolist():
                self.record_one(value)
            return
        low, high = float(values.min()), float(values.max())
        positive = values if low > 0 else values[values > 0]
        negative = -values[values < 0] if low < 0 else values[:0]
        # The scale from the smallest and largest magnitudes (the mapping is monotonic), so that
        # the whole array is mapped once; the second check guards against NumPy's log differing
        # from libm's by an ulp at a bucket boundary.
        spans = [
            (side, float(each.min()), float(each.max()))
            for side, each in ((self.positive, positive), (self.negative, negative))
            if each.size
        ]
        while self.scale > MIN_SCALE:
            change = max(
                (
                    side.change_for(bucket_index(low, self.scale), bucket_index(high, self.scale))
                    for side, low, high in spans
                ),
                default=0,
            )
            if change == 0:
                break
            self._rescale(change)
        while True:
            up, down = bucket_indices(positive, self.scale), bucket_indices(negative, self.scale)
            change = max(
                self.positive.change_for(int(up.min()), int(up.max())) if up.size else 0,
                self.negative.change_for(int(down.min()), int(down.max())) if down.size else 0,
            )
            if change == 0 or self.scale == MIN_SCALE:
                break
            self._rescale(change)
        for side, indices in ((self.positive, up), (self.negative, down)):
            if indices.size:
                side.add(indices)
        self.count += values.size
        self.zero_count += values.size - positive.size - negative.size
        self.sum += float(values.sum(dtype=np.float64))
        self.min = min(self.min, low)
        self.max = max(self.max, high)

    def record_one(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        if value == 0:
            self.zero_count += 1
            return
        side = self.positive if value > 0 else self.negative
        index = bucket_index(abs(value), self.scale)
        change = side.change_for(index, index)
        if change and self.scale > MIN_SCALE:
            self._rescale(change)
            index = bucket_index(abs(value), self.scale)
        side.bump(index)

    def copy(self) -> ExponentialHistogram:
        other = ExponentialHistogram()
        other.scale, other.count, other.zero_count = self.scale, self.count, self.zero_count
        other.sum, other.min, other.max = self.sum, self.min, self.max
        for mine, theirs in ((self.positive, other.positive), (self.negative, other.negative)):
            theirs.offset, theirs.counts = mine.offset, mine.counts.copy()
        return other
