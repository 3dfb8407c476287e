"""The loss history's rollup cells read back (rollups.py keeps them): a level's cells of one
segment key in a window, with their losses, as columns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.store.database import Transaction
from service.store.history import EXPECTED_TOTALS


@dataclass(frozen=True)
class RollupCells:
    """Cells as stored, column by column: cell i is (start[i], segment[i]) ('' for null)."""

    start: NDArray[np.float64]
    segment: list[str]
    predictions: NDArray[np.int64]
    joined: NDArray[np.int64]
    expired: NDArray[np.int64]
    delays: list[bytes | None]

    def __len__(self) -> int:
        return len(self.segment)


@dataclass(frozen=True)
class RollupLosses:
    """The losses of cells as stored, column by column: one entry per cell and loss variant."""

    start: NDArray[np.float64]
    segment: list[str]
    variant: NDArray[np.int64]
    sum: NDArray[np.float64]
    denominator: NDArray[np.float64]
    count: NDArray[np.int64]
    sketch: list[bytes | None]
    expected: NDArray[np.float64]  # (entries, EXPECTED_TOTALS): zeros where none is kept

    def __len__(self) -> int:
        return len(self.segment)


def read_cells(
    tx: Transaction, model_id: int, level: int, key: str, start: float, end: float
) -> tuple[RollupCells, RollupLosses]:
    """The cells of `level` and segment key `key` ('' for all rows) whose buckets start in
    [start, end), and their losses: two range reads on the tables' primary keys, each answered
    as columns (no object per cell; PostgreSQL's in its binary format: sketches arrive as bytes,
    not hex to decode)."""
    params = [model_id, level, key, start, end]
    where = "WHERE model_id = ? AND level = ? AND segment_key = ? AND start >= ? AND start < ?"
    cells = tx.columns(
        f"SELECT start, segment_value, predictions, joined, expired, delays FROM loss_rollups {where}", params, 6
    )
    losses = tx.columns(
        f"SELECT start, segment_value, variant, sum, denominator, count, sketch, expected FROM loss_rollup_losses "
        f"{where}",
        params,
        8,
    )
    return (
        RollupCells(
            np.array(cells[0], np.float64),
            list(cells[1]),
            np.array(cells[2], np.int64),
            np.array(cells[3], np.int64),
            np.array(cells[4], np.int64),
            list(cells[5]),
        ),
        RollupLosses(
            np.array(losses[0], np.float64),
            list(losses[1]),
            np.array(losses[2], np.int64),
            np.array(losses[3], np.float64),
            np.array(losses[4], np.float64),
            np.array(losses[5], np.int64),
            list(losses[6]),
            _totals_of(losses[7]),
        ),
    )


def _totals_of(blobs: Sequence[Any]) -> NDArray[np.float64]:
    """Cells' expected totals as one (cells, EXPECTED_TOTALS) array, zeros where a cell has none."""
    found = np.zeros((len(blobs), EXPECTED_TOTALS))
    for index, blob in enumerate(blobs):
        if blob:
            found[index] = np.frombuffer(blob, np.float64)
    return found
