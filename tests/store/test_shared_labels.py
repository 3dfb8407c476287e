"""Shared labels in the store (`labels_from`), on SQLite and PostgreSQL: a source's labels are
logged for each model that follows it in the same transaction, each (model, id) joined exactly
once whatever the order, and nothing is stored when any of them refuses."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from service.store import (
    FollowedModelError,
    LabelSourceError,
    Pairs,
    RowShapeError,
    Store,
    TooManyPendingError,
)

CONFIG = {"losses": [{"loss": "mse", "options": {}}], "convention": "keras", "dtype": "float64"}


def keep(_: Any, pairs: Pairs) -> Pairs:
    return pairs


def follower(source: str = "src") -> dict[str, Any]:
    return {**CONFIG, "labels_from": source}


@pytest.fixture
def store(store_url: str) -> Any:
    opened = Store.open(store_url)
    opened.configure_model("src", CONFIG, 1000.0, now=0.0)
    opened.configure_model("f", follower(), 1000.0, now=0.0)
    yield opened
    opened.close()


def log(store: Store, side: str, model: str, ids: list[str], rows: Any, **kwargs: Any) -> Any:
    return store.log(
        side, model, ids, np.asarray(rows, dtype=np.float64), now=1.0, max_pending=kwargs.pop("max_pending", 10**6),
        on_join=keep, **kwargs,
    )  # type: ignore[arg-type]  # fmt: skip


def counts(store: Store, model: str) -> tuple[int, int, int]:
    found = store.model(model)
    assert found is not None
    return found.joined, found.pending_predictions, found.pending_labels


def test_a_source_label_joins_each_follower_once_whichever_side_came_first(store: Store) -> None:
    log(store, "predictions", "f", ["a"], [[1.0]])
    logged = log(store, "labels", "src", ["a", "b"], [[3.0], [4.0]])
    assert logged.pairs.ids == []
    assert len(logged.followers) == 1
    (theirs,) = logged.followers
    assert theirs.model.name == "f"
    assert theirs.pairs.ids == ["a"]
    assert theirs.pairs.predictions.tolist() == [[1.0]]
    assert theirs.pairs.labels.tolist() == [[3.0]]
    # the follower's prediction for b comes after b's label already joined the source: it joins at once
    log(store, "predictions", "src", ["b"], [[0.0]])
    late = log(store, "predictions", "f", ["b"], [[2.0]])
    assert late.pairs.ids == ["b"]
    assert late.pairs.labels.tolist() == [[4.0]]
    assert counts(store, "src") == (1, 0, 1)
    assert counts(store, "f") == (2, 0, 0)
    again = log(store, "labels", "src", ["a"], [[9.0]])  # a repeated label is a duplicate for every model
    assert again.duplicate_ids == ["a"]
    assert again.followers[0].duplicate_ids == ["a"]
    assert counts(store, "f") == (2, 0, 0)


def test_what_a_follower_refuses_leaves_nothing_stored_for_any_model(store: Store) -> None:
    log(store, "labels", "src", ["a"], [[1.0]])  # fixes both models' label shape: one value, a pending in each
    log(store, "predictions", "src", ["c", "d", "e"], [[1.0], [2.0], [3.0]])
    before = {m: counts(store, m) for m in ("src", "f")}
    assert before == {"src": (0, 3, 1), "f": (0, 0, 1)}
    # the source would drain its pending rows; the follower would hold 4 labels waiting, past 3
    with pytest.raises(TooManyPendingError, match="model 'f'"):
        log(store, "labels", "src", ["c", "d", "e"], [[1.0], [2.0], [3.0]], max_pending=3)
    assert {m: counts(store, m) for m in ("src", "f")} == before
    wide = np.zeros((3, 2))
    with pytest.raises(RowShapeError, match="model 'f'"):
        log(store, "labels", "src", ["c", "d", "e"], [[1.0], [2.0], [3.0]], rows_for=lambda m: wide)
    assert {m: counts(store, m) for m in ("src", "f")} == before
    done = log(store, "labels", "src", ["c", "d", "e"], [[1.0], [2.0], [3.0]])
    assert done.pairs.ids == ["c", "d", "e"]
    assert counts(store, "f") == (0, 0, 4)


def test_sources_are_checked_under_the_source_lock(store: Store) -> None:
    with pytest.raises(LabelSourceError, match="itself"):
        store.configure_model("src", follower("src"), 1000.0, now=0.0)
    with pytest.raises(LabelSourceError, match="loop"):
        store.configure_model("src", follower("f"), 1000.0, now=0.0)
    with pytest.raises(LabelSourceError, match="takes its own labels from 'src'"):
        store.configure_model("g", follower("f"), 1000.0, now=0.0)
    with pytest.raises(LabelSourceError, match="no model named 'nope'"):
        store.configure_model("g", follower("nope"), 1000.0, now=0.0)
    assert store.model("g") is None
    with pytest.raises(FollowedModelError, match=r"\['f'\]"):
        store.delete_model("src")
    assert store.model("src") is not None
    store.configure_model("f", CONFIG, 1000.0, now=0.0)  # f stops following: src may go, and f keeps its rows
    assert store.delete_model("src")
    assert store.model("f") is not None


def test_racing_writers_join_each_models_pair_exactly_once(store_url: str) -> None:
    """Six connections: three log the source's labels, three the predictions of the source and
    of its follower, in shuffled overlapping batches; then every id on every side."""
    setup = Store.open(store_url)
    setup.configure_model("src", CONFIG, 1000.0, now=0.0)
    setup.configure_model("f", follower(), 1000.0, now=0.0)
    ids = [str(i) for i in range(400)]
    joined: dict[str, list[str]] = {"src": [], "f": []}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def record(logged: Any) -> None:
        with lock:
            for each in (logged, *logged.followers):
                joined[each.model.name].extend(each.pairs.ids)

    def writer(seed: int) -> None:
        store = Store.open(store_url)
        rng = np.random.default_rng(seed)
        try:
            for _ in range(10):
                chosen = [ids[i] for i in rng.choice(len(ids), 40, replace=False)]
                if seed < 3:
                    record(log(store, "labels", "src", chosen, np.ones((40, 1))))
                else:
                    record(log(store, "predictions", ("src", "f")[seed % 2], chosen, np.ones((40, 1))))
            record(log(store, "labels", "src", ids, np.ones((400, 1))))
            for model in ("src", "f"):
                record(log(store, "predictions", model, ids, np.ones((400, 1))))
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for model in ("src", "f"):
        assert sorted(joined[model]) == sorted(ids), model
        assert counts(setup, model) == (400, 0, 0)
    setup.close()
