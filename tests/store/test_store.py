"""The store on real databases: SQLite files and a throwaway PostgreSQL cluster, same tests for both."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.store import (
    SCHEMA_VERSION,
    Pairs,
    RowShapeError,
    SchemaVersionError,
    Store,
    TooManyPendingError,
    UnknownModelError,
)

CONFIG = {"losses": [{"loss": "mse", "options": {}}], "convention": "keras", "dtype": "float64"}


@pytest.fixture
def url(store_url: str) -> str:
    return store_url


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    opened = Store.open(url)
    opened.configure_model("m", CONFIG, 100.0, now=0.0)
    yield opened
    opened.close()


def keep(_: Any, pairs: Pairs) -> Pairs:
    return pairs


def log(store: Store, side: str, ids: list[str], rows: Any, now: float = 10.0, **kwargs: Any) -> Any:
    return store.log(
        side, "m", ids, np.asarray(rows), now=now, max_pending=kwargs.pop("max_pending", 1000), on_join=keep, **kwargs
    )  # type: ignore[arg-type]


def test_either_side_may_come_first_and_pairs_follow_the_request_order(store: Store) -> None:
    first = log(
        store,
        "predictions",
        ["a", "b", "c"],
        [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        now=10.0,
        timestamps=[4.0, 5.0, 6.0],
    )
    assert (first.accepted, first.pairs.ids, first.joined_result) == (3, [], None)
    early = log(store, "labels", ["z"], [[0.0, 0.0]], now=11.0)
    assert early.pairs.ids == []
    second = log(
        store, "labels", ["c", "x", "a"], [[7.0, 7.0], [8.0, 8.0], [9.0, 9.0]], now=20.0, weights=[2.0, 1.0, 0.5]
    )
    assert second.pairs.ids == ["c", "a"]
    np.testing.assert_array_equal(second.pairs.predictions, [[5.0, 6.0], [1.0, 2.0]])
    np.testing.assert_array_equal(second.pairs.labels, [[7.0, 7.0], [9.0, 9.0]])
    assert second.pairs.weights == [2.0, 0.5]
    np.testing.assert_array_equal(second.pairs.delays, [14.0, 16.0])  # label arrival - prediction time
    late = log(store, "predictions", ["x", "z"], [[0.5, 0.5], [0.25, 0.25]], now=30.0)
    assert late.pairs.ids == ["x", "z"]
    assert late.pairs.weights == [1.0, None]
    np.testing.assert_array_equal(late.pairs.delays, [20.0 - 30.0, 11.0 - 30.0])  # labels came first
    model = store.model("m")
    assert model is not None
    assert (model.pending_predictions, model.pending_labels, model.joined) == (1, 0, 4)


def test_a_repeated_id_is_a_duplicate_and_the_first_write_wins(store: Store) -> None:
    log(store, "predictions", ["a", "b"], [[1.0], [2.0]])
    again = log(store, "predictions", ["b", "a", "c"], [[99.0], [99.0], [3.0]])
    assert (again.accepted, again.duplicate_ids) == (1, ["b", "a"])
    joined = log(store, "labels", ["a", "b"], [[0.0], [0.0]])
    np.testing.assert_array_equal(joined.pairs.predictions, [[1.0], [2.0]])
    # Once joined, a pair is never joined again: both sides now see the ids as duplicates.
    for side in ("labels", "predictions"):
        retried = log(store, side, ["a", "b"], [[5.0], [5.0]])
        assert (retried.accepted, retried.duplicate_ids, retried.pairs.ids) == (0, ["a", "b"], [])
    model = store.model("m")
    assert model is not None
    assert (model.joined, model.pending_predictions, model.pending_labels) == (2, 1, 0)


def test_the_first_rows_fix_each_sides_shape(store: Store) -> None:
    log(store, "predictions", ["a"], [[1.0, 2.0]])
    with pytest.raises(RowShapeError, match=r"shape \[2\].*got \[3\]"):
        log(store, "predictions", ["b"], [[1.0, 2.0, 3.0]])
    log(store, "labels", ["x"], [1])
    with pytest.raises(RowShapeError, match=r"shape \[\].*got \[1\]"):
        log(store, "labels", ["y"], [[1]])
    model = store.model("m")
    assert model is not None
    assert (model.prediction_shape, model.label_shape, model.pending_predictions) == ((2,), (), 1)


def test_rows_of_several_dtypes_join_widened_exactly(store: Store) -> None:
    log(store, "predictions", ["a"], np.array([[0.1]], dtype=np.float32))
    log(store, "predictions", ["b"], np.array([[0.1]], dtype=np.float64))
    joined = log(store, "labels", ["a", "b"], np.array([1, 2]))
    assert joined.pairs.labels.dtype == np.int64
    np.testing.assert_array_equal(joined.pairs.predictions, [[np.float32(0.1)], [0.1]])


def test_the_pending_limit_refuses_the_whole_request(store: Store) -> None:
    log(store, "predictions", ["a", "b"], [[1.0], [2.0]], max_pending=3)
    with pytest.raises(TooManyPendingError, match="would hold 4 rows"):
        log(store, "labels", ["x", "y"], [[1.0], [2.0]], max_pending=3)
    model = store.model("m")
    assert model is not None
    assert (model.pending_predictions, model.pending_labels, model.label_shape) == (2, 0, None)
    # Draining is always allowed, even over the limit.
    drained = log(store, "labels", ["a", "b", "q"], [[1.0], [2.0], [3.0]], max_pending=1)
    assert drained.pairs.ids == ["a", "b"]


def test_a_failing_join_leaves_nothing_stored(store: Store) -> None:
    log(store, "predictions", ["a"], [[1.0]])

    def refuse(*_: Any) -> None:
        raise ValueError("the engine refused")

    with pytest.raises(ValueError, match="refused"):
        store.log("labels", "m", ["a", "b"], np.ones((2, 1)), now=10.0, max_pending=100, on_join=refuse)
    model = store.model("m")
    assert model is not None
    assert (model.pending_predictions, model.pending_labels, model.joined, model.label_shape) == (1, 0, 0, None)
    assert log(store, "labels", ["a"], [[1.0]]).pairs.ids == ["a"]


def test_unknown_models_and_deletion(store: Store) -> None:
    with pytest.raises(UnknownModelError):
        store.log("predictions", "nope", ["a"], np.ones((1, 1)), now=1.0, max_pending=10, on_join=keep)
    log(store, "predictions", ["a"], [[1.0]])
    assert store.delete_model("m")
    assert not store.delete_model("m")
    assert store.model("m") is None
    store.configure_model("m", CONFIG, 100.0, now=50.0)
    fresh = log(store, "predictions", ["a"], [[1.0, 2.0]])  # no old row, no old shape
    assert (fresh.accepted, fresh.duplicate_ids, fresh.model.prediction_shape) == (1, [], (2,))


def test_reconfiguring_keeps_rows_and_counters(store: Store) -> None:
    log(store, "predictions", ["a"], [[1.0]])
    changed = store.configure_model("m", {**CONFIG, "dtype": "float32"}, 5.0, now=60.0)
    assert (changed.config["dtype"], changed.retention_seconds, changed.created_at, changed.updated_at) == (
        "float32",
        5.0,
        0.0,
        60.0,
    )
    assert changed.pending_predictions == 1
    assert [m.name for m in store.models()] == ["m"]


def test_the_sweep_removes_rows_past_retention_and_counts_the_unjoined(store: Store) -> None:
    log(store, "predictions", ["old", "joined"], [[1.0], [2.0]], now=0.0)
    log(store, "labels", ["joined", "lonely"], [[1.0], [1.0]], now=50.0)
    log(store, "predictions", ["new"], [[3.0]], now=150.0)
    assert store.oldest_pending("m") == 0.0
    swept = store.sweep_expired(now=120.0)  # retention 100: rows that arrived before 20 go
    assert [
        (s.model, s.expired_predictions, s.expired_labels, s.pending_predictions, s.pending_labels) for s in swept
    ] == [("m", 1, 0, 1, 1)]
    assert store.oldest_pending("m") == 50.0
    # The prediction "joined" is gone, so its id may be logged anew; its label is still retained.
    again = log(store, "predictions", ["joined", "old"], [[9.0], [9.0]], now=121.0)
    assert (again.accepted, again.pairs.ids) == (2, [])
    store.sweep_expired(now=1000.0)
    model = store.model("m")
    assert model is not None
    assert (model.expired_predictions, model.expired_labels, model.pending_predictions, model.pending_labels) == (
        4,
        1,
        0,
        0,
    )
    assert model.joined == 1
    assert store.oldest_pending("m") is None


def test_a_newer_schema_is_refused(url: str) -> None:
    Store.open(url).close()
    store = Store.open(url)
    with store.database.transaction() as tx:
        tx.execute("UPDATE loss_schema SET version = ?", [SCHEMA_VERSION + 1])
    store.close()
    with pytest.raises(SchemaVersionError, match=f"version is {SCHEMA_VERSION + 1}, newer than the {SCHEMA_VERSION}"):
        Store.open(url)


def test_racing_writers_join_each_pair_exactly_once(url: str) -> None:
    """Four connections (threads) log overlapping predictions and labels for the same ids, in
    shuffled batches; every pair must be joined by exactly one of their transactions."""
    setup = Store.open(url)
    setup.configure_model("m", CONFIG, 1000.0, now=0.0)
    ids = [str(i) for i in range(400)]
    joined: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        store = Store.open(url)
        rng = np.random.default_rng(seed)
        try:
            for _ in range(8):
                side = "predictions" if rng.random() < 0.5 else "labels"
                chosen = [ids[i] for i in rng.choice(len(ids), 60, replace=False)]
                result = store.log(side, "m", chosen, np.ones((60, 1)), now=1.0, max_pending=10**6, on_join=keep)
                with lock:
                    joined.extend(result.pairs.ids)
            for side in ("predictions", "labels"):  # finally, every id on both sides
                result = store.log(side, "m", ids, np.ones((len(ids), 1)), now=2.0, max_pending=10**6, on_join=keep)
                with lock:
                    joined.extend(result.pairs.ids)
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(joined) == sorted(ids)
    model = setup.model("m")
    assert model is not None
    assert (model.joined, model.pending_predictions, model.pending_labels) == (400, 0, 0)
    setup.close()


def test_a_million_pending_rows_of_ten_float32_stay_under_three_times_their_bytes_in_sqlite(tmp_path: Path) -> None:
    """The issue's storage target, on the embedded database: 10^6 rows x 40 bytes of values."""
    store = Store.open(f"sqlite:///{tmp_path}/big.sqlite3")
    store.configure_model("m", CONFIG, 1000.0, now=0.0)
    rows = np.random.default_rng(0).random((100_000, 10), dtype=np.float32)
    for start in range(0, 1_000_000, 100_000):
        ids = [str(i) for i in range(start, start + 100_000)]
        store.log("predictions", "m", ids, rows, now=1.0, max_pending=10**7, on_join=keep)
    store.close()
    size = sum(path.stat().st_size for path in tmp_path.iterdir())
    assert size <= 3 * 1_000_000 * 40, f"{size / 1e6:.1f} MB on disk for 40 MB of values"
