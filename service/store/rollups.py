"""Rollups of the loss history by prediction time and segment, kept by the transactions that
log, join and sweep rows (docs/delayed-labels.md, "How history is kept").

- A prediction row holds its segments (JSON of its non-null values) and, once joined, its
  label's arrival.
- A *cell* is (level, segment key, bucket start, segment value): `LEVELS` are the bucket widths,
  buckets start at multiples of their width (Unix seconds, by prediction time), segment key ''
  counts every row and segment value '' counts the rows whose value is null. Each row logged
  counts in one cell per level and per key ('' and each declared key).
- `loss_rollups` keeps a cell's predictions, joined and expired counts and a sketch of its
  label delays; `loss_rollup_losses` per cell and loss (`variant`: a hash of the loss's
  configuration, history.loss_variant) its sum, denominator, count and a sketch of each pair's loss.
- A cell is written only while it ends within the model's retention (`ends >= now - retention`)
  and removed by the retention sweep once it ends before; so whatever a join or an expiry adds to
  a cell, the cell counted the prediction when it was logged.

Every function here runs inside a transaction the store opened and holds its model's lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from service.store.database import Transaction
from service.store.history import EXPECTED_TOTALS, PairLosses, pair_value
from service.values import sketch

# Bucket widths in seconds that rollups are kept at: a query whose start and step are multiples of
# one reads the cells of the coarsest such level; any other query reads the prediction rows.
LEVELS = (60, 3600, 86400)
# A cell: (level, segment key, bucket start, segment value).
Cell = tuple[int, str, float, str]
_CELL_COLUMNS = "level, segment_key, start, segment_value"

# -- cells ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cells:
    """The cells some rows count in: `cells` once each, `of_row[i, g]` the index in `cells` of
    row i's cell in group g (a level and a key), -1 where that cell is past retention."""

    cells: list[Cell]
    of_row: NDArray[np.int64]

    def flat(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(row, cell) for every cell a row counts in."""
        rows, groups = np.nonzero(self.of_row >= 0)
        return rows, self.of_row[rows, groups]


def cells_of(
    times: NDArray[np.float64], segments: Sequence[Mapping[str, str]], keys: Sequence[str], oldest_end: float
) -> Cells:
    """The cells of rows made at `times` with these segment values, keeping those that end at or
    after `oldest_end` (now minus the model's retention)."""
    rows = len(times)
    cells: list[Cell] = []
    columns = []
    # Each key's values as indexes into its names ('' first), found once for every level.
    named: dict[str, tuple[list[str], NDArray[np.int64]]] = {"": ([""], np.zeros(rows, np.int64))}
    for key in keys:
        index: dict[str, int] = {"": 0}
        positions = [index.setdefault(values.get(key, ""), len(index)) for values in segments]
        named[key] = (list(index), np.array(positions, dtype=np.int64).reshape(rows))
    for level in LEVELS:
        starts = np.floor(times / level) * level
        if rows and starts.min() == starts.max():  # the common case: one bucket of this level
            unique_starts, start_index = starts[:1], np.zeros(rows, np.int64)
        else:
            unique_starts, start_index = np.unique(starts, return_inverse=True)
        for key in ("", *keys):
            names, value_index = named[key]
            combined = start_index.reshape(-1).astype(np.int64) * len(names) + value_index
            if key:
                found, inverse = np.unique(combined, return_inverse=True)
            else:  # one cell per bucket start
                found, inverse = np.arange(len(unique_starts), dtype=np.int64), combined
            column = np.full(rows, -1, np.int64)
            kept = np.full(len(found), -1, np.int64)
            for position, code in enumerate(found.tolist()):
                start = float(unique_starts[code // len(names)])
                if start + level >= oldest_end:
                    kept[position] = len(cells)
                    cells.append((level, key, start, names[code % len(names)]))
            column[:] = kept[inverse.reshape(-1)]
            columns.append(column)
    of_row = np.stack(columns, axis=1) if columns else np.zeros((rows, 0), np.int64)
    return Cells(cells, of_row)


def _stored(tx: Transaction, table: str, columns: str, model_id: int, cells: Sequence[Cell]) -> list[tuple[Any, ...]]:
    """The rows of `table` (`loss_rollups` or `loss_rollup_losses`) of these cells: each cell's
    columns, then `columns`. The cells drive the read, each found on the table's primary key,
    so that it costs O(cells log n) however many cells the model keeps."""
    selected = ", ".join(f"r.{name.strip()}" for name in f"{_CELL_COLUMNS}, {columns}".split(","))
    matched = "r.level = j.level AND r.segment_key = j.segment_key AND r.start = j.start AND r.segment_value = j.value"
    if tx.dialect.name == "sqlite":
        listed = orjson.dumps([list(cell) for cell in cells]).decode()
        cell = "SELECT value ->> 0 AS level, value ->> 1 AS segment_key, value ->> 2 AS start, value ->> 3 AS value"
        # CROSS JOIN: SQLite keeps the listed cells as the outer loop.
        return tx.all(
            f"SELECT {selected} FROM ({cell} FROM json_each(?)) AS j CROSS JOIN {table} AS r "
            f"WHERE r.model_id = ? AND {matched}",
            [listed, model_id],
        )
    params = [list(column) for column in zip(*cells, strict=True)]
    return tx.all(
        f"SELECT {selected} FROM unnest(?::bigint[], ?::text[], ?::float8[], ?::text[]) "
        f"AS j(level, segment_key, start, value) JOIN {table} AS r ON r.model_id = ? AND {matched}",
        [*params, model_id],
    )


# -- writing: logs, joins, expiries ---------------------------------------------------------------


def roll_up(
    tx: Transaction,
    model_id: int,
    logged: Cells | None,
    joined: Cells | None,
    delays: NDArray[np.float64],
    losses: Sequence[PairLosses],
) -> None:
    """Count rows logged (`logged`: their cells) and pairs joined (`joined`: their cells, each
    pair's label delay and losses) into their cells: one read and one upsert per table, and one
    merge of the stored sketches with the new ones for both tables."""
    predictions: dict[Cell, int] = {}
    if logged is not None:
        _, at = logged.flat()
        for index, count in zip(*np.unique(at, return_counts=True), strict=True):
            predictions[logged.cells[index]] = int(count)
    pairs, new_delays, new_losses = _joined_parts(joined, delays, losses)
    touched = sorted(set(predictions) | set(pairs))
    if not touched:
        return
    existing = {
        tuple(row[:4]): row[4:] for row in _stored(tx, "loss_rollups", "predictions, joined, delays", model_id, touched)
    }
    # Both tables are read before either is written: on PostgreSQL, in a batch (Transaction.batched),
    # the writes then go together at its end.
    keys = sorted(new_losses)
    stored_losses = _stored_losses(tx, model_id, sorted(pairs)) if keys else {}
    empty = (0, 0, None)
    merged = _merged(
        [existing.get(cell, empty)[2] for cell in touched] + [stored_losses.get(k, _NO_LOSS)[3] for k in keys],
        [new_delays.get(cell) for cell in touched] + [new_losses[key][4] for key in keys],
    )
    written = []
    for cell, delays_sketch in zip(touched, merged, strict=False):
        before = existing.get(cell, empty)
        written.append(
            (
                model_id,
                *cell,
                cell[2] + cell[0],
                int(before[0]) + predictions.get(cell, 0),
                int(before[1]) + pairs.get(cell, 0),
                delays_sketch or None,
            )
        )
    tx.many(
        f"INSERT INTO loss_rollups (model_id, {_CELL_COLUMNS}, ends, predictions, joined, delays) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model_id, level, segment_key, start, segment_value) "
        "DO UPDATE SET predictions = excluded.predictions, joined = excluded.joined, delays = excluded.delays",
        written,
    )
    if keys:
        tx.many(
            f"INSERT INTO loss_rollup_losses (model_id, {_CELL_COLUMNS}, variant, loss, sum, denominator, count, "
            "sketch, expected) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (model_id, level, segment_key, start, segment_value, variant) DO UPDATE SET "
            "sum = excluded.sum, denominator = excluded.denominator, count = excluded.count, "
            "sketch = excluded.sketch, expected = excluded.expected",
            _rolled_up_losses(model_id, keys, stored_losses, new_losses, merged[len(touched) :]),
        )


# A cell's loss as one join adds it: (name, sum, denominator, count, sketch, expected totals or None).
_CellLoss = tuple[str, float, float, int, bytes, NDArray[np.float64] | None]
# A cell's loss before any pair counted in it: (sum, denominator, count, sketch, expected totals).
_NO_LOSS: tuple[Any, ...] = (0.0, 0.0, 0, None, None)


def _joined_parts(
    joined: Cells | None, delays: NDArray[np.float64], losses: Sequence[PairLosses]
) -> tuple[dict[Cell, int], dict[Cell, bytes], dict[tuple[Cell, int], _CellLoss]]:
    """What the pairs joined add to each of their cells: the pairs, a sketch of their label
    delays, and per loss its sums, a sketch of each pair's loss and the expected totals."""
    pairs: dict[Cell, int] = {}
    new_delays: dict[Cell, bytes] = {}
    new_losses: dict[tuple[Cell, int], _CellLoss] = {}
    if joined is None or not joined.cells:
        return pairs, new_delays, new_losses
    rows, at = joined.flat()
    size = len(joined.cells)
    counted = np.bincount(at, minlength=size)
    values = [delays, *(pair_value(loss.sums, loss.denominators, loss.aggregate) for loss in losses)]
    delay_sketches, *loss_sketches = _sketches(values, joined)
    for index, cell in enumerate(joined.cells):
        pairs[cell] = int(counted[index])
        new_delays[cell] = delay_sketches[index]
    for loss, sketches in zip(losses, loss_sketches, strict=True):
        sums = np.bincount(at, weights=loss.sums[rows], minlength=size).tolist()
        denominators = np.bincount(at, weights=loss.denominators[rows], minlength=size).tolist()
        counts = np.bincount(at, weights=loss.counts[rows], minlength=size).astype(np.int64).tolist()
        expected = None if loss.expected is None else _expected_per_cell(loss.expected[rows], at, size)
        for index, cell in enumerate(joined.cells):
            new_losses[(cell, loss.variant)] = (
                loss.loss,
                sums[index],
                denominators[index],
                counts[index],
                sketches[index],
                None if expected is None else expected[index],
            )
    return pairs, new_delays, new_losses


def _expected_per_cell(moments: NDArray[np.float64], at: NDArray[np.int64], size: int) -> NDArray[np.float64]:
    """The rollup totals (history.expected_totals) of each of `size` cells, pair i in cell at[i]."""
    counted = ~np.isnan(moments).any(axis=1)
    totals = np.zeros((size, EXPECTED_TOTALS))
    totals[:, 0] = np.bincount(at, weights=counted.astype(np.float64), minlength=size)
    for column in range(EXPECTED_TOTALS - 1):
        totals[:, 1 + column] = np.bincount(at, weights=np.where(counted, moments[:, column], 0.0), minlength=size)
    return totals


def _sketches(series: Sequence[NDArray[np.float64]], cells: Cells) -> list[list[bytes]]:
    """For each of `series` (row i's value is `values[i]`; NaN counts in none), the sketch of
    each cell's values, all made in one pass. A group's cells are numbered one after the other, so
    groups that split the rows alike (every level, while all rows fall in one bucket of each) have
    equal cells up to an offset: those are sketched once."""
    found = [[b""] * len(cells.cells) for _ in series]
    groupings: dict[bytes, tuple[NDArray[np.int64], NDArray[np.bool_], int, list[int]]] = {}
    for column in cells.of_row.T:
        present = column >= 0
        if not present.any():
            continue
        first = int(column[present].min())
        relative = np.where(present, column - first, -1)
        signature = relative.tobytes()
        if signature not in groupings:
            groupings[signature] = (relative, present, int(relative.max()) + 1, [])
        groupings[signature][3].append(first)
    values, groups, size = [], [], 0
    for relative, present, width, _ in groupings.values():
        for series_values in series:
            kept = present & ~np.isnan(series_values)
            values.append(series_values[kept])
            groups.append(relative[kept] + size)
            size += width
    if not size:
        return found
    made = sketch.grouped(np.concatenate(values), np.concatenate(groups), size)
    at = 0
    for _, _, width, firsts in groupings.values():
        for which in range(len(series)):
            for first in firsts:
                found[which][first : first + width] = made[at : at + width]
            at += width
    return found


def _stored_losses(tx: Transaction, model_id: int, cells: list[Cell]) -> dict[tuple[Cell, int], tuple[Any, ...]]:
    """The cells' losses as stored, by (cell, variant): sum, denominator, count, sketch, expected."""
    columns = "variant, sum, denominator, count, sketch, expected"
    rows = _stored(tx, "loss_rollup_losses", columns, model_id, cells)
    return {(tuple(row[:4]), int(row[4])): row[5:] for row in rows}


def _rolled_up_losses(
    model_id: int,
    keys: list[tuple[Cell, int]],
    stored: dict[tuple[Cell, int], tuple[Any, ...]],
    new: dict[tuple[Cell, int], _CellLoss],
    sketches: list[bytes],
) -> list[tuple[Any, ...]]:
    """The rows of `loss_rollup_losses` once `new` is added to the cells' losses as `stored`
    (`sketches`: the merged sketch of each of `keys`)."""
    written = []
    for key, loss_sketch in zip(keys, sketches, strict=True):
        (cell, variant), (name, total, denominator, count, _, expected) = key, new[key]
        before = stored.get(key, _NO_LOSS)
        written.append(
            (
                model_id,
                *cell,
                variant,
                name,
                float(before[0]) + total,
                float(before[1]) + denominator,
                int(before[2]) + count,
                loss_sketch or None,
                _added_totals(before[4], expected),
            )
        )
    return written


def _added_totals(stored: bytes | None, added: NDArray[np.float64] | None) -> bytes | None:
    """A cell's expected totals (EXPECTED_TOTALS float64, or none) once `added` is added."""
    if added is None:
        return stored
    before = np.frombuffer(stored, np.float64) if stored else np.zeros(EXPECTED_TOTALS)
    return (before + added).tobytes()


def _merged(old: list[bytes | None], new: list[bytes | None]) -> list[bytes]:
    """Each old sketch merged with its new one, all in one pass; a new sketch without an old one
    is the merge as it is (a merge re-encodes the same bins into the same bytes)."""
    merged = [b"" if sketch is None else sketch for sketch in new]
    both = [at for at, stored in enumerate(old) if stored is not None]
    if both:
        found = sketch.merge(
            [*(old[at] for at in both), *(new[at] for at in both)], [*range(len(both)), *range(len(both))], len(both)
        )
        for at, blob in zip(both, found, strict=True):
            merged[at] = blob
    return merged


def expire(tx: Transaction, model_id: int, cells: Cells) -> None:
    """Count expired predictions into the cells that still hold them (never creating one)."""
    _, at = cells.flat()
    counts = np.bincount(at, minlength=len(cells.cells))
    tx.many(
        "UPDATE loss_rollups SET expired = expired + ? WHERE model_id = ? AND level = ? AND segment_key = ? "
        "AND start = ? AND segment_value = ?",
        [(int(counts[i]), model_id, *cell) for i, cell in enumerate(cells.cells) if counts[i]],
    )


def sweep_cells(tx: Transaction, model_id: int, oldest_end: float | None, limit: int) -> int:
    """Remove up to `limit` of the model's cells that end before `oldest_end` (None: any cell),
    earliest first, with their losses; how many were removed."""
    if limit <= 0:
        return 0
    before = "" if oldest_end is None else " AND ends < ?"
    found = tx.all(
        f"SELECT {_CELL_COLUMNS} FROM loss_rollups WHERE model_id = ?{before} ORDER BY ends LIMIT ?",
        [model_id, *([] if oldest_end is None else [oldest_end]), limit],
    )
    if not found:
        return 0
    keys = [(model_id, int(r[0]), r[1], float(r[2]), r[3]) for r in found]
    for table in ("loss_rollup_losses", "loss_rollups"):  # each cell found on the primary key
        tx.many(
            f"DELETE FROM {table} WHERE model_id = ? AND level = ? AND segment_key = ? AND start = ? "
            "AND segment_value = ?",
            keys,
        )
    return len(found)


def add_keys(tx: Transaction, model_id: int, keys: Sequence[str]) -> None:
    """Segment keys declared anew: every row counted so far has null for them, so each cell of
    key '' is copied as the cell of (key, null)."""
    for key in keys:
        tx.execute(
            f"INSERT INTO loss_rollups (model_id, {_CELL_COLUMNS}, ends, predictions, joined, expired, delays) "
            "SELECT model_id, level, ?, start, '', ends, predictions, joined, expired, delays FROM loss_rollups "
            "WHERE model_id = ? AND segment_key = ''",
            [key, model_id],
        )
        tx.execute(
            f"INSERT INTO loss_rollup_losses (model_id, {_CELL_COLUMNS}, variant, loss, sum, denominator, count, "
            "sketch, expected) SELECT model_id, level, ?, start, '', variant, loss, sum, denominator, count, sketch, "
            "expected FROM loss_rollup_losses WHERE model_id = ? AND segment_key = ''",
            [key, model_id],
        )
