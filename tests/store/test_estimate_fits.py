"""The calibration fit's reads and writes in the store (store/fits.py), on SQLite and PostgreSQL:
the most recent joined pairs that kept their payloads, by prediction time, decoded exactly from
the dtype each row was stored in; and a fit kept unless one read at more joined pairs is."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from service.store import Pairs, Store, UnknownModelError

CONFIG = {"losses": [{"loss": "mse", "options": {}}], "convention": "keras", "dtype": "float64"}


def keep(_: Any, pairs: Pairs) -> Pairs:
    return pairs


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()


def log(store: Store, side: str, ids: list[str], rows: Any, **kwargs: Any) -> Any:
    return store.log(
        side, "m", ids, np.asarray(rows), now=kwargs.pop("now", 1.0), max_pending=10**6, on_join=keep, **kwargs
    )  # type: ignore[arg-type]


def test_the_most_recent_pairs_that_kept_their_payloads_by_prediction_time(store: Store) -> None:
    store.configure_model("m", CONFIG, 1e9, now=0.0)
    # joined without keep_pairs: no payloads left, so never read
    log(store, "predictions", ["old0", "old1"], np.array([[9.0, 9.0], [9.0, 9.0]]), timestamps=[500.0, 501.0])
    log(store, "labels", ["old0", "old1"], np.array([[1.0], [1.0]]))
    store.configure_model("m", {**CONFIG, "keep_pairs": True}, 1e9, now=1.0)
    rng = np.random.default_rng(2)
    n = 9
    times = np.array([10.0, 30.0, 20.0, 30.0, 40.0, 5.0, 60.0, 50.0, 30.0])  # ties at 30: by id
    predictions = rng.normal(size=(n, 2))
    labels = rng.normal(size=(n, 1))
    ids = [f"k{i}" for i in range(n)]
    # float32 then float64 predictions, labels float64 then float32: each row decoded from its own dtype
    log(store, "predictions", ids[:5], predictions[:5].astype(np.float32), timestamps=times[:5].tolist())
    log(store, "predictions", ids[5:], predictions[5:], timestamps=times[5:].tolist())
    log(store, "predictions", ["pending"], np.array([[7.0, 7.0]]), timestamps=[1000.0])
    weights = [0.5, 2.0, 1.5, 3.0]
    log(store, "labels", ids[:4], labels[:4], weights=weights)
    log(store, "labels", ids[4:], labels[4:].astype(np.float32))

    got = store.recent_pairs("m", 6)
    assert got is not None
    assert got.model.joined == 11
    # By time, latest first, ties by id latest first: k6 60, k7 50, k4 40, k8 30, k3 30, k1 30.
    order = [6, 7, 4, 8, 3, 1]
    stored = np.r_[predictions[:5].astype(np.float32).astype(np.float64), predictions[5:]]
    assert got.predictions.dtype == np.float64
    assert np.array_equal(got.predictions, stored[order])
    stored_labels = np.r_[labels[:4], labels[4:].astype(np.float32).astype(np.float64)]
    assert np.array_equal(got.labels, stored_labels[order])
    assert got.weights.tolist() == [1.0, 1.0, 1.0, 1.0, 3.0, 2.0]
    assert (got.first, got.last) == (30.0, 60.0)

    latest = store.recent_pairs("m", 2)  # labels stored as float32 only, read as float64
    assert latest is not None
    assert latest.labels.dtype == np.float64
    assert np.array_equal(latest.labels, stored_labels[[6, 7]])

    everything = store.recent_pairs("m", 100)
    assert everything is not None
    assert len(everything) == n  # neither the pending prediction nor the pairs without payloads
    empty = store.recent_pairs("m", 0)
    assert empty is not None
    assert empty.predictions.shape == (0, 2)
    assert empty.labels.shape == (0, 1)
    assert (empty.first, empty.last) == (None, None)
    assert store.recent_pairs("nope", 5) is None


def test_a_fit_is_kept_unless_one_read_at_more_joined_pairs_is(store: Store) -> None:
    store.configure_model("m", CONFIG, 1e9, now=0.0)
    assert store.save_fit("m", {"joined": 20, "parameters": None})
    assert not store.save_fit("m", {"joined": 10, "parameters": {"a": 1}})
    model = store.model("m")
    assert model is not None
    assert model.estimate_fit == {"joined": 20, "parameters": None}
    assert store.save_fit("m", {"joined": 20, "parameters": {"b": 2}})
    assert store.save_fit("m", {"joined": 30, "parameters": {"c": 3}})
    model = store.model("m")
    assert model is not None
    assert model.estimate_fit == {"joined": 30, "parameters": {"c": 3}}
    with pytest.raises(UnknownModelError, match="nope"):
        store.save_fit("nope", {"joined": 1})


def test_a_kept_fit_without_a_joined_count_is_replaced_even_by_one_read_at_none(store: Store) -> None:
    store.configure_model("m", CONFIG, 1e9, now=0.0)
    with store.database.transaction() as tx:  # as an earlier version kept it
        tx.execute("UPDATE loss_models SET estimate_fit = ? WHERE name = ?", ['{"parameters": null}', "m"])
    assert store.save_fit("m", {"joined": 0, "parameters": {"a": 1}})
    model = store.model("m")
    assert model is not None
    assert model.estimate_fit == {"joined": 0, "parameters": {"a": 1}}


def test_the_fits_read_never_waits_for_a_writer_and_sees_only_what_was_committed(store: Store) -> None:
    """A write transaction held open by another thread (a log of labels underway): the read of the
    pairs answers meanwhile, from the last commit. The writer waits for it (60 s at most, so that a
    read that waits for the writer fails instead of hanging)."""
    store.configure_model("m", {**CONFIG, "keep_pairs": True}, 1e9, now=0.0)
    log(store, "predictions", ["a", "b"], np.array([[1.0, 2.0], [3.0, 4.0]]), timestamps=[10.0, 20.0])
    log(store, "labels", ["a"], np.array([[5.0]]))
    writing, read = threading.Event(), threading.Event()
    waited_out: list[bool] = []

    def writer() -> None:
        with store.database.transaction() as tx:
            tx.execute("UPDATE loss_models SET estimate_fit = ? WHERE name = ?", ['{"joined": 99}', "m"])
            writing.set()
            waited_out.append(not read.wait(60))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert writing.wait(60)
        got = store.recent_pairs("m", 10)
        read.set()
    finally:
        read.set()
        thread.join(60)
    assert waited_out == [False]
    assert got is not None
    assert got.model.estimate_fit is None  # the writer's change was not committed yet
    assert np.array_equal(got.predictions, [[1.0, 2.0]])
    assert np.array_equal(got.labels, [[5.0]])
