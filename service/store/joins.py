"""Where a log's ids stand and the pairs it completes: the rows of the ids already stored on its
side (duplicates) and the other side's waiting rows (`look_up`), the pairs those make, in the
order of the request (`completed_pairs`), and the other side's rows marked joined
(`join_partners`). Used by `Store.log` inside its transaction, under the model's lock."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, TypeVar

import numpy as np
import orjson

from service.store.database import Transaction
from service.store.records import Model, Pairs, Side, _Partners
from service.store.rows import _TABLE, _decode, _found

V = TypeVar("V")
_first = itemgetter(0)


def look_up(tx: Transaction, side: Side, model_id: int, ids: Sequence[str]) -> tuple[list[int], _Partners]:
    """Where the request's ids are: the positions of those already stored on `side`
    (duplicates), and the other side's waiting rows of the others (`_Partners`). One
    statement that walks the ids and finds each on the primary keys, so that it costs
    O(ids log n) whatever the model holds and whatever the database's statistics say. On
    PostgreSQL each lookup is a LATERAL subquery with LIMIT 1, which the planner keeps as a
    lookup per id (never a join over the model's rows), and whose only fitting index is the
    primary key: `joined_at` is checked outside it, so the partial index of pending rows
    (which holds no id) does not match it."""
    mine, other = _TABLE[side], _TABLE["labels" if side == "predictions" else "predictions"]
    if side == "labels":
        read, shown = "at, arrived, dtype, payload, segments, rolled_up", "coalesce(p.at, p.arrived), p.dtype"
        shown += ", p.payload, NULL, p.segments, p.rolled_up"
    else:
        read, shown = "arrived, dtype, payload, weight", "p.arrived, p.dtype, p.payload, p.weight, NULL, NULL"
    if tx.dialect.name == "sqlite":
        found = tx.all(
            f"SELECT j.key, mine.id IS NOT NULL, NULL, {shown} FROM json_each(?) AS j "
            f"LEFT JOIN {mine} AS mine ON mine.model_id = ? AND mine.id = j.value "
            f"LEFT JOIN {other} AS p ON mine.id IS NULL AND p.model_id = ? AND p.id = j.value "
            "AND p.joined_at IS NULL WHERE mine.id IS NOT NULL OR p.id IS NOT NULL",
            [tx.dialect.list_parameter(ids), model_id, model_id],
        )
    else:
        found = tx.all(  # binary: the payloads as they are, not as hex
            f"SELECT j.n - 1, mine.stored IS NOT NULL, p.ctid::text, {shown} "
            "FROM unnest(?::text[]) WITH ORDINALITY AS j(id, n) "
            f"LEFT JOIN LATERAL (SELECT true AS stored FROM {mine} WHERE model_id = ? AND id = j.id LIMIT 1) "
            "AS mine ON true "
            f"LEFT JOIN LATERAL (SELECT ctid, joined_at, {read} FROM {other} WHERE mine.stored IS NULL "
            "AND model_id = ? AND id = j.id LIMIT 1) AS p ON p.joined_at IS NULL "
            "WHERE mine.stored IS NOT NULL OR p.ctid IS NOT NULL",
            [list(ids), model_id, model_id],
            binary=True,
        )
    found.sort(key=_first)  # in the order of the request (already so, as a rule: a linear pass)
    existing = [row[0] for row in found if row[1]]
    waiting = [row for row in found if not row[1]] if existing else found
    if not waiting:
        return existing, _Partners([], [], [], [], [], [], [], [])
    at, _, rows, times, codes, payloads, weights, texts, rolled_up = zip(*waiting, strict=True)
    return existing, _Partners(at, rows, times, codes, payloads, weights, texts, rolled_up)


def completed_pairs(
    side: Side,
    model: Model,
    ids: Sequence[str],
    rows: np.ndarray[Any, Any],
    partners: _Partners,
    now: float,
    timestamps: Sequence[float] | None,
    weights: Sequence[float] | None,
    segments: Sequence[Mapping[str, str]] | None,
) -> Pairs:
    joined = list(partners.at)
    joined_ids = list(picked(ids, joined))
    mine = rows[joined]
    other_shape = model.label_shape if side == "predictions" else model.prediction_shape
    theirs = _decode(partners.payloads, partners.codes, other_shape or ())
    if side == "predictions":
        made = np.full(len(joined), now) if timestamps is None else picked(timestamps, joined)
        times = np.array(made, dtype=np.float64)
        delays = np.array(partners.times, dtype=np.float64) - times
        values = [dict(segments[i]) for i in joined] if segments is not None else [{} for _ in joined]
        return Pairs(joined_ids, mine, theirs, list(partners.weights), delays, times, values, [True] * len(joined))
    label_weights: list[float | None] = [None] * len(joined) if weights is None else [float(weights[i]) for i in joined]
    times = np.array(partners.times, dtype=np.float64)
    parsed = {text: orjson.loads(text) for text in set(partners.segments) if text is not None}
    values = [{} if text is None else dict(parsed[text]) for text in partners.segments]
    rolled = [flag == 1 for flag in partners.rolled_up]
    return Pairs(joined_ids, theirs, mine, label_weights, now - times, times, values, rolled)


def join_partners(
    tx: Transaction,
    other: Side,
    model_id: int,
    ids: list[str],
    partners: _Partners,
    now: float,
    keep: bool,
) -> None:
    """Mark the other side's rows joined: their payloads dropped (unless `keep`), prediction
    rows given their label's arrival. One statement: the pairs' losses are on the rows this
    request inserts, so no row is updated with a value of its own. The rows are those `_look_up`
    found (`_found`: on PostgreSQL by the ctids it read)."""
    dropped = "" if keep else ", payload = NULL"
    arrival = ", label_arrived = ?" if other == "predictions" else ""
    found, params = _found(tx, model_id, ids, partners.rows)
    tx.execute(
        f"UPDATE {_TABLE[other]} SET joined_at = ?{arrival}{dropped} WHERE {found}",
        [now, *([now] if arrival else []), *params],
    )


def picked(values: Sequence[V], positions: Sequence[int]) -> Sequence[V]:
    """`values` at `positions` (distinct, ascending): `values` itself when that is all of them."""
    return values if len(positions) == len(values) else [values[i] for i in positions]
