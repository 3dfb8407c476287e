"""Two models' joined pairs of the same ids, read back side by side for a comparison: the
challenger's prediction rows made in a window, each with the champion's row of its id where both
have joined, as columns (their `HISTORY_LOSS` entries as bytes, viewed once per batch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.store.database import Transaction
from service.store.history import entries_of
from service.store.pairs import MADE, _window


@dataclass(frozen=True)
class CommonPairs:
    """One batch of ids both models joined, in the challenger's (time, id) order: each id's
    prediction time (the challenger's), its value of the segment key asked for (None where it has
    none, or no key was asked for), and each model's losses: every row's `HISTORY_LOSS` entries
    end to end, and the row each entry belongs to."""

    ids: Sequence[str]
    made: NDArray[np.float64]
    segments: Sequence[str | None]
    challenger: NDArray[Any]
    challenger_rows: NDArray[np.intp]
    champion: NDArray[Any]
    champion_rows: NDArray[np.intp]

    def __len__(self) -> int:
        return len(self.ids)


def read_common(
    tx: Transaction,
    challenger_id: int,
    champion_id: int,
    start: float,
    end: float,
    after: tuple[float, str] | None,
    limit: int,
    key: str | None,
) -> CommonPairs:
    """Up to `limit` ids both models joined whose challenger prediction was made in [start, end),
    after `after` (the last of the previous batch) in (time, id) order. The champion's row of each
    id is found on its primary key: the cost grows with the challenger's rows in the window."""
    conditions, params = _window(challenger_id, start, end, after)
    conditions.append("p.joined_at IS NOT NULL")
    sqlite = tx.dialect.name == "sqlite"
    segment = "NULL" if key is None else ("p.segments ->> ?" if sqlite else "(p.segments::json) ->> ?")
    selected: list[Any] = [] if key is None else [f"$.{key}" if sqlite else key]
    # b"" stands for a row's missing losses, so that each column's bytes join and measure in C.
    sql = (
        f"SELECT p.id, {MADE}, {segment}, coalesce(p.losses, l.losses, ?), coalesce(q.losses, m.losses, ?) "
        "FROM loss_predictions AS p "
        "JOIN loss_predictions AS q ON q.model_id = ? AND q.id = p.id AND q.joined_at IS NOT NULL "
        "LEFT JOIN loss_labels AS l ON l.model_id = p.model_id AND l.id = p.id "
        "LEFT JOIN loss_labels AS m ON m.model_id = q.model_id AND m.id = q.id "
        f"WHERE {' AND '.join(conditions)} ORDER BY {MADE}, p.id LIMIT ?"
    )
    columns = tx.columns(sql, [*selected, b"", b"", champion_id, *params, limit], 5)
    count = len(columns[0])
    challenger, challenger_rows = entries_of(columns[3], count)
    champion, champion_rows = entries_of(columns[4], count)
    return CommonPairs(
        ids=columns[0],
        made=np.fromiter(columns[1], np.float64, count),
        segments=columns[2] if count else (),
        challenger=challenger,
        challenger_rows=challenger_rows,
        champion=champion,
        champion_rows=champion_rows,
    )
