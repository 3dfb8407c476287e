"""The "loss history" migration on a store of the layout before it (the inference events'), on
SQLite and PostgreSQL: the rows stay, a pair joined from an earlier prediction is kept out of the
rollups (which never counted its prediction), and rows logged afterwards are counted."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from service.store import Model, Pairs, Store
from service.store.connect import connect
from service.store.schema import MIGRATIONS, SCHEMA_VERSION

CONFIG = {"losses": [{"loss": "mse", "options": {}}], "convention": "keras", "dtype": "float64"}


def nothing(model: Model, pairs: Pairs) -> None:
    return None


def counted(store: Store) -> tuple[int, int]:
    """Predictions and joined pairs the model's rollups count (all rows, the finest level)."""
    with store.database.transaction(write=False) as tx:
        found = tx.one(
            "SELECT coalesce(sum(predictions), 0), coalesce(sum(joined), 0) FROM loss_rollups "
            "WHERE segment_key = '' AND level = 60"
        )
    assert found is not None
    return int(found[0]), int(found[1])


def test_a_store_of_the_events_layout_gains_history_and_keeps_its_rows(store_url: str) -> None:
    names = [name for name, _ in MIGRATIONS]
    before = names.index("loss history")
    assert names[before - 1] == "inference events"
    database = connect(store_url)
    try:  # the store as the events layout left it, with a model and a pending prediction
        with database.transaction() as tx:
            tx.execute("CREATE TABLE loss_schema (version INTEGER NOT NULL)")
            for _, step in MIGRATIONS[:before]:
                step(tx)
            tx.execute("INSERT INTO loss_schema (version) VALUES (?)", [before])
            tx.execute(
                "INSERT INTO loss_models (name, config, retention_seconds, created_at, updated_at, "
                "pending_predictions, prediction_shape) VALUES ('m', ?, 1e9, 0.0, 0.0, 1, '[]')",
                [json.dumps(CONFIG)],
            )
            found = tx.one("SELECT id FROM loss_models WHERE name = 'm'")
            assert found is not None
            tx.execute(
                "INSERT INTO loss_predictions (model_id, id, arrived, at, dtype, payload) "
                "VALUES (?, 'a', 7.0, 7.0, 0, ?)",
                [found[0], np.float64(0.5).tobytes()],
            )
    finally:
        database.close()
    store = Store.open(store_url)
    try:
        with store.database.transaction(write=False) as tx:
            assert tx.one("SELECT max(version) FROM loss_schema") == (SCHEMA_VERSION,)
        assert store.oldest_pending("m") == 7.0
        logged: Any = store.log("labels", "m", ["a"], np.array([1.5]), now=100.0, max_pending=9, on_join=nothing)
        assert logged.pairs.ids == ["a"]
        assert logged.pairs.rolled_up == [False]
        assert counted(store) == (0, 0)  # its prediction was never counted: neither is its pair
        store.log("predictions", "m", ["b"], np.array([0.5]), now=110.0, max_pending=9, on_join=nothing)
        store.log("labels", "m", ["b"], np.array([1.0]), now=120.0, max_pending=9, on_join=nothing)
        assert counted(store) == (1, 1)
    finally:
        store.close()
