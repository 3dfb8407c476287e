"""A join finds each of its ids on the row tables' primary keys, whatever the database's statistics
say: logging labels into a model holding ten times the rows (waiting and joined) does the same
work, counted in the statements that read and update the row tables as they run (SQLite's
virtual-machine steps, PostgreSQL's buffers), never by the clock.

PostgreSQL's statistics here are those of the empty tables (ANALYZE right after they are made),
which is what led its planner to read a model's rows by `model_id` alone and filter the ids, at
a cost that grew with the model."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from service.store import Pairs, Store
from service.store.database import Transaction

CONFIG = {"losses": [{"loss": "mse", "options": {}}], "convention": "keras", "dtype": "float64"}
# A statement that reads, updates or deletes rows of a row table.
ROW_TABLES = re.compile(r"^\s*(SELECT|UPDATE|DELETE)\b.*\bloss_(predictions|labels)\b", re.DOTALL | re.IGNORECASE)


@pytest.fixture
def url(store_url: str) -> str:
    return store_url


def keep(_: Any, pairs: Pairs) -> Pairs:
    return pairs


def log(store: Store, side: str, model: str, ids: list[str], now: float) -> Any:
    rows = np.ones((len(ids), 2))
    return store.log(side, model, ids, rows, now=now, max_pending=10**9, on_join=keep)  # type: ignore[arg-type]


def fill(store: Store, model: str, waiting: int, joined: int) -> None:
    """`joined` pairs, then `waiting` predictions, logged as a client would, 1,000 rows a request."""
    for start in range(0, joined, 1000):
        ids = [f"j{i}" for i in range(start, min(joined, start + 1000))]
        log(store, "predictions", model, ids, now=1.0)
        log(store, "labels", model, ids, now=2.0)
    for start in range(0, waiting, 1000):
        log(store, "predictions", model, [f"w{i}" for i in range(start, min(waiting, start + 1000))], now=3.0)


def _buffers(node: dict[str, Any]) -> int:
    # A node's counts include its children's.
    return int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))


@contextlib.contextmanager
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Each statement on a row table that the store runs, with the work it does: on SQLite the
    virtual-machine steps of the statement itself; on PostgreSQL the buffers of the same statement
    run by EXPLAIN ANALYZE just before it, in its transaction, then undone (a savepoint)."""
    work: list[tuple[str, int]] = []
    execute, one = Transaction.execute, Transaction.one

    def measured(original: Any) -> Any:
        def run(self: Transaction, sql: str, params: Any = (), **options: Any) -> Any:
            if not ROW_TABLES.match(sql):
                return original(self, sql, params, **options)
            cursor = self._cursor
            if self.dialect.name == "sqlite":
                steps = 0

                def step() -> int:
                    nonlocal steps
                    steps += 1
                    return 0

                cursor.connection.set_progress_handler(step, 1)
                try:
                    return original(self, sql, params, **options)
                finally:
                    cursor.connection.set_progress_handler(None, 1)
                    work.append((sql, steps))
            execute(self, "SAVEPOINT counted")
            plan = one(self, f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
            execute(self, "ROLLBACK TO SAVEPOINT counted")
            assert plan is not None
            found = plan[0] if isinstance(plan[0], list) else json.loads(plan[0])
            work.append((sql, _buffers(found[0]["Plan"])))
            return original(self, sql, params, **options)

        return run

    with monkeypatch.context() as patch:
        patch.setattr(Transaction, "all", measured(Transaction.all))
        patch.setattr(Transaction, "execute", measured(Transaction.execute))
        yield work


def test_a_join_does_the_same_work_in_a_model_holding_ten_times_the_rows(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(url)
    try:
        if not url.startswith("sqlite"):
            with store.database.transaction() as tx:
                tx.execute("ANALYZE")  # statistics of the empty tables, stale from the first row on
        work = {}
        for model, waiting, joined in (("small", 300, 2_000), ("large", 3_000, 20_000)):
            store.configure_model(model, CONFIG, 10.0**9, now=0.0)
            fill(store, model, waiting, joined)
            ids = [f"w{i}" for i in range(0, 200, 2)] + [f"new{i}" for i in range(20)]
            with counted(monkeypatch) as statements:
                logged = log(store, "labels", model, ids, now=4.0)
            assert logged.pairs.ids == ids[:100]
            assert logged.accepted == 120
            # the lookup and the partners' update; both databases run at least these two
            assert len(statements) >= 2, statements
            work[model] = sum(cost for _, cost in statements)
            found = store.model(model)
            assert found is not None
            assert (found.pending_predictions, found.pending_labels) == (waiting - 100, 20)
        # Reading the model's waiting rows (or all of them) and filtering the ids costs ~10 times
        # more at ten times the rows; a seek per id costs the same, give or take a B-tree level.
        assert work["large"] <= 1.25 * work["small"] + 50, work
    finally:
        store.close()
