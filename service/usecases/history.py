"""A model's loss history: its predictions in buckets of prediction time (and, with `by`, per
value of one segment key), each bucket's label coverage, label delays and configured losses.

A query whose start and step are multiples of a rollup level's width (60 s, 1 h, 1 d) reads the
cells of the coarsest such level: its cost grows with the buckets and segment values, not with
the pairs. Any other query reads the model's prediction rows in the window (exact, its cost
grows with the rows; the rows do not know which predictions expired, so it reports 0 expired),
and so does every query for the entries' calibration (`bucket_calibration`), which reads the
pairs' stored values.
Both merge the same sketches, so both give the same quantiles for the same pairs
(docs/delayed-labels.md, "How history is kept").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.store import Model, Store, StoreFailureError
from service.store.history import EXPECTED_TOTALS, pair_value
from service.store.pairs import PredictionRow
from service.store.rollup_reads import RollupCells, RollupLosses
from service.store.rollups import LEVELS
from service.usecases.bucket_calibration import BucketCalibration, asked_calibration
from service.usecases.bucket_estimates import add_joined, add_pending, grown_totals, no_totals
from service.usecases.configured import loss_aggregate, loss_variants
from service.usecases.estimates import estimated
from service.usecases.history_answer import DELAY_QUANTILES, LOSS_QUANTILES, Table, answer
from service.usecases.models import model_config, unavailable, unknown_model
from service.usecases.windows import Window, query_problem, window
from service.values import sketch

# Prediction rows one read transaction of the scan holds.
SCAN_BATCH_ROWS = 10_000


def level_for(start: float, step: float) -> int | None:
    """The coarsest rollup level whose width divides both start and step, or None (scan)."""
    fitting = [level for level in LEVELS if start % level == 0 and step % level == 0]
    return max(fitting) if fitting else None


@dataclass
class _Buckets:
    """What is being added up, per entry (a time bucket, and a segment value with `by`)."""

    losses: int
    entries: dict[tuple[int, str | None], int] = field(default_factory=dict)
    counts: list[list[int]] = field(default_factory=list)  # predictions, joined, expired
    delay_sketches: list[bytes | None] = field(default_factory=list)
    delay_groups: list[int] = field(default_factory=list)
    sums: list[list[list[float]]] = field(default_factory=list)  # entry -> loss -> sum, denominator, count
    loss_sketches: list[list[bytes | None]] = field(default_factory=list)
    loss_groups: list[list[int]] = field(default_factory=list)
    # Per loss, entry: the expected totals of the joined pairs, and of the pending predictions.
    joined_totals: NDArray[np.float64] = field(default_factory=lambda: no_totals(0, 0))
    pending_totals: NDArray[np.float64] = field(default_factory=lambda: no_totals(0, 0))

    def __post_init__(self) -> None:
        self.loss_sketches = [[] for _ in range(self.losses)]
        self.loss_groups = [[] for _ in range(self.losses)]

    def totals(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The expected totals, grown to cover every entry so far."""
        grow = len(self.counts) - self.joined_totals.shape[1]
        if grow > 0 or self.joined_totals.shape[0] != self.losses:
            self.joined_totals = grown_totals(self.joined_totals, self.losses, len(self.counts))
            self.pending_totals = grown_totals(self.pending_totals, self.losses, len(self.counts))
        return self.joined_totals, self.pending_totals

    def entry(self, bucket: int, segment: str | None) -> int:
        key = (bucket, segment)
        found = self.entries.get(key)
        if found is None:
            found = self.entries[key] = len(self.counts)
            self.counts.append([0, 0, 0])
            self.sums.append([[0.0, 0.0, 0.0] for _ in range(self.losses)])
        return found


