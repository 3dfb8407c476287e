"""One tenant cannot stall the others (issue #29, item 3), proved by structure, never by the clock:

- a read completes while every writing connection is held by another thread;
- the reads behind a model's status, and the statements a log runs, do the same work for a model
  with 10^3 joined rows as for one with 10^5 (SQLite's virtual-machine steps, PostgreSQL's
  buffers), and none scans a row table;
- a retention sweep deletes at most `SWEEP_BATCH_ROWS` rows per transaction, and lets the event
  loop run between its batches;
- with every store thread waiting on a held lock, a key reload, /readyz, a status read and a
  /v1/loss computation still complete.

Timeouts here (60 s) only stop a hang; every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from service.config import Settings
from service.server.api.access import digest
from service.server.app import create_app
from service.store import DELETE_BATCH_ROWS, SWEEP_BATCH_ROWS, Pairs, Store
from service.store.database import Transaction
from service.store.schema import row_bytes_sql
from service.usecases import upkeep

CONFIG = {"losses": [{"loss": "mse", "options": {}}], "convention": "keras", "dtype": "float64"}
HANG = 60.0  # seconds: only ever reached when something is stuck
# A plan that reads a row table from end to end (SQLite's EXPLAIN QUERY PLAN, PostgreSQL's EXPLAIN).
ROW_TABLE_SCAN = re.compile(r"(^|\s)SCAN loss_(predictions|labels)\b|Seq Scan on loss_(predictions|labels)\b")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.sqlite3"
    return str(request.getfixturevalue("postgres_url"))


def keep(_: Any, pairs: Pairs) -> Pairs:
    return pairs


def log(store: Store, side: str, model: str, ids: list[str], now: float) -> Any:
    rows = np.ones((len(ids), 1))
    return store.log(side, model, ids, rows, now=now, max_pending=10**9, on_join=keep)  # type: ignore[arg-type]


def in_thread(call: Callable[[], Any]) -> Any:
    """`call()` in a thread of its own; its result, or a failure if it has not returned within HANG."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), f"still waiting after {HANG:g} s"
    if errors:
        raise errors[0]
    return result[0]


# -- reads beside writes ------------------------------------------------------------------------


def test_reads_complete_while_every_writing_connection_is_held(url: str) -> None:
    # Two connections per pool on PostgreSQL; SQLite writes through one connection whatever this says.
    store = Store.open(url, max_connections=2)
    try:
        store.configure_model("m", CONFIG, 100.0, now=0.0)
        log(store, "predictions", "m", ["a"], now=5.0)
        holders = 1 if url.startswith("sqlite") else 2
        entered = threading.Semaphore(0)
        release = threading.Event()

        def hold() -> None:
            with store.database.transaction():
                entered.release()
                release.wait(HANG)

        threads = [threading.Thread(target=hold, daemon=True) for _ in range(holders)]
        for thread in threads:
            thread.start()
        try:
            for _ in threads:
                assert entered.acquire(timeout=HANG)
            model = in_thread(lambda: store.model("m"))
            assert model is not None
            assert model.pending_predictions == 1
            assert in_thread(lambda: store.oldest_pending("m")) == 5.0
            assert [m.name for m in in_thread(store.models)] == ["m"]
        finally:
            release.set()
            for thread in threads:
                thread.join(HANG)
    finally:
        store.close()


# -- work per joined row ------------------------------------------------------------------------


def add_joined_rows(store: Store, model: str, count: int) -> None:
    """`count` joined rows on each side of `model`, arrived at 1..count, straight into the tables."""
    sqlite = store.database.dialect.name == "sqlite"
    with store.database.transaction() as tx:
        found = tx.one("SELECT id FROM loss_models WHERE name = ?", [model])
        assert found is not None
        for table in ("loss_predictions", "loss_labels"):
            if sqlite:
                tx.execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                    f"INSERT INTO {table} (model_id, id, arrived, joined_at, dtype) "
                    "SELECT ?, 'joined-' || i, i, i, 0 FROM n",
                    [count, found[0]],
                )
            else:
                tx.execute(
                    f"INSERT INTO {table} (model_id, id, arrived, joined_at, dtype) "
                    "SELECT ?, 'joined-' || i, i, i, 0 FROM generate_series(1, ?) AS i",
                    [found[0], count],
                )
        size = row_bytes_sql(store.database.dialect.name)
        tx.execute(
            f"UPDATE loss_models SET joined = ?, stored_bytes = stored_bytes + (SELECT coalesce(sum({size}), 0) "
            f"FROM loss_predictions WHERE model_id = ? AND joined_at IS NOT NULL) + (SELECT coalesce(sum({size}), 0) "
            "FROM loss_labels WHERE model_id = ? AND joined_at IS NOT NULL) WHERE id = ?",
            [count, found[0], found[0], found[0]],
        )
    if not sqlite:
        with store.database.transaction() as tx:
            tx.execute("ANALYZE")  # what autovacuum does on a table that grew this much


