"""The store's counters equal its rows after any sequence of operations, on SQLite and PostgreSQL.

Each model keeps its pending, joined and expired counts in its `loss_models` row (what the model
status and `LOSS_SERVICE_MAX_PENDING` read), updated in the transaction that changes the rows.
Hypothesis drives random sequences of logs (re-sends, ids on both sides, rows of another shape,
joins that fail, ids the store cannot keep), retention sweeps on a clock of its own, deletions and
reconfigurations against a plain model of what the store should hold, and after every step
compares the counters with COUNT(*) of the rows and the rows with the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.store import (
    Pairs,
    RowIdError,
    RowShapeError,
    Store,
    TooManyPendingError,
    UnknownModelError,
)

CONFIG = {"losses": [{"loss": "mse", "options": {}}], "convention": "keras", "dtype": "float64"}
MODELS = ("m", "n")
SIDES = ("predictions", "labels")
RETENTION = 10.0
MAX_PENDING = 6
# A small pool, so that ids repeat across requests and sides; U+001F and U+0085 are kept as given.
GOOD_IDS = ["a", "b", "c", "d", "e", "7", "é", "a\x1fb", "x\x85"]
# Ids neither database keeps as given: the store refuses the request that holds one.
BAD_IDS = ["\x00", "\x00a", "a\x00", "a\x00x", "\ud800"]


class JoinFailedError(Exception):
    """What `on_join` raises when an operation asks for a failing join."""


@dataclass
class Expected:
    """What the store should hold for one model."""

    retention: float = RETENTION
    # side -> id -> (arrival time, joined)
    rows: dict[str, dict[str, tuple[float, bool]]] = field(default_factory=lambda: {s: {} for s in SIDES})
    width: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(SIDES))
    joined: int = 0
    expired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))

    def pending(self, side: str) -> int:
        return sum(not joined for _, joined in self.rows[side].values())


def expected_log(
    models: dict[str, Expected], name: str, side: str, ids: list[str], width: int, fails: bool, now: float
) -> str:
    """Apply one log to the model of the store; the outcome the store must report."""
    if len(set(ids)) != len(ids) or any(i in BAD_IDS for i in ids):
        return "id"
    if name not in models:
        return "unknown"
    model = models[name]
    other = "labels" if side == "predictions" else "predictions"
    if model.width[side] not in (None, width):
        return "shape"
    fresh = [i for i in ids if i not in model.rows[side]]
    joined = [i for i in fresh if i in model.rows[other] and not model.rows[other][i][1]]
    before = model.pending("predictions") + model.pending("labels")
    after = before + len(fresh) - 2 * len(joined)
    if after > MAX_PENDING and after > before:
        return "pending"
    if joined and fails:
        return "join"
    model.width[side] = width
    for i in fresh:
        model.rows[side][i] = (now, i in joined)
    for i in joined:
        model.rows[other][i] = (model.rows[other][i][0], True)
    model.joined += len(joined)
    return "ok"


def expected_sweep(models: dict[str, Expected], now: float) -> dict[str, tuple[int, int, int, int]]:
    swept = {}
    for name, model in models.items():
        cutoff = now - model.retention
        for side in SIDES:
            gone = [i for i, (arrived, _) in model.rows[side].items() if arrived < cutoff]
            model.expired[side] += sum(not model.rows[side][i][1] for i in gone)
            for i in gone:
                del model.rows[side][i]
        swept[name] = (*model.expired.values(), model.pending("predictions"), model.pending("labels"))
    return swept


def logged(store: Store, name: str, side: str, ids: list[str], width: int, fails: bool, now: float) -> str:
    def on_join(_: Any, pairs: Pairs) -> None:
        if fails:
            raise JoinFailedError(pairs.ids)

    rows = np.arange(len(ids) * width, dtype=np.float64).reshape(len(ids), width)
    try:
        store.log(side, name, ids, rows, now=now, max_pending=MAX_PENDING, on_join=on_join)  # type: ignore[arg-type]
    except RowIdError:
        return "id"
    except UnknownModelError:
        return "unknown"
    except RowShapeError:
        return "shape"
    except TooManyPendingError:
        return "pending"
    except JoinFailedError:
        return "join"
    return "ok"


def assert_counters_equal_rows(store: Store, models: dict[str, Expected]) -> None:
    counters = {m.name: m for m in store.models()}
    assert sorted(counters) == sorted(models)
    with store.database.transaction(write=False) as tx:
        for side, table in (("predictions", "loss_predictions"), ("labels", "loss_labels")):
            orphans = tx.one(f"SELECT count(*) FROM {table} WHERE model_id NOT IN (SELECT id FROM loss_models)")
            assert orphans == (0,), f"{table} keeps rows of deleted models"
            for name, expected in models.items():
                model = counters[name]
                pending = getattr(model, f"pending_{side}")
                counted = tx.one(
                    f"SELECT count(*) FROM {table} r JOIN loss_models m ON m.id = r.model_id "
                    "WHERE m.name = ? AND r.joined_at IS NULL",
                    [name],
                )
                assert counted is not None
                assert pending == counted[0] == expected.pending(side), (name, side)
                rows = tx.all(
                    f"SELECT r.id, r.joined_at IS NOT NULL FROM {table} r JOIN loss_models m ON m.id = r.model_id "
                    "WHERE m.name = ?",
                    [name],
                )
                stored = {row_id: bool(joined) for row_id, joined in rows}
                assert stored == {i: joined for i, (_, joined) in expected.rows[side].items()}, (name, side)
                assert getattr(model, f"expired_{side}") == expected.expired[side], (name, side)
    for name, expected in models.items():
        assert counters[name].joined == expected.joined, name


# One request's ids: mostly distinct ids of the pool; sometimes one the store cannot keep, or one twice.
good_ids = st.lists(st.sampled_from(GOOD_IDS), min_size=1, max_size=5, unique=True)
bad_ids = st.tuples(good_ids, st.sampled_from(BAD_IDS), st.integers(0, 5)).map(
    lambda t: [*t[0][: t[2]], t[1], *t[0][t[2] :]]
)
repeated_ids = good_ids.map(lambda ids: [*ids, ids[0]])
# (st.one_of draws its branches alike, however often one is listed: weights by a sampled key.)
request_ids = st.sampled_from(["good"] * 8 + ["bad", "repeated"]).flatmap(
    {"good": good_ids, "bad": bad_ids, "repeated": repeated_ids}.__getitem__
)
step = st.sampled_from([0.0, 0.0, 1.0, 4.0, 11.0])
model_name = st.sampled_from(MODELS)
log = st.tuples(
    st.just("log"),
    step,
    model_name,
    st.sampled_from(SIDES),
    request_ids,
    st.sampled_from([2, 2, 2, 2, 3]),  # rows of another shape now and then
    st.sampled_from([False, False, False, True]),  # True: the join fails, and nothing is stored
)
OPERATIONS = {
    "log": log,
    "sweep": st.tuples(st.just("sweep"), step),
    "delete": st.tuples(st.just("delete"), step, model_name),
    "configure": st.tuples(st.just("configure"), step, model_name, st.sampled_from([RETENTION, 3.0])),
}
operation = st.sampled_from(["log"] * 12 + ["sweep", "sweep", "delete", "configure"]).flatmap(OPERATIONS.__getitem__)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    if request.param == "postgresql":
        url = str(request.getfixturevalue("postgres_url"))
    opened = Store.open(url)
    yield opened
    opened.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=5, max_size=40))
def test_counters_equal_the_rows_after_any_sequence_of_operations(store: Store, operations: list[Any]) -> None:
    # Every example starts from the same two empty models (deleting a model deletes its rows).
    for model in store.models():
        store.delete_model(model.name)
    now = 1_000.0
    models: dict[str, Expected] = {}
    for name in MODELS:
        store.configure_model(name, CONFIG, RETENTION, now=now)
        models[name] = Expected()
    for kind, dt, *args in operations:
        now += dt
        if kind == "log":
            name, side, ids, width, fails = args
            expected = expected_log(models, name, side, ids, width, fails, now)
            assert logged(store, name, side, ids, width, fails, now) == expected, (kind, *args)
            event(f"log: {expected}")
        elif kind == "sweep":
            swept = {s.model: (s.expired_predictions, s.expired_labels, s.pending_predictions, s.pending_labels)
                     for s in store.sweep_expired(now)}  # fmt: skip
            before = {name: tuple(m.expired.values()) for name, m in models.items()}
            after = expected_sweep(models, now)
            # A sweep reports what it expired this time, and what stays pending.
            assert swept == {
                name: (e[0] - before[name][0], e[1] - before[name][1], e[2], e[3]) for name, e in after.items()
            }
        elif kind == "delete":
            (name,) = args
            assert store.delete_model(name) == (name in models)
            models.pop(name, None)
        else:
            name, retention = args
            store.configure_model(name, CONFIG, retention, now=now)
            models.setdefault(name, Expected()).retention = retention
        assert_counters_equal_rows(store, models)