def history(
    store: Store,
    name: str,
    *,
    start: str | None,
    end: str | None,
    step: str | None,
    by: str | None,
    now: float | None = None,
    calibration: str | None = None,
    bins: str | None = None,
    strategy: str | None = None,
    from_logits: str | None = None,
) -> dict[str, Any]:
    """The history of model `name` (see the module's docstring): its answer as JSON fields.
    `now` (default the clock) is the default `end`. With `calibration` true each entry gains
    the calibration of its pairs (`bucket_calibration`), and the rows are read whatever the window."""
    asked = window(start, end, step, time.time() if now is None else now)
    calibrating = asked_calibration(calibration, bins, strategy, from_logits)
    level = None if calibrating else level_for(asked.start, asked.step)
    stop = asked.start + asked.count * asked.step
    try:
        if level is not None:
            read = store.history_cells(name, level, by or "", asked.start, stop)
            if read is None:
                raise unknown_model(name)
            model = read[0]
            check_by(model, by)
            table = _from_cells(model, asked, read[1], read[2])
            if estimated(model):
                _add_pending(store, model, asked, by, stop, table)
        else:
            found = store.model(name)
            if found is None:
                raise unknown_model(name)
            check_by(found, by)
            model, buckets = found, _Buckets(len(found.config["losses"]))
            calibrated = None if calibrating is None else BucketCalibration(model, calibrating)
            for batch in store.prediction_batches(name, asked.start, stop, batch_rows=SCAN_BATCH_ROWS):
                entries = _add_rows(model, asked, batch, by, buckets)
                if calibrated is not None:
                    calibrated.add(batch, entries)
            table = _from_rows(buckets, asked, calibrated)
    except StoreFailureError as exc:
        raise unavailable(exc) from None
    return answer(model, asked, by, table)


@dataclass(frozen=True)
class SpanTotals:
    """A model's predictions made in one span, added up (`totals`): how many, how many joined, and
    per configured loss (first axis) its sums, denominators and counts over the joined pairs, and
    the expected totals (EXPECTED_TOTALS) of the joined pairs and of the pending predictions."""

    model: Model
    predictions: int
    joined: int
    sums: NDArray[np.float64]
    denominators: NDArray[np.float64]
    counts: NDArray[np.int64]
    expected_joined: NDArray[np.float64]  # (losses, EXPECTED_TOTALS)
    expected_pending: NDArray[np.float64]


def totals(store: Store, name: str, start: float, end: float, *, pending: bool) -> SpanTotals | None:
    """What the history's one bucket from `start` to `end` adds up, without the JSON: `start` a
    multiple of the finest rollup level's width (60 s), the bucket a whole number of them reaching
    `end` or past it, read from the rollup cells (its cost grows with the cells, not the pairs);
    with `pending`, the pending predictions estimated too (the history's `pending_mean`). None
    where there is no such model."""
    width = LEVELS[0]
    step = max(1, math.ceil((end - start) / width)) * width
    asked = Window(start, start + step, step, 1)
    level = level_for(asked.start, asked.step)
    if level is None:
        raise ValueError(f"start {start!r} is not a multiple of {width} s")
    try:
        read = store.history_cells(name, level, "", asked.start, asked.start + asked.step)
        if read is None:
            return None
        model = read[0]
        table = _from_cells(model, asked, read[1], read[2])
        if pending and estimated(model):
            _add_pending(store, model, asked, None, asked.start + asked.step, table)
    except StoreFailureError as exc:
        raise unavailable(exc) from None
    return SpanTotals(
        model=model,
        predictions=int(table.predictions.sum()),
        joined=int(table.joined.sum()),
        sums=table.sums.sum(axis=1),
        denominators=table.denominators.sum(axis=1),
        counts=table.counts.sum(axis=1),
        expected_joined=table.expected_joined.sum(axis=1),
        expected_pending=table.expected_pending.sum(axis=1),
    )


def check_by(model: Model, by: str | None) -> None:
    declared = model_config(model)["segments"]
    if by is not None and by not in declared:
        shown = ", ".join(declared) or "none"
        raise query_problem("by", f"is not a segment key of model {model.name} (its keys: {shown})")


