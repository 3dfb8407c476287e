"""The loss history's pairs read back from the prediction rows: row by row (the history's scan
of a window no rollup level fits) or a batch of columns (the export)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from service.store.database import Transaction
from service.store.history import decode_expected, decode_losses, entries_of

# A prediction row's time, as the `loss_predictions_by_time` index holds it.
MADE = "coalesce(p.at, p.arrived)"


@dataclass(frozen=True)
class PredictionRow:
    """One prediction row of a window, with what its label row holds where it has joined.

    `payload`s are the stored values (the model's dtype code beside each): kept after the join
    only for a model configured with "keep_pairs"."""

    id: str
    made: float
    arrived: float
    joined_at: float | None
    label_arrived: float | None
    segments: dict[str, str]
    losses: NDArray[Any]
    expected: NDArray[Any]  # EXPECTED_LOSS entries, where its pair was estimated
    weight: float | None
    prediction_dtype: int
    prediction: bytes | None
    label_dtype: int | None
    label: bytes | None


def read_rows(
    tx: Transaction,
    model_id: int,
    start: float,
    end: float,
    after: tuple[float, str] | None,
    limit: int,
    joined_only: bool,
    pending_only: bool = False,
) -> list[PredictionRow]:
    """Up to `limit` prediction rows made in [start, end), in (time, id) order after `after`
    (the last row of the previous batch), each with its label's weight and payload; only the
    joined ones with `joined_only`, only those still waiting for their label with `pending_only`."""
    conditions, params = _window(model_id, start, end, after)
    if joined_only:
        conditions.append("p.joined_at IS NOT NULL")
    if pending_only:
        conditions.append("p.joined_at IS NULL")
    rows = tx.all(
        f"SELECT p.id, {MADE}, p.arrived, p.joined_at, p.label_arrived, p.segments, coalesce(p.losses, l.losses), "
        "l.weight, p.dtype, p.payload, l.dtype, l.payload, coalesce(p.expected, l.expected) FROM loss_predictions AS p "
        "LEFT JOIN loss_labels AS l ON l.model_id = p.model_id AND l.id = p.id AND p.joined_at IS NOT NULL "
        f"WHERE {' AND '.join(conditions)} ORDER BY {MADE}, p.id LIMIT ?",
        [*params, limit],
    )
    return [
        PredictionRow(
            id=r[0],
            made=float(r[1]),
            arrived=float(r[2]),
            joined_at=None if r[3] is None else float(r[3]),
            label_arrived=None if r[4] is None else float(r[4]),
            segments={} if r[5] is None else orjson.loads(r[5]),
            losses=decode_losses(None if r[6] is None else bytes(r[6])),
            expected=decode_expected(None if r[12] is None else bytes(r[12])),
            weight=None if r[7] is None else float(r[7]),
            prediction_dtype=int(r[8]),
            prediction=None if r[9] is None else bytes(r[9]),
            label_dtype=None if r[10] is None else int(r[10]),
            label=None if r[11] is None else bytes(r[11]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class PairColumns:
    """One batch of joined prediction rows as columns, in (time, id) order, for the export:
    each column the cursor's values in one sequence, or one NumPy array over them; nothing of the
    service's is made per row.

    `losses` holds every row's `HISTORY_LOSS` entries, one view over their bytes, and `owners`
    each entry's row. `segments` holds one column per key asked for (None where the row has no
    value). `payloads`, where asked for, the predictions' then the labels' stored values: each
    row's bytes (b"" where there are none) and the dtype code beside them (-1 where none)."""

    ids: Sequence[str]
    made: NDArray[np.float64]
    label_arrived: Sequence[float | None]
    weights: NDArray[np.float64]  # 1.0 where the label came without one
    segments: Sequence[Sequence[str | None]]
    losses: NDArray[Any]
    owners: NDArray[np.intp]
    payloads: Sequence[tuple[Sequence[bytes], NDArray[np.int64]]]

    def __len__(self) -> int:
        return len(self.ids)


def read_pairs(
    tx: Transaction,
    model_id: int,
    start: float,
    end: float,
    after: tuple[float, str] | None,
    limit: int,
    keys: Sequence[str],
    payloads: bool,
) -> PairColumns:
    """Up to `limit` joined prediction rows made in [start, end), in (time, id) order after
    `after` (the last row of the previous batch), as columns: the database extracts each of
    `keys`' segment values, and the losses and payloads come as bytes viewed once per batch."""
    sql, params = pairs_query(tx.dialect.name, model_id, start, end, after, limit, keys, payloads)
    width = 5 + len(keys) + (4 if payloads else 0)
    columns = tx.columns(sql, params, width)
    count = len(columns[0])
    losses, owners = entries_of(columns[4 + len(keys)], count)
    stored = [(columns[at], np.fromiter(columns[at + 1], np.int64, count)) for at in range(5 + len(keys), width, 2)]
    return PairColumns(
        ids=columns[0],
        made=np.fromiter(columns[1], np.float64, count),
        label_arrived=columns[2],
        weights=np.fromiter(columns[3], np.float64, count),
        segments=columns[4 : 4 + len(keys)],
        losses=losses,
        owners=owners,
        payloads=stored,
    )


def pairs_query(
    dialect: str,
    model_id: int,
    start: float,
    end: float,
    after: tuple[float, str] | None,
    limit: int,
    keys: Sequence[str],
    payloads: bool,
) -> tuple[str, list[Any]]:
    """`read_pairs`' SELECT and its parameters. Its columns: id, time, label arrival, weight, one
    per key, losses, then with `payloads` the prediction's payload and dtype, the label's."""
    conditions, params = _window(model_id, start, end, after)
    conditions.append("p.joined_at IS NOT NULL")
    sqlite = dialect == "sqlite"
    segment = "p.segments ->> ?" if sqlite else "(p.segments::json) ->> ?"
    # b"" stands for a row's missing blob, so that each column's bytes join and measure in C.
    selected = [
        "p.id",
        MADE,
        "p.label_arrived",
        "coalesce(l.weight, 1.0)",
        *(segment for _ in keys),
        "coalesce(p.losses, l.losses, ?)",
    ]
    selected_params: list[Any] = [f"$.{key}" if sqlite else key for key in keys] + [b""]
    if payloads:
        selected += ["coalesce(p.payload, ?)", "p.dtype", "coalesce(l.payload, ?)", "coalesce(l.dtype, -1)"]
        selected_params += [b"", b""]
    sql = (
        f"SELECT {', '.join(selected)} FROM loss_predictions AS p "
        "LEFT JOIN loss_labels AS l ON l.model_id = p.model_id AND l.id = p.id "
        f"WHERE {' AND '.join(conditions)} ORDER BY {MADE}, p.id LIMIT ?"
    )
    return sql, [*selected_params, *params, limit]


def _window(model_id: int, start: float, end: float, after: tuple[float, str] | None) -> tuple[list[str], list[Any]]:
    """The conditions and parameters of a model's prediction rows made in [start, end), after
    `after` (the last row of the previous batch) in (time, id) order. The rows after `after`
    start at its time: that bound, not `start`, begins the index range (the row comparison only
    settles ties), so a batch costs O(limit log n), not O(n)."""
    conditions = ["p.model_id = ?", f"{MADE} >= ?", f"{MADE} < ?"]
    params: list[Any] = [model_id, start if after is None else max(start, after[0]), end]
    if after is not None:
        conditions.append(f"({MADE}, p.id) > (?, ?)")
        params.extend(after)
    return conditions, params
