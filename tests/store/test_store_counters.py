"""The store's counters equal its rows after any sequence of operations, on SQLite and PostgreSQL.

Each model keeps its pending, joined and expired counts in its `loss_models` row (what the model
status and `LOSS_SERVICE_MAX_PENDING` read), updated in the transaction that changes the rows.
Hypothesis drives random sequences of logs (re-sends, ids on both sides, rows of another shape,
joins that fail, ids the store cannot keep), retention sweeps on a clock of its own, deletions and
reconfigurations against a plain model of what the store should hold, and after every step
compares the counters with COUNT(*) of the rows and the rows with the model.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
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


@pytest.mark.parametrize(
    ("ids", "index", "reason"),
    [
        (["\x00a", "\x00b"], 0, "an id cannot hold U+0000"),
        (["a", "a\x00x"], 1, "an id cannot hold U+0000"),
        (["a", "b", "\ud800"], 2, "an id cannot hold U+D800"),
        (["a", "b", "a"], 2, "the id 'a' is given twice"),
    ],
)
def test_the_store_refuses_ids_it_cannot_keep_exactly(store: Store, ids: list[str], index: int, reason: str) -> None:
    """Engine-level callers too: SQLite's JSON functions would store "\\u0000a" and "\\u0000b" as
    one row "" counted twice, PostgreSQL raise a DataError; an id twice would be counted twice."""
    store.configure_model("m", CONFIG, RETENTION, now=0.0)
    assert logged(store, "m", "predictions", ["a"], 2, False, 1.0) == "ok"
    with pytest.raises(RowIdError) as refused:
        store.log("predictions", "m", ids, np.zeros((len(ids), 2)), now=2.0, max_pending=100, on_join=lambda *_: None)  # type: ignore[arg-type]
    assert (refused.value.index, refused.value.reason) == (index, reason)
    model = store.model("m")
    assert model is not None
    assert (model.pending_predictions, model.pending_labels) == (1, 0)
    assert rows_of(store, "m") == {"predictions": {"a": False}, "labels": {}}


# -- the same over HTTP: random requests, including ids the API refuses --------------------------

API_GOOD_IDS: list[Any] = ["a", "b", "c", "d", 7, 8, "é", "a b"]
API_BAD_IDS = ["\x00", "\x00a", "a\x00x", "b\x1f", "c\x85", "\x7f"]
api_good_ids = st.lists(st.sampled_from(API_GOOD_IDS), min_size=1, max_size=5, unique=True)
api_bad_ids = st.tuples(api_good_ids, st.sampled_from(API_BAD_IDS), st.integers(0, 5)).map(
    lambda t: [*t[0][: t[2]], t[1], *t[0][t[2] :]]
)
API_REQUESTS = {
    "log": st.tuples(
        st.just("log"),
        step,
        model_name,
        st.sampled_from(SIDES),
        st.sampled_from(["good"] * 4 + ["bad"]).flatmap({"good": api_good_ids, "bad": api_bad_ids}.__getitem__),
        st.sampled_from([2, 2, 2, 3]),
    ),
    "sweep": st.tuples(st.just("sweep"), step),
    "delete": st.tuples(st.just("delete"), step, model_name),
    "configure": st.tuples(st.just("configure"), step, model_name),
}
api_request = st.sampled_from(["log"] * 8 + ["sweep", "delete", "configure"]).flatmap(API_REQUESTS.__getitem__)


class Clock:
    """`time` for `service.usecases.ingest`, `models` and `upkeep`: the time at which rows arrive is the test's."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:  # ordering the quota gauge's updates: any increasing clock does
        return time.monotonic()


class Client:
    """Blocking calls to the app in-process, its lifespan and requests run by one event loop."""

    def __init__(self, portal: Any, app: Any) -> None:
        self.portal, self.app = portal, app
        transport = httpx.ASGITransport(app=app)  # an exception in the app (a 500) raises here
        self.client = httpx.AsyncClient(transport=transport, base_url="http://loss-service")

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.portal.call(functools.partial(self.client.request, method, url, **kwargs))
        return response