def _from_cells(model: Model, asked: Window, cells: RollupCells, losses: RollupLosses) -> Table:
    """The cells added up per entry, all of them at once: each cell's entry is found by NumPy,
    its counts and sums added by `bincount` (in the cells' order, as one by one) and its
    sketches merged and answered by `sketch.quantiles` in one pass per column of sketches."""
    values = sorted(set(cells.segment))  # '' (null) first, as the answer orders them
    index = {value: i for i, value in enumerate(values)}
    cell_keys = _keys(cells.start, cells.segment, index, asked)
    keys, of_cell = np.unique(cell_keys, return_inverse=True)
    of_cell = of_cell.reshape(-1)
    size = len(keys)
    variants = loss_variants(model)
    loss_keys = _keys(losses.start, losses.segment, index, asked)
    at = np.minimum(np.searchsorted(keys, loss_keys), max(size - 1, 0))
    # a loss of a cell not read (swept meanwhile) or configured otherwise before counts nowhere
    found = (keys[at] == loss_keys) if size else np.zeros(len(loss_keys), bool)
    picked = [np.flatnonzero(found & (losses.variant == variant)) for variant in variants]

    def per_loss(column: NDArray[Any]) -> NDArray[np.float64]:
        return np.array([_added(at[rows], column[rows], size) for rows in picked]).reshape(len(picked), size)

    return Table(
        bucket=keys // max(len(values), 1),
        segment=[values[i] or None for i in (keys % max(len(values), 1)).tolist()],
        predictions=_added(of_cell, cells.predictions, size).astype(np.int64),
        joined=_added(of_cell, cells.joined, size).astype(np.int64),
        expired=_added(of_cell, cells.expired, size).astype(np.int64),
        delays=sketch.quantiles(cells.delays, of_cell, size, DELAY_QUANTILES),
        sums=per_loss(losses.sum),
        denominators=per_loss(losses.denominator),
        counts=per_loss(losses.count).astype(np.int64),
        quantiles=np.array(
            [
                sketch.quantiles([losses.sketch[i] for i in rows.tolist()], at[rows], size, LOSS_QUANTILES)
                for rows in picked
            ]
        ).reshape(len(picked), size, len(LOSS_QUANTILES)),
        expected_joined=np.array(
            [[_added(at[rows], losses.expected[rows, k], size) for k in range(EXPECTED_TOTALS)] for rows in picked]
        )
        .reshape(len(picked), EXPECTED_TOTALS, size)
        .transpose(0, 2, 1)
        .copy(),
        expected_pending=no_totals(len(picked), size),
    )


