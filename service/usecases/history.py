"""A model's loss history: its predictions in buckets of prediction time (and, with `by`, per
value of one segment key), each bucket's label coverage, label delays and configured losses.

A query whose start and step are multiples of a rollup level's width (60 s, 1 h, 1 d) reads the
cells of the coarsest such level: its cost grows with the buckets and segment values, not with
the pairs. Any other query reads the model's prediction rows in the window (exact, its cost
grows with the rows; the rows do not know which predictions expired, so it reports 0 expired).
Both merge the same sketches, so both give the same quantiles for the same pairs
(docs/delayed-labels.md, "How history is kept").
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from service.engine import Aggregate, aggregate_of, loss_name, mean_of, recombines
from service.store import Model, Store, StoreFailureError
from service.store.history import LEVELS, PredictionRow, loss_variant, pair_value
from service.usecases.errors import InvalidInputError
from service.usecases.ingest import model_config, unavailable, unknown_model
from service.values import sketch

DEFAULT_WINDOW_SECONDS = 86400.0
DEFAULT_STEP_SECONDS = 3600.0
MAX_BUCKETS = 10_000
LOSS_QUANTILES = (0.5, 0.9, 0.99)
DELAY_QUANTILES = (0.5, 0.9)
# Prediction rows one read transaction of the scan holds.
SCAN_BATCH_ROWS = 10_000


def _query_problem(field: str, reason: str) -> InvalidInputError:
    return InvalidInputError(field, reason, part="query")


def parse_time(text: str, field: str) -> float:
    """Unix seconds (a number) or an RFC 3339 date-time with its offset."""
    try:
        seconds = float(text)
    except ValueError:
        return _rfc3339(text, field)
    if not math.isfinite(seconds) or abs(seconds) > 1e13:
        raise _query_problem(field, f"expected Unix seconds, got {text[:64]!r}")
    return seconds


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise _query_problem("step", f"expected a number of seconds, got {text[:64]!r}") from None
    if not math.isfinite(seconds):
        raise _query_problem("step", f"expected a number of seconds, got {text[:64]!r}")
    return seconds


def _rfc3339(text: str, field: str) -> float:
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise _query_problem(
            field, f"expected Unix seconds or an RFC 3339 date-time (2026-01-31T12:00:00Z), got {text[:64]!r}"
        ) from None
    if parsed.tzinfo is None:
        raise _query_problem(field, f"an RFC 3339 date-time needs its offset (Z or +hh:mm), got {text[:64]!r}")
    return parsed.timestamp()


@dataclass(frozen=True)
class Window:
    """The buckets asked for: `count` buckets of `step` seconds from `start`."""

    start: float
    end: float
    step: float
    count: int


def window(start: str | None, end: str | None, step: str | None, now: float) -> Window:
    """The query's window: `end` default now; `start` default 24 h before `end`, floored to a
    multiple of the step (so the default reads rollups); buckets are whole steps, the last one
    reaching past `end` where the window is no multiple of the step."""
    width = DEFAULT_STEP_SECONDS if step is None else _seconds(step)
    if width < 1:
        raise _query_problem("step", f"must be at least 1 second, got {step}")
    last = now if end is None else parse_time(end, "end")
    first = math.floor((last - DEFAULT_WINDOW_SECONDS) / width) * width if start is None else parse_time(start, "start")
    if last <= first:
        raise _query_problem("end", f"must be after start ({first:g}), got {last:g}")
    count = math.ceil((last - first) / width)
    if count > MAX_BUCKETS:
        raise _query_problem(
            "step", f"makes {count:,} buckets of {width:g} s from start to end; at most {MAX_BUCKETS:,} per answer"
        )
    return Window(first, last, width, count)


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

    def __post_init__(self) -> None:
        self.loss_sketches = [[] for _ in range(self.losses)]
        self.loss_groups = [[] for _ in range(self.losses)]

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
) -> dict[str, Any]:
    """The history of model `name` (see the module's docstring): its answer as JSON fields.
    `now` (default the clock) is the default `end`."""
    asked = window(start, end, step, time.time() if now is None else now)
    level = level_for(asked.start, asked.step)
    stop = asked.start + asked.count * asked.step
    try:
        if level is not None:
            read = store.history_cells(name, level, by or "", asked.start, stop)
            if read is None:
                raise unknown_model(name)
            model = read[0]
            _check_by(model, by)
            buckets = _from_cells(model, asked, read[1], read[2], by)
        else:
            found = store.model(name)
            if found is None:
                raise unknown_model(name)
            _check_by(found, by)
            model, buckets = found, _Buckets(len(found.config["losses"]))
            for batch in store.prediction_batches(name, asked.start, stop, batch_rows=SCAN_BATCH_ROWS):
                _add_rows(model, asked, batch, by, buckets)
    except StoreFailureError as exc:
        raise unavailable(exc) from None
    return _answer(model, asked, by, buckets)


def _check_by(model: Model, by: str | None) -> None:
    declared = model_config(model)["segments"]
    if by is not None and by not in declared:
        shown = ", ".join(declared) or "none"
        raise _query_problem("by", f"is not a segment key of model {model.name} (its keys: {shown})")


def loss_variants(model: Model) -> list[int]:
    """Each configured loss's variant: the hash its stored shares and rollups are kept under."""
    config = model.config
    return [
        loss_variant(call["loss"], call["options"], config["convention"], config["dtype"]) for call in config["losses"]
    ]


def _from_cells(model: Model, asked: Window, cells: Sequence[Any], losses: Sequence[Any], by: str | None) -> _Buckets:
    buckets = _Buckets(len(model.config["losses"]))
    for cell in cells:
        index = buckets.entry(int((cell.start - asked.start) // asked.step), cell.segment if by else None)
        counts = buckets.counts[index]
        counts[0] += cell.predictions
        counts[1] += cell.joined
        counts[2] += cell.expired
        buckets.delay_sketches.append(cell.delays)
        buckets.delay_groups.append(index)
    position = {variant: i for i, variant in enumerate(loss_variants(model))}
    for loss in losses:
        which = position.get(loss.variant)
        key = (int((loss.start - asked.start) // asked.step), loss.segment if by else None)
        if which is None or key not in buckets.entries:
            continue  # a loss configured otherwise before, or a cell swept meanwhile
        index = buckets.entries[key]
        totals = buckets.sums[index][which]
        totals[0] += loss.sum
        totals[1] += loss.denominator
        totals[2] += loss.count
        buckets.loss_sketches[which].append(loss.sketch)
        buckets.loss_groups[which].append(index)
    return buckets


def _add_rows(model: Model, asked: Window, rows: list[PredictionRow], by: str | None, buckets: _Buckets) -> None:
    """Prediction rows into their buckets, as their rollup cells would count them."""
    variants = loss_variants(model)
    aggregates = [loss_aggregate(model, which) for which in range(len(variants))]
    delays: list[float] = []
    delay_groups: list[int] = []
    shares: list[list[tuple[int, float, float, int]]] = [[] for _ in variants]
    for row in rows:
        index = buckets.entry(int((row.made - asked.start) // asked.step), row.segments.get(by) if by else None)
        counts = buckets.counts[index]
        counts[0] += 1
        if row.joined_at is None:
            continue
        counts[1] += 1
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


def loss_aggregate(model: Model, which: int) -> Aggregate:
    """How the `which`-th configured loss's mean is made from its sums (mean, root or sum)."""
    call = model.config["losses"][which]
    return aggregate_of(call["loss"], model.config["convention"], call["options"])


def _answer(model: Model, asked: Window, by: str | None, buckets: _Buckets) -> dict[str, Any]:
    config = model.config
    size = len(buckets.counts)
    delays = sketch.quantiles(buckets.delay_sketches, buckets.delay_groups, size, DELAY_QUANTILES)
    losses = [
        sketch.quantiles(buckets.loss_sketches[which], buckets.loss_groups[which], size, LOSS_QUANTILES)
        for which in range(buckets.losses)
    ]
    aggregates = [loss_aggregate(model, which) for which in range(buckets.losses)]
    entries = []
    for (bucket, segment), index in sorted(buckets.entries.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        predictions, joined, expired = buckets.counts[index]
        if predictions <= 0:
            continue
        entry: dict[str, Any] = {"start": asked.start + bucket * asked.step}
        if by is not None:
            entry["segment"] = segment
        entry.update(
            predictions=predictions,
            joined=joined,
            pending=max(0, predictions - joined - expired),
            expired=expired,
            coverage=joined / predictions,
            label_delay={"p50": _number(delays[index, 0]), "p90": _number(delays[index, 1])},
            losses=[
                _loss_entry(buckets.sums[index][which], losses[which][index], aggregates[which])
                for which in range(buckets.losses)
            ],
        )
        entries.append(entry)
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


def _loss_entry(totals: list[float], quantiles: Any, aggregate: Aggregate) -> dict[str, Any]:
    total, denominator, count = totals
    counted = aggregate == "sum" or denominator != 0
    mean = mean_of(total, denominator, aggregate) if count and counted else None
    return {
        "mean": _number(mean),
        "sum": _number(total) if count else 0.0,
        "denominator": _number(denominator) if count else 0.0,
        "count": int(count),
        "p50": _number(quantiles[0]),
        "p90": _number(quantiles[1]),
        "p99": _number(quantiles[2]),
    }


def _number(value: float | None) -> float | None:
    """A finite float, or null (no value, or none that JSON can hold)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
