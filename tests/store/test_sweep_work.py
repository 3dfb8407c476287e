"""The retention sweep and a model's deletion remove the rows they found by those rows' keys,
whatever the database's statistics say: a batch of 100 rows does the same work in a model holding
ten times the rows, counted as test_join_work counts a join's work (SQLite's virtual-machine
steps, PostgreSQL's buffers), never by the clock.

PostgreSQL's statistics are those of the empty tables, which lead its planner to read a list of
ids as all of a model's rows filtered by the list, at a cost that grows with the model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.store import Store
from tests.store.test_join_work import CONFIG, counted, log


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    if not store_url.startswith("sqlite"):
        with opened.database.transaction() as tx:
            tx.execute("ANALYZE")  # statistics of the empty tables, stale from the first row on
    yield opened
    opened.close()


def fill(store: Store, model: str, rows: int) -> None:
    """100 predictions logged at time 1, then `rows` waiting predictions and `rows` joined pairs at
    time 1,000 (a retention of 100 s at 1,050 leaves the last ones)."""
    store.configure_model(model, CONFIG, 100.0, now=0.0)
    log(store, "predictions", model, [f"old{i}" for i in range(100)], now=1.0)
    for start in range(0, rows, 1000):
        block = range(start, min(rows, start + 1000))
        log(store, "predictions", model, [f"w{i}" for i in block], now=1000.0)
        log(store, "predictions", model, [f"j{i}" for i in block], now=1000.0)
        log(store, "labels", model, [f"j{i}" for i in block], now=1000.0)


def deleting_work(statements: list[tuple[str, int]]) -> int:
    """The work of a batch's statements on the row tables, one of which deletes rows."""
    assert any(sql.lstrip().upper().startswith("DELETE") for sql, _ in statements), statements
    return sum(cost for _, cost in statements)


def test_a_sweep_batch_does_the_same_work_in_a_model_holding_ten_times_the_rows(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = {}
    for model, rows in (("small", 1_000), ("large", 10_000)):
        fill(store, model, rows)
        with counted(monkeypatch) as statements:
            swept = store.sweep_batch(model, now=1050.0, limit=1_000)
        assert swept is not None
        assert swept.removed == 100, swept
        work[model] = deleting_work(statements)
        found = store.model(model)
        assert found is not None
        assert found.pending_predictions == rows  # the 100 expired, the rest kept
    assert work["large"] <= 1.25 * work["small"] + 50, work


def test_a_deletion_batch_does_the_same_work_in_a_model_holding_ten_times_the_rows(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = {}
    for model, rows in (("small", 1_000), ("large", 10_000)):
        fill(store, model, rows)
        with counted(monkeypatch) as statements:
            assert store.delete_batch(model, limit=100) is False
        work[model] = deleting_work(statements)
    assert work["large"] <= 1.25 * work["small"] + 50, work