async def no_sweeps(*_: Any) -> None:
    await anyio.sleep_forever()


@pytest.fixture(params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Client, Clock]]:
    from anyio.from_thread import start_blocking_portal

    from service.config import Settings
    from service.server import app as app_module
    from service.server.app import create_app
    from service.usecases import ingest, models, upkeep

    url = f"sqlite:///{tmp_path}/store.sqlite3"
    if request.param == "postgresql":
        url = str(request.getfixturevalue("postgres_url"))
    clock = Clock()
    monkeypatch.setattr(ingest, "time", clock)
    monkeypatch.setattr(models, "time", clock)
    monkeypatch.setattr(upkeep, "time", clock)
    # The test sweeps at the times it chooses; the app's own sweeper (which sweeps once at start,
    # in a thread of its own) would race with its requests.
    monkeypatch.setattr(app_module, "sweep_forever", no_sweeps)
    app = create_app(Settings(store_url=url, max_pending=MAX_PENDING, sweep_interval=3600))
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        yield Client(portal, app), clock


def rows_of(store: Store, name: str) -> dict[str, dict[str, bool]]:
    with store.database.transaction(write=False) as tx:
        return {
            side: {
                row_id: bool(joined)
                for row_id, joined in tx.all(
                    f"SELECT r.id, r.joined_at IS NOT NULL FROM loss_{side} r "
                    "JOIN loss_models m ON m.id = r.model_id WHERE m.name = ?",
                    [name],
                )
            }
            for side in SIDES
        }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(api_request, min_size=5, max_size=30))
def test_counters_equal_the_rows_after_any_sequence_of_requests(served: tuple[Any, Clock], requests: list[Any]) -> None:
    client, clock = served
    store: Store = client.app.state.store
    config = {"losses": [{"loss": "mse"}], "retention_seconds": RETENTION}
    for model in client.request("GET", "/v1/models").json()["models"]:
        assert client.request("DELETE", f"/v1/models/{model['model']}").status_code == 204
    for name in MODELS:
        assert client.request("PUT", f"/v1/models/{name}", json=config).status_code == 200
    joined = dict.fromkeys(MODELS, 0)
    for kind, dt, *args in requests:
        clock.now += dt
        before = {name: rows_of(store, name) for name in MODELS}
        if kind == "log":
            name, side, ids, width = args
            body = {"ids": ids, side: [[0.0] * width] * len(ids)}
            answer = client.request("POST", f"/v1/models/{name}/{side}", json=body)
            refused = any(i in API_BAD_IDS for i in ids)
            assert answer.status_code in ((422,) if refused else (200, 404, 422, 429)), answer.text
            if refused:
                assert answer.json()["errors"][0]["loc"] == ["body", "ids", next(
                    k for k, i in enumerate(ids) if i in API_BAD_IDS
                )]  # fmt: skip
            if answer.status_code == 200:
                result = answer.json()
                fresh = [str(i) for i in ids if str(i) not in before[name][side]]
                assert result["accepted"] == len(fresh)
                joined[name] += result["joined"]
                event(f"http log: {(result['joined'] > 0 and 'joined') or 'stored'}")
            else:
                event(f"http log: {answer.status_code}")
                assert rows_of(store, name) == before[name], "a refused request stores nothing"
        elif kind == "sweep":
            store.sweep_expired(clock.now)
        elif kind == "delete":
            (name,) = args
            assert client.request("DELETE", f"/v1/models/{name}").status_code in (204, 404)
            joined[name] = 0
        else:
            (name,) = args
            assert client.request("PUT", f"/v1/models/{name}", json=config).status_code == 200
        for name in MODELS:
            status = client.request("GET", f"/v1/models/{name}")
            if status.status_code == 404:
                assert rows_of(store, name) == {side: {} for side in SIDES}
                continue
            counters = status.json()
            rows = rows_of(store, name)
            for side in SIDES:
                assert counters[f"pending_{side}"] == sum(not j for j in rows[side].values()), (name, side)
            assert counters["joined"] == joined[name]
