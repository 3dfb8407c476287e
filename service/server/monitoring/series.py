"""The series one request or one batch is recorded into, counted into directly: prometheus-client's
labelled children, found once and incremented through their values, without a Python call and its
checks per value (their cost: docs/performance.md)."""

from __future__ import annotations

import bisect
import functools
from typing import Any

import numpy as np
from prometheus_client import Histogram


class RequestSeries:
    """The series one request is recorded into, for one (route, method, status): its counter, its
    latency and body size histograms, and the rejection its status names (None: none).

    Counted into through their values (`_value`, each histogram's `_buckets` and `_sum`), as
    `Counter.inc` and `Histogram.observe` change them, without their checks, which a labelled
    child always passes. A histogram's bucket is found by bisection: the first bound >= the value,
    the one `observe` finds by scanning (the values, a duration and a size, are never NaN)."""

    __slots__ = ("body_size", "latency", "rejected", "requests")

    def __init__(self, requests: Any, latency: Histogram, body_size: Histogram, rejected: Any) -> None:
        self.requests = requests._value
        self.latency = (tuple(latency._upper_bounds), latency._buckets, latency._sum)
        self.body_size = (tuple(body_size._upper_bounds), body_size._buckets, body_size._sum)
        self.rejected = None if rejected is None else rejected._value

    def record(self, seconds: float, body_bytes: int) -> None:
        self.requests.inc(1)
        bounds, buckets, total = self.latency
        buckets[bisect.bisect_left(bounds, seconds)].inc(1)
        total.inc(seconds)
        bounds, buckets, total = self.body_size
        buckets[bisect.bisect_left(bounds, body_bytes)].inc(1)
        total.inc(body_bytes)


class BatchSeries:
    """The four series one batch is recorded into, for one (model label, loss).

    The two counters are counted into through their values (`_value`, locked on each change, as
    `Counter.inc` changes it), without `inc`'s checks, which a labelled child counted up by a
    batch's size always passes."""

    __slots__ = ("batches", "bounds", "histogram", "last_mean", "samples")

    def __init__(self, histogram: Histogram, samples: Any, batches: Any, last_mean: Any) -> None:
        self.histogram, self.last_mean = histogram, last_mean
        self.samples, self.batches = samples._value, batches._value
        self.bounds = bounds_array(tuple(histogram._upper_bounds))

    def observe(self, values: np.ndarray[Any, Any], mean: float) -> None:
        observe_many(self.histogram, values, self.bounds)
        self.samples.inc(values.size)
        self.batches.inc(1)
        self.last_mean.set(mean)


def observe_many(
    histogram: Histogram, values: np.ndarray[Any, Any], bounds: np.ndarray[Any, Any] | None = None
) -> None:
    """Histogram.observe for a whole array at once; `bounds`: the histogram's upper bounds as an
    array, where the caller keeps them.

    prometheus-client has no batch observe, and a Python call per value costs ~1 s per million
    samples. Its per-bucket counters (`_buckets`, non-cumulative: observe() bumps the first bucket
    whose bound >= value) and `_sum` are incremented here directly; test_monitoring checks this
    equals calling observe() value by value.
    """
    if bounds is None:
        bounds = bounds_array(tuple(histogram._upper_bounds))
    # As Python ints: iterating NumPy's counts would build a NumPy scalar per bucket.
    counts = np.bincount(bounds.searchsorted(values, side="left"), minlength=bounds.size).tolist()
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(np.add.reduce(values, dtype=np.float64)))


def observe_grouped(
    histograms: list[Histogram],
    rows: np.ndarray[Any, Any],
    values: np.ndarray[Any, Any],
    buckets: np.ndarray[Any, Any],
    size: int,
) -> None:
    """`observe_many(histograms[g], values[rows == g])` for every group g, in one pass: `values` has
    a row per pair, `rows` each pair's group, `buckets` each value's bucket (as `observe_many` finds
    it) among `size`."""
    groups = len(histograms)
    of_value = np.repeat(rows, values.shape[1])
    counts = np.bincount(of_value * size + buckets.ravel(), minlength=groups * size).reshape(groups, size).tolist()
    sums = np.bincount(of_value, weights=values.ravel().astype(np.float64), minlength=groups).tolist()
    for histogram, group_counts, total in zip(histograms, counts, sums, strict=True):
        for bucket, count in zip(histogram._buckets, group_counts, strict=True):
            if count:
                bucket.inc(count)
        histogram._sum.inc(total)


@functools.cache
def bounds_array(upper_bounds: tuple[float, ...]) -> np.ndarray[Any, Any]:
    """A histogram's upper bounds as an array, made once per set of bounds: a batch searches them."""
    return np.asarray(upper_bounds)
