"""The rollup cells a join or a sweep touches are found on the tables' whole primary key, so that
their cost does not grow with the cells a model keeps (43,200 per segment value at 60 s over 30
days): SQLite's own query plans of the statements the store runs, read with EXPLAIN QUERY PLAN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.store import Store, history, pairs, rollups

CONFIG = {"losses": [{"loss": "mse", "options": {}}], "convention": "keras", "dtype": "float64", "segments": ["k"]}
FULL_KEY = "PRIMARY KEY (model_id=? AND level=? AND segment_key=? AND start=? AND segment_value=?)"


class Recording:
    """A transaction that keeps each statement it runs, with its (first) parameters."""

    def __init__(self, tx: Any) -> None:
        self.tx, self.dialect, self.statements = tx, tx.dialect, []

    def all(self, sql: str, params: Any = ()) -> Any:
        self.statements.append((sql, list(params)))
        return self.tx.all(sql, params)

    def execute(self, sql: str, params: Any = ()) -> Any:
        self.statements.append((sql, list(params)))
        return self.tx.execute(sql, params)

    def many(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        if rows:
            self.statements.append((sql, list(rows[0])))
        return self.tx.many(sql, rows)


def plans(tx: Any, statements: list[tuple[str, list[Any]]]) -> list[str]:
    """The plan steps that read the rollup tables, of every SELECT and DELETE among `statements`."""
    found = []
    for sql, params in statements:
        if sql.lstrip().split()[0].upper() in {"SELECT", "DELETE"} and "loss_rollup" in sql:
            for row in tx.all(f"EXPLAIN QUERY PLAN {sql}", params):
                if "json_each" not in row[3] and ("SEARCH" in row[3] or "SCAN" in row[3]):
                    found.append(row[3])
    return found


def test_joins_and_sweeps_find_each_rollup_cell_on_its_whole_primary_key(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/store.sqlite3")
    store.configure_model("m", CONFIG, 10.0**6, now=0.0)
    n, now = 50, 1_800_000_000.0
    times = now - np.arange(n) * 600.0  # many minutes, hours: many cells
    segments = [{"k": f"v{i % 7}"} for i in range(n)]
    losses = [history.PairLosses(1, "mse", "mean", np.arange(n, dtype=float), np.ones(n), np.ones(n, np.int64))]
    with store.database.transaction() as tx:
        model_id = tx.one("SELECT id FROM loss_models WHERE name = ?", ["m"])[0]
        recording = Recording(tx)
        cells = rollups.cells_of(times, segments, ["k"], now - 10.0**6)
        rollups.roll_up(recording, model_id, cells, None, np.zeros(0), [])  # type: ignore[arg-type]
        rollups.roll_up(recording, model_id, None, cells, np.ones(n), losses)  # type: ignore[arg-type]
        assert rollups.sweep_cells(recording, model_id, now + 10.0**6, 40) == 40  # type: ignore[arg-type]
        steps = plans(tx, recording.statements)
    store.close()
    by_end = [step for step in steps if "loss_rollups_by_end" in step]
    by_cell = [step for step in steps if step not in by_end]
    # the cells read twice per table (two roll-ups: rollups, then rollups and losses), removed per table
    assert len(by_cell) == 5, steps
    assert all(step.startswith("SEARCH") and step.endswith(FULL_KEY) for step in by_cell), steps
    assert len(by_end) == 1, steps
    assert by_end[0].startswith("SEARCH"), steps


def test_an_export_batch_late_in_the_window_does_the_work_of_one_early_in_it(tmp_path: Path) -> None:
    """Work counted in SQLite's virtual-machine steps (its progress handler): a batch of the rows
    after the 3,800th costs what one after the 100th does (not nine times as much, as when the
    index range began at the window's start)."""
    store = Store.open(f"sqlite:///{tmp_path}/store.sqlite3")
    store.configure_model("m", {**CONFIG, "segments": []}, 10.0**6, now=0.0)
    n, limit = 4_000, 100
    ids = [f"id{i:05d}" for i in range(n)]
    times = [1_000.0 + i for i in range(n)]
    rows = np.zeros((n, 1))
    store.log("predictions", "m", ids, rows, now=1.0, max_pending=n, timestamps=times, on_join=lambda *_: None)
    store.log("labels", "m", ids, rows, now=2.0, max_pending=n, on_join=lambda *_: None)
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    def work(after: int) -> tuple[int, list[str]]:
        with store.database.transaction() as tx:
            model_id = tx.one("SELECT id FROM loss_models WHERE name = ?", ["m"])[0]
            connection = store.database._connection  # type: ignore[attr-defined]
            steps[0] = 0
            connection.set_progress_handler(count, 1)
            found = pairs.read_rows(tx, model_id, 0.0, 10.0**9, (times[after], ids[after]), limit, True)
            connection.set_progress_handler(None, 1)
        return steps[0], [row.id for row in found]

    early, early_ids = work(100)
    late, late_ids = work(3_800)
    store.close()
    assert early_ids == ids[101 : 101 + limit]
    assert late_ids == ids[3_801 : 3_801 + limit]
    assert late < 2 * early, (early, late)