@contextlib.contextmanager
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, list[Any]]]]:
    """Every statement the store runs through `Transaction.one` and `.all`, with its parameters."""
    statements: list[tuple[str, list[Any]]] = []
    original_one, original_all = Transaction.one, Transaction.all

    def one(self: Transaction, sql: str, params: Any = ()) -> Any:
        statements.append((sql, list(params)))
        return original_one(self, sql, params)

    def all_(self: Transaction, sql: str, params: Any = (), **options: Any) -> Any:
        statements.append((sql, list(params)))
        return original_all(self, sql, params, **options)

    with monkeypatch.context() as patch:
        patch.setattr(Transaction, "one", one)
        patch.setattr(Transaction, "all", all_)
        yield statements


def work(url: str, store: Store, statements: list[tuple[str, list[Any]]]) -> int:
    """What running the SELECTs among `statements` again costs: SQLite's virtual-machine steps, or
    the buffers PostgreSQL's executor touches (EXPLAIN ANALYZE)."""
    selects = [(sql, params) for sql, params in statements if sql.lstrip().upper().startswith("SELECT")]
    if url.startswith("sqlite"):
        steps = 0

        def step() -> int:
            nonlocal steps
            steps += 1
            return 0

        connection = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            connection.set_progress_handler(step, 1)
            for sql, params in selects:
                connection.execute(sql, params).fetchall()
        finally:
            connection.close()
        return steps
    buffers = 0
    with store.database.transaction() as tx:  # a writing one: some are SELECT ... FOR UPDATE
        for sql, params in selects:
            row = tx.one("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
            assert row is not None
            plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
            buffers += _buffers(plan[0]["Plan"])
    return buffers


def _buffers(node: dict[str, Any]) -> int:
    own = int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))
    # A node's counts include its children's: the top node's are the total.
    return own if "Plans" not in node else max(own, *(_buffers(child) for child in node["Plans"]))


def plans(url: str, store: Store, statements: list[tuple[str, list[Any]]]) -> list[str]:
    """The query plans of `statements`, one text each (EXPLAIN QUERY PLAN, or PostgreSQL's EXPLAIN)."""
    texts = []
    with store.database.transaction() as tx:
        for sql, params in statements:
            if url.startswith("sqlite"):
                rows = tx.all("EXPLAIN QUERY PLAN " + sql, params)
                texts.append("\n".join(str(row[-1]) for row in rows))
            else:
                rows = tx.all("EXPLAIN " + sql, params)
                texts.append("\n".join(str(row[0]) for row in rows))
    return texts