def _add_pending(store: Store, model: Model, asked: Window, by: str | None, stop: float, table: Table) -> None:
    """The pending predictions of the window estimated into the entries of `table` read from the
    rollups (a prediction whose cell is gone counts in none), one batch of the scan at a time."""
    index = {
        (int(bucket), segment): i
        for i, (bucket, segment) in enumerate(zip(table.bucket.tolist(), table.segment, strict=True))
    }
    for batch in store.prediction_batches(model.name, asked.start, stop, batch_rows=SCAN_BATCH_ROWS, pending_only=True):
        entries = [
            index.get((int((row.made - asked.start) // asked.step), row.segments.get(by) if by else None), -1)
            for row in batch
        ]
        add_pending(model, batch, entries, table.expected_pending)


def _keys(starts: NDArray[np.float64], segments: list[str], index: dict[str, int], asked: Window) -> NDArray[np.int64]:
    """Each cell's entry as one number: its bucket times the segment values, plus its value's
    place among them (-1 for a value no cell holds)."""
    buckets = ((starts - asked.start) // asked.step).astype(np.int64)
    places = np.fromiter((index.get(segment, -1) for segment in segments), np.int64, len(segments))
    return np.where(places < 0, -1, buckets * max(len(index), 1) + places)


def _added(groups: NDArray[np.int64], values: NDArray[Any], size: int) -> NDArray[np.float64]:
    """The values added up per group 0..size-1, each group's in the order they come."""
    return np.bincount(groups, weights=values, minlength=size).astype(np.float64) if len(groups) else np.zeros(size)


def _add_rows(model: Model, asked: Window, rows: list[PredictionRow], by: str | None, buckets: _Buckets) -> list[int]:
    """Prediction rows into their buckets, as their rollup cells would count them; each row's entry."""
    variants = loss_variants(model)
    aggregates = [loss_aggregate(model, which) for which in range(len(variants))]
    delays: list[float] = []
    delay_groups: list[int] = []
    shares: list[list[tuple[int, float, float, int]]] = [[] for _ in variants]
    entries: list[int] = []
    for row in rows:
        index = buckets.entry(int((row.made - asked.start) // asked.step), row.segments.get(by) if by else None)
        entries.append(index)
        counts = buckets.counts[index]
        counts[0] += 1
        if row.joined_at is None:
            continue
        counts[1] += 1
        if len(row.expected):
            add_joined(row, index, variants, buckets.totals()[0])
        if row.label_arrived is not None:
            delays.append(row.label_arrived - row.made)
            delay_groups.append(index)
        for entry in row.losses:
            if int(entry["variant"]) in variants:
                which = variants.index(int(entry["variant"]))
                shares[which].append((index, float(entry["sum"]), float(entry["denominator"]), int(entry["count"])))
    if delays:
        buckets.delay_sketches.extend(sketch.grouped(np.array(delays), np.array(delay_groups), len(buckets.counts)))
        buckets.delay_groups.extend(range(len(buckets.counts)))
    for which, found in enumerate(shares):
        if not found:
            continue
        groups = np.array([f[0] for f in found], dtype=np.int64)
        sums = np.array([f[1] for f in found])
        denominators = np.array([f[2] for f in found])
        for index, total, denominator, count in found:
            totals = buckets.sums[index][which]
            totals[0] += total
            totals[1] += denominator
            totals[2] += count
        values = pair_value(sums, denominators, aggregates[which])
        keep = ~np.isnan(values)
        buckets.loss_sketches[which].extend(sketch.grouped(values[keep], groups[keep], len(buckets.counts)))
        buckets.loss_groups[which].extend(range(len(buckets.counts)))
    if estimated(model):
        waiting = [index if row.joined_at is None else -1 for row, index in zip(rows, entries, strict=True)]
        add_pending(model, rows, waiting, buckets.totals()[1])
    return entries


def _from_rows(buckets: _Buckets, asked: Window, calibrated: BucketCalibration | None) -> Table:
    """The entries the scan added up, as the answer's columns (with each one's calibration, one
    entry after the other, where `calibrated` holds their pairs)."""
    keyed = sorted(buckets.entries.items(), key=lambda item: (item[0][0], item[0][1] or ""))
    order = np.array([index for _, index in keyed], np.int64)
    calibrations = None
    if calibrated is not None:
        calibrations = [calibrated.answer(index, _where(asked, bucket, segment)) for (bucket, segment), index in keyed]
    size = len(buckets.counts)
    counts = np.array(buckets.counts, np.int64).reshape(-1, 3)[order]
    sums = np.array(buckets.sums, np.float64).reshape(size, buckets.losses, 3)[order]
    joined_totals, pending_totals = buckets.totals()
    return Table(
        bucket=np.array([bucket for (bucket, _), _ in keyed], np.int64),
        segment=[segment for (_, segment), _ in keyed],
        predictions=counts[:, 0],
        joined=counts[:, 1],
        expired=counts[:, 2],
        delays=sketch.quantiles(buckets.delay_sketches, buckets.delay_groups, size, DELAY_QUANTILES)[order],
        sums=sums[:, :, 0].T,
        denominators=sums[:, :, 1].T,
        counts=sums[:, :, 2].T.astype(np.int64),
        quantiles=np.array(
            [
                sketch.quantiles(buckets.loss_sketches[which], buckets.loss_groups[which], size, LOSS_QUANTILES)[order]
                for which in range(buckets.losses)
            ]
        ).reshape(buckets.losses, size, len(LOSS_QUANTILES)),
        expected_joined=joined_totals[:, order],
        expected_pending=pending_totals[:, order],
        calibrations=calibrations,
    )


def _where(asked: Window, bucket: int, segment: str | None) -> str:
    start = f"starting at {asked.start + bucket * asked.step!r}"
    return start if segment is None else f"{start}, segment {segment!r}"
