"""A model's history answer: the entries' columns (`Table`), as the rollup cells or the rows
add them up (history.py), turned into the answer's JSON fields, each bucket with its counts,
label delays and losses, and with the model's `estimate` each loss's `estimated` (bucket_estimates.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.engine import Aggregate, loss_name, mean_of, recombines
from service.store import Model
from service.usecases.bucket_estimates import estimated_entries
from service.usecases.configured import loss_aggregate
from service.usecases.windows import Window

LOSS_QUANTILES = (0.5, 0.9, 0.99)
DELAY_QUANTILES = (0.5, 0.9)


@dataclass(frozen=True)
class Table:
    """The answer's entries as columns, sorted by bucket then segment value: entry i is bucket
    `bucket[i]` and segment value `segment[i]` (None: null, or no `by`); per loss (first axis)
    its sums, and its quantiles (last axis: LOSS_QUANTILES)."""

    bucket: NDArray[np.int64]
    segment: list[str | None]
    predictions: NDArray[np.int64]
    joined: NDArray[np.int64]
    expired: NDArray[np.int64]
    delays: NDArray[np.float64]  # (entries, DELAY_QUANTILES)
    sums: NDArray[np.float64]  # (losses, entries)
    denominators: NDArray[np.float64]
    counts: NDArray[np.int64]
    quantiles: NDArray[np.float64]  # (losses, entries, LOSS_QUANTILES)
    # (losses, entries, EXPECTED_TOTALS): the joined pairs' and the pending predictions' estimates
    expected_joined: NDArray[np.float64]
    expected_pending: NDArray[np.float64]
    calibrations: list[dict[str, Any] | None] | None = None  # per entry, with calibration=true


def answer(model: Model, asked: Window, by: str | None, table: Table) -> dict[str, Any]:
    """The answer's JSON fields: each entry with predictions, built from the table's columns
    turned into Python values once, column by column (a bucket costs one dict of each kind)."""
    config = model.config
    kept = np.flatnonzero(table.predictions > 0)
    predictions, joined, expired = table.predictions[kept], table.joined[kept], table.expired[kept]
    delays = [
        {"p50": p50, "p90": p90}
        for p50, p90 in zip(_numbers(table.delays[kept, 0]), _numbers(table.delays[kept, 1]), strict=True)
    ]
    losses = _losses(model, table, kept)
    columns = [
        (asked.start + table.bucket[kept] * asked.step).tolist(),
        [table.segment[i] for i in kept.tolist()] if by is not None else None,
        predictions.tolist(),
        joined.tolist(),
        np.maximum(0, predictions - joined - expired).tolist(),
        expired.tolist(),
        (joined / np.where(predictions > 0, predictions, 1)).tolist(),
        delays,
        [list(entry) for entry in zip(*losses, strict=True)] if losses else [[] for _ in kept.tolist()],
    ]
    fields = [field for field, column in zip(ENTRY_FIELDS, columns, strict=True) if column is not None]
    present = [column for column in columns if column is not None]
    entries = [dict(zip(fields, values, strict=True)) for values in zip(*present, strict=True)]
    if table.calibrations is not None:
        for entry, index in zip(entries, kept.tolist(), strict=True):
            entry["calibration"] = table.calibrations[index]
    names = [loss_name(call["loss"], config["convention"], call["options"]) for call in config["losses"]]
    return {
        "model": model.name,
        "start": asked.start,
        "end": asked.end,
        "step": asked.step,
        "by": by,
        "losses": names,
        "exact": [recombines(call["loss"], config["convention"], call["options"]) for call in config["losses"]],
        "buckets": entries,
    }


# An entry's fields in the answer's order ("segment" only with `by`).
ENTRY_FIELDS = ("start", "segment", "predictions", "joined", "pending", "expired", "coverage", "label_delay", "losses")


def _losses(model: Model, table: Table, kept: NDArray[np.int64]) -> list[list[dict[str, Any]]]:
    """Per configured loss, its entry in each kept bucket, with `estimated` where the model has
    an `estimate`."""
    losses = [_loss_entries(table, which, kept, loss_aggregate(model, which)) for which in range(len(table.sums))]
    if model.config.get("estimate") is not None:
        for which, entries in enumerate(losses):
            estimates = estimated_entries(
                model, which, table.expected_joined[which, kept], table.expected_pending[which, kept]
            )
            for entry, estimate in zip(entries, estimates, strict=True):
                entry["estimated"] = estimate
    return losses


def _loss_entries(table: Table, which: int, kept: NDArray[np.int64], aggregate: Aggregate) -> list[dict[str, Any]]:
    """The `which`-th loss of each kept entry: its mean (null where nothing counts), sums, count
    and quantiles."""
    sums, denominators = table.sums[which, kept], table.denominators[which, kept]
    counts = table.counts[which, kept]
    counted = (counts != 0) & ((denominators != 0) | (aggregate == "sum"))
    means = [
        mean_of(total, denominator, aggregate) if counting else None
        for total, denominator, counting in zip(sums.tolist(), denominators.tolist(), counted.tolist(), strict=True)
    ]
    quantiles = table.quantiles[which, kept]
    return [
        {"mean": mean, "sum": total, "denominator": denominator, "count": count, "p50": p50, "p90": p90, "p99": p99}
        for mean, total, denominator, count, p50, p90, p99 in zip(
            _numbers(np.array([np.nan if mean is None else mean for mean in means], np.float64)),
            _numbers(np.where(counts != 0, sums, 0.0)),
            _numbers(np.where(counts != 0, denominators, 0.0)),
            counts.tolist(),
            _numbers(quantiles[:, 0]),
            _numbers(quantiles[:, 1]),
            _numbers(quantiles[:, 2]),
            strict=True,
        )
    ]


def _numbers(values: NDArray[np.float64]) -> list[float | None]:
    """Finite floats, and null for each value JSON cannot hold (no value: NaN)."""
    found: NDArray[Any] = np.asarray(values, np.float64).astype(object)
    found[~np.isfinite(np.asarray(values, np.float64))] = None
    return list(found.tolist())