def test_status_and_logging_do_the_same_work_at_a_hundred_times_the_joined_rows(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(url)
    try:
        costs, statements_of = {}, {}
        for model, joined in (("small", 1_000), ("large", 100_000)):
            store.configure_model(model, CONFIG, 10.0**9, now=0.0)
            add_joined_rows(store, model, joined)
            log(store, "predictions", model, ["waiting-p"], now=10.0**6)
            log(store, "labels", model, ["waiting-l"], now=2 * 10.0**6)
            with recorded(monkeypatch) as status:
                found = store.model(model)
                oldest = store.oldest_pending(model)
            assert found is not None
            assert (found.joined, oldest) == (joined, 10.0**6)
            with recorded(monkeypatch) as logging_:
                log(store, "labels", model, ["waiting-p", "new-l"], now=3 * 10.0**6)
            costs[model] = (work(url, store, status), work(url, store, logging_))
            statements_of[model] = status + logging_
        (status_small, log_small), (status_large, log_large) = costs["small"], costs["large"]
        # A walk over the joined rows costs ~100 times more at 100 times the rows; an index seek
        # costs the same, give or take a level of the B-tree.
        assert status_large <= 2 * status_small + 8, costs
        assert log_large <= 2 * log_small + 8, costs
        for sql, plan in zip(
            [sql for sql, _ in statements_of["large"]], plans(url, store, statements_of["large"]), strict=True
        ):
            assert not ROW_TABLE_SCAN.search(plan), (sql, plan)
    finally:
        store.close()


def test_a_store_of_the_first_layout_gains_the_pending_indexes_and_keeps_its_rows(url: str) -> None:
    from service.store.connect import connect
    from service.store.schema import MIGRATIONS, SCHEMA_VERSION

    database = connect(url)
    try:  # the store as the first layout left it, with a model and a pending row
        with database.transaction() as tx:
            tx.execute("CREATE TABLE loss_schema (version INTEGER NOT NULL)")
            MIGRATIONS[0][1](tx)  # the first layout's tables
            tx.execute("INSERT INTO loss_schema (version) VALUES (1)")
            tx.execute(
                "INSERT INTO loss_models (name, config, retention_seconds, created_at, updated_at, "
                "pending_predictions) VALUES ('m', ?, 100.0, 0.0, 0.0, 1)",
                [json.dumps(CONFIG)],
            )
            found = tx.one("SELECT id FROM loss_models WHERE name = 'm'")
            assert found is not None
            tx.execute(
                "INSERT INTO loss_predictions (model_id, id, arrived, dtype, payload) VALUES (?, 'a', 7.0, 0, ?)",
                [found[0], bytes(8)],
            )
    finally:
        database.close()
    store = Store.open(url)
    try:
        names = (
            "SELECT name FROM sqlite_master WHERE type = 'index'"
            if url.startswith("sqlite")
            else "SELECT indexname FROM pg_indexes"
        )
        with store.database.transaction(write=False) as tx:
            indexes = {row[0] for row in tx.all(names)}
            version = tx.one("SELECT max(version) FROM loss_schema")
        assert {"loss_predictions_pending", "loss_labels_pending"} <= indexes
        assert version == (SCHEMA_VERSION,)
        assert SCHEMA_VERSION == len(MIGRATIONS) >= 2
        assert store.oldest_pending("m") == 7.0
    finally:
        store.close()
    reopened = Store.open(url)  # a second start finds nothing to do
    reopened.close()


# -- the retention sweep ------------------------------------------------------------------------


def transactions_of(store: Store, action: Callable[[], Any]) -> tuple[Any, list[tuple[int, tuple[int, int] | None]]]:
    """What `action()` returns, and after each of its writing transactions: how many rows it
    removed, and model m's pending counters against its pending rows (None once m is gone)."""
    opened = store.database.transaction
    after: list[tuple[int, tuple[int, int] | None]] = []

    def state() -> tuple[int, tuple[int, int] | None]:
        with opened(write=False) as tx:
            rows = sum(int(tx.one(f"SELECT count(*) FROM {t}")[0]) for t in ("loss_predictions", "loss_labels"))  # type: ignore[index]
            model = tx.one("SELECT id, pending_predictions + pending_labels FROM loss_models WHERE name = 'm'")
            if model is None:
                return rows, None
            waiting = sum(
                int(tx.one(f"SELECT count(*) FROM {t} WHERE model_id = ? AND joined_at IS NULL", [model[0]])[0])  # type: ignore[index]
                for t in ("loss_predictions", "loss_labels")
            )
            return rows, (int(model[1]), waiting)

    @contextlib.contextmanager
    def counting(*, write: bool = True) -> Iterator[Any]:
        with opened(write=write) as tx:
            yield tx
        if write:
            after.append(state())

    before = state()[0]
    store.database.transaction = counting  # type: ignore[method-assign]
    try:
        result = action()
    finally:
        del store.database.transaction
    totals = [before, *(rows for rows, _ in after)]
    pairs = zip(totals[:-1], totals[1:], after, strict=True)
    return result, [(earlier - later, counters) for earlier, later, (_, counters) in pairs]


def test_the_sweep_removes_at_most_a_batch_of_rows_per_transaction(url: str) -> None:
    store = Store.open(url)
    try:
        store.configure_model("m", CONFIG, 100.0, now=0.0)
        expired = 2 * SWEEP_BATCH_ROWS + SWEEP_BATCH_ROWS // 2
        ids = [f"r{i}" for i in range(expired)]
        log(store, "predictions", "m", ids, now=1.0)  # all expire at 101
        log(store, "labels", "m", ids[: SWEEP_BATCH_ROWS // 2], now=2.0)  # these join: expired, not pending
        log(store, "labels", "m", ["fresh"], now=500.0)  # stays
        swept, transactions = transactions_of(store, lambda: store.sweep_expired(now=550.0))
        removed = [count for count, _ in transactions]
        assert sum(removed) == expired + SWEEP_BATCH_ROWS // 2
        assert max(removed) <= SWEEP_BATCH_ROWS, removed
        assert len([r for r in removed if r]) >= 3, removed
        assert all(counters is not None and counters[0] == counters[1] for _, counters in transactions)
        (result,) = swept
        pending = expired - SWEEP_BATCH_ROWS // 2
        assert (result.expired_predictions, result.expired_labels) == (pending, 0)
        assert (result.pending_predictions, result.pending_labels) == (0, 1)
        model = store.model("m")
        assert model is not None
        assert (model.pending_predictions, model.pending_labels, model.expired_predictions) == (0, 1, pending)
    finally:
        store.close()


def test_deleting_a_model_removes_at_most_a_batch_of_rows_per_transaction(url: str) -> None:
    store = Store.open(url)
    try:
        store.configure_model("m", CONFIG, 100.0, now=0.0)
        store.configure_model("other", CONFIG, 100.0, now=0.0)
        count = 2 * DELETE_BATCH_ROWS + DELETE_BATCH_ROWS // 2
        ids = [f"r{i}" for i in range(count)]
        log(store, "predictions", "m", ids, now=1.0)
        log(store, "labels", "m", [*ids[:DELETE_BATCH_ROWS], "lone"], now=2.0)
        log(store, "labels", "other", ["kept"], now=2.0)
        deleted, transactions = transactions_of(store, lambda: store.delete_model("m"))
        assert deleted
        removed = [count for count, _ in transactions]
        assert sum(removed) == count + DELETE_BATCH_ROWS + 1
        assert max(removed) <= DELETE_BATCH_ROWS, removed
        # Until the model goes, its counters stay equal to its rows: an interrupted delete leaves
        # a consistent model that a second DELETE removes.
        assert all(counters is None or counters[0] == counters[1] for _, counters in transactions), transactions
        assert transactions[-1][1] is None
        assert store.model("m") is None
        assert not store.delete_model("m")
        other = store.model("other")
        assert other is not None
        assert other.pending_labels == 1
    finally:
        store.close()


async def another_write_between_batches(store: Store, method: str, run: Callable[[Any], Any]) -> list[str]:
    """Run `run(threads)` (a sweep or a deletion through the store's threads), which calls
    `store.<method>` once per batch; while its first batch runs, another write asks for the store's
    write thread. The order in which the batches and that write ran.

    One write thread, as on SQLite (PostgreSQL has one per connection of its write pool)."""
    threads = upkeep.StoreThreads(store)
    threads.writes = anyio.CapacityLimiter(1)
    order: list[str] = []
    started, proceed = threading.Event(), threading.Event()
    batch = getattr(store, method)

    def watched(*args: Any) -> Any:
        order.append("batch")
        if len(order) == 1:
            started.set()
            assert proceed.wait(HANG)
        return batch(*args)

    setattr(store, method, watched)

    async def other() -> None:
        await threads.write(lambda: order.append("other write"))

    async with anyio.create_task_group() as tasks:
        with anyio.fail_after(HANG):
            tasks.start_soon(run, threads)
            while not started.is_set():
                await anyio.sleep(0.001)
            tasks.start_soon(other)
            while threads.writes.statistics().tasks_waiting == 0:
                await anyio.sleep(0.001)
            proceed.set()
    return order


@pytest.mark.anyio
async def test_a_write_goes_between_the_sweep_s_batches(url: str) -> None:
    store = Store.open(url)
    try:
        store.configure_model("m", CONFIG, 100.0, now=0.0)
        log(store, "predictions", "m", [f"r{i}" for i in range(350)], now=1.0)
        swept: list[Any] = []

        async def sweep(threads: upkeep.StoreThreads) -> None:
            swept.extend(await upkeep.sweep(store, 550.0, threads, batch_rows=100))

        order = await another_write_between_batches(store, "sweep_batch", sweep)
        # 350 rows: three batches of 100 and the last of 50; the other write waited for one only.
        assert order == ["batch", "other write", "batch", "batch", "batch"], order
        assert swept[0].expired_predictions == 350
    finally:
        store.close()


@pytest.mark.anyio
async def test_a_write_goes_between_the_batches_of_a_model_s_deletion(url: str) -> None:
    store = Store.open(url)
    try:
        store.configure_model("m", CONFIG, 100.0, now=0.0)
        log(store, "predictions", "m", [f"r{i}" for i in range(350)], now=1.0)
        deleted: list[bool] = []

        async def delete(threads: upkeep.StoreThreads) -> None:
            deleted.append(await upkeep.delete_model(store, "m", threads, batch_rows=100))

        order = await another_write_between_batches(store, "delete_batch", delete)
        assert order == ["batch", "other write", "batch", "batch", "batch"], order
        assert deleted == [True]
        assert store.model("m") is None
    finally:
        store.close()


# -- what must not wait on the store's threads --------------------------------------------------

ADMIN, TEAM = "admin-key-0123456789", "team-key-01234567890"


def keys_file_text(*, with_team: bool) -> str:
    text = (
        f'[[keys]]\nname = "admin"\nkey_sha256 = "{digest(ADMIN)}"\nscopes = ["compute", "ingest", "read", "admin"]\n'
    )
    if with_team:
        text += f'\n[[keys]]\nname = "team"\nkey_sha256 = "{digest(TEAM)}"\nscopes = ["compute", "read"]\n'
    return text


@contextlib.contextmanager
def writes_held(url: str, store: Store, model: str) -> Iterator[None]:
    """Every write to `model` waits until the block ends: SQLite's write lock, or the model's row
    locked in PostgreSQL by a transaction of another connection."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        if url.startswith("sqlite"):
            with store.database.transaction():
                entered.set()
                release.wait(HANG)
            return
        import psycopg

        with psycopg.connect(url) as connection, connection.transaction():
            connection.execute("SELECT id FROM loss_models WHERE name = %s FOR UPDATE", [model])
            entered.set()
            release.wait(HANG)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert entered.wait(HANG)
        yield
    finally:
        release.set()
        holder.join(HANG)


@pytest.mark.anyio
async def test_key_reload_probes_reads_and_losses_go_on_while_every_store_thread_waits(
    url: str, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(keys_file_text(with_team=True))
    waiting = 48  # more than anyio's default pool of 40 threads
    settings = Settings(
        api_keys_file=str(keys),
        store_url=url,
        # On PostgreSQL, enough connections that every waiting write holds one and waits on the row lock.
        store_connections=waiting,
        # A configuration is a heavy request (its parse holds memory): slots for all of them and
        # the requests sent meanwhile, so that threads, not slots, are what the test holds.
        max_concurrent=waiting + 8,
        offload_bytes=0,  # /v1/loss computes in a worker thread
    )
    app = create_app(settings)
    admin, team = {"authorization": f"Bearer {ADMIN}"}, {"authorization": f"Bearer {TEAM}"}
    loss = {"loss": "mse", "predictions": [[0.0], [1.0]], "labels": [[1.0], [1.0]]}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loss-service", timeout=HANG) as api:
            assert (await api.put("/v1/models/m", json=CONFIG, headers=admin)).status_code == 200
            assert (await api.post("/v1/loss", json=loss, headers=team)).status_code == 200
            answers: list[int] = []

            async def configure() -> None:
                answers.append((await api.put("/v1/models/m", json=CONFIG, headers=admin)).status_code)

            async with anyio.create_task_group() as writers:
                with writes_held(url, app.state.store, "m"):
                    for _ in range(waiting):
                        writers.start_soon(configure)
                    with anyio.fail_after(HANG):
                        while not every_store_thread_busy(app):
                            await anyio.sleep(0.01)
                        assert (await api.get("/readyz")).status_code == 200
                        assert (await api.get("/livez")).status_code == 200
                        status = await api.get("/v1/models/m", headers=team)
                        assert status.status_code == 200
                        assert status.json()["model"] == "m"
                        assert (await api.post("/v1/loss", json=loss, headers=team)).status_code == 200
                        keys.write_text(keys_file_text(with_team=False))  # the team's key is revoked
                        while (await api.post("/v1/loss", json=loss, headers=team)).status_code != 401:
                            await anyio.sleep(0.05)
                    assert answers == []  # all of the above while the writes were waiting
            assert answers == [200] * waiting


def every_store_thread_busy(app: Any) -> bool:
    """The threads that store writes may take are all taken: the store's own writes limiter,
    or, without one, anyio's default pool."""
    threads = getattr(app.state, "store_threads", None)
    limiter = threads.writes if threads is not None else anyio.to_thread.current_default_thread_limiter()
    return bool(limiter.borrowed_tokens >= limiter.total_tokens)
