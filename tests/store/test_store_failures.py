"""Store failures on real databases: a SQLite file on a full filesystem (a 2 MiB tmpfs) and a
PostgreSQL cluster stopped and started again under load. Full disk: 507, unreachable: 503, both
with Retry-After and nothing half-written; /readyz and /metrics say so; one log line per episode;
deletions free space on a full disk; everything recovers without a restart."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from service.config import Settings
from service.server.app import create_app
from service.store import Pairs, Store
from tests.apps import MakeApp
from tests.postgres import MISSING, binaries, fresh_database, running_cluster

pytestmark = pytest.mark.anyio
CONFIG = {"losses": [{"loss": "mse", "options": {}}], "convention": "keras"}
RESERVE = 768 * 1024  # of a 2 MiB disk: deleting the model that fills the rest needs about half of it


@contextmanager
def tmpfs(directory: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs at `directory`: a filesystem that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (.ci/run runs as root)")
    directory.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"needs permission to mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk") as directory:
        yield directory


@pytest.fixture
async def full_disk_api(make_app: MakeApp, small_disk: Path) -> tuple[httpx.AsyncClient, Path]:
    settings = Settings(
        store_url=f"sqlite:///{small_disk}/store.sqlite3", store_reserve_bytes=RESERVE, sweep_interval=3600
    )
    return await make_app(settings), small_disk / "store.sqlite3"


def rows_in(path: Path, model: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM loss_predictions p JOIN loss_models m ON m.id = p.model_id WHERE m.name = ?", [model]
        ).fetchone()
    return int(count)


def metric(text: str, name: str, status: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(f'{name}{{status="{status}"}}'))
    return float(line.rsplit(" ", 1)[1])


def store_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "service.store" and r.levelno == logging.WARNING]


async def fill(api: httpx.AsyncClient, model: str) -> tuple[int, httpx.Response]:
    """Predictions of 20 rows of 64 floats logged until an answer is not 200: the rows accepted
    before it, and that answer."""
    accepted = 0
    with anyio.fail_after(120):  # stops a hang only
        for batch in range(10_000):
            ids = [f"{batch}-{i}" for i in range(20)]
            body = {"ids": ids, "predictions": np.random.default_rng(batch).random((20, 64)).tolist()}
            answer = await api.post(f"/v1/models/{model}/predictions", json=body)
            if answer.status_code != 200:
                return accepted, answer
            accepted += answer.json()["accepted"]
    raise AssertionError("10,000 logs and the disk is not full")


async def test_a_full_disk_answers_507_and_a_delete_frees_space_without_a_restart(
    full_disk_api: tuple[httpx.AsyncClient, Path], caplog: pytest.LogCaptureFixture
) -> None:
    api, path = full_disk_api
    caplog.set_level(logging.INFO)
    for model in ("filler", "kept"):
        assert (await api.put(f"/v1/models/{model}", json=CONFIG)).status_code == 200
    assert (
        await api.post("/v1/models/kept/predictions", json={"ids": ["k"], "predictions": [[1.0]]})
    ).status_code == 200
    accepted, answer = await fill(api, "filler")
    assert answer.status_code == 507, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) > 0
    assert "disk is full" in answer.json()["detail"]
    assert accepted > 0
    # Nothing half-written: the rows and the counters hold exactly the accepted requests.
    status = (await api.get("/v1/models/filler")).json()
    assert status["pending_predictions"] == accepted == rows_in(path, "filler")
    # While the disk is full, rows are refused before they are written; reads still work.
    again = await api.post("/v1/models/kept/predictions", json={"ids": ["k2"], "predictions": [[2.0]]})
    assert (again.status_code, again.headers["retry-after"]) == (507, answer.headers["retry-after"])
    assert (await api.put("/v1/models/new", json=CONFIG)).status_code == 507
    assert (await api.get("/v1/models/kept")).json()["pending_predictions"] == 1
    ready = await api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["store"] == "full"
    assert "disk is full" in ready.json()["reason"]
    metrics = (await api.get("/metrics")).text
    assert (
        metric(metrics, "loss_service_store_status", "full"),
        metric(metrics, "loss_service_store_status", "ok"),
    ) == (1, 0)

    # DELETE frees space on the full disk; then writes succeed again, without a restart.
    assert (await api.delete("/v1/models/filler")).status_code == 204
    assert rows_in(path, "filler") == 0
    assert (await api.get("/readyz")).status_code == 200
    assert (await api.put("/v1/models/filler", json=CONFIG)).status_code == 200
    joined = await api.post("/v1/models/kept/labels", json={"ids": ["k"], "labels": [[0.0]]})
    assert joined.status_code == 200
    assert joined.json()["joined"] == 1
    for batch in range(5):
        body = {"ids": [f"again-{batch}-{i}" for i in range(20)], "predictions": np.zeros((20, 64)).tolist()}
        assert (await api.post("/v1/models/filler/predictions", json=body)).status_code == 200
    metrics = (await api.get("/metrics")).text
    assert (
        metric(metrics, "loss_service_store_status", "full"),
        metric(metrics, "loss_service_store_status", "ok"),
    ) == (0, 1)
    # One line when the episode began, one when it ended; no traceback per request.
    warnings = store_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "disk is full" in warnings[0]
    assert "released the 786432-byte reserve" in warnings[0]
    assert "recovered" in warnings[1]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def keep(_: Any, pairs: Pairs) -> Pairs:
    return pairs


def test_the_retention_sweep_frees_space_on_a_full_disk(small_disk: Path) -> None:
    from service.store import StoreFullError

    store = Store.open(f"sqlite:///{small_disk}/store.sqlite3", reserve_bytes=RESERVE)
    try:
        store.configure_model("m", {"dtype": "float64"}, retention_seconds=10.0, now=0.0)
        rows = np.random.default_rng(0).random((20, 64))
        options: dict[str, Any] = {"now": 1.0, "max_pending": 10**9, "on_join": keep}
        stored = 0
        with pytest.raises(StoreFullError):  # noqa: PT012 - the error ends the filling
            for batch in range(10_000):
                store.log("predictions", "m", [f"{batch}-{i}" for i in range(20)], rows, **options)
                stored += 20
        model = store.model("m")
        assert model is not None
        assert model.pending_predictions == stored > 0
        swept = store.sweep_expired(now=100.0)
        assert [(s.model, s.expired_predictions, s.pending_predictions) for s in swept] == [("m", stored, 0)]
        assert store.database.health.status == "ok"
        logged = store.log("predictions", "m", ["after"], rows[:1], **{**options, "now": 101.0})
        assert logged.accepted == 1
    finally:
        store.close()


def test_an_existing_models_retention_can_be_shortened_on_a_full_disk_so_the_sweep_frees_it(small_disk: Path) -> None:
    """Reconfiguring a model updates its row in place: on a full disk it runs (it adds no row),
    so an operator can shorten the retention and let the sweep free the space, keeping the
    model. Creating a new model is still refused."""
    from service.store import StoreFullError

    store = Store.open(f"sqlite:///{small_disk}/store.sqlite3", reserve_bytes=RESERVE)
    try:
        store.configure_model("m", {"dtype": "float64"}, retention_seconds=3600.0, now=0.0)
        rows = np.random.default_rng(0).random((20, 64))
        options: dict[str, Any] = {"now": 1.0, "max_pending": 10**9, "on_join": keep}
        with pytest.raises(StoreFullError):  # noqa: PT012 - the error ends the filling
            for batch in range(10_000):
                store.log("predictions", "m", [f"{batch}-{i}" for i in range(20)], rows, **options)
        assert store.database.health.status == "full"
        with pytest.raises(StoreFullError):
            store.configure_model("new", {"dtype": "float64"}, retention_seconds=10.0, now=2.0)
        shortened = store.configure_model("m", {"dtype": "float64"}, retention_seconds=10.0, now=2.0)
        assert (shortened.retention_seconds, shortened.created_at, shortened.updated_at) == (10.0, 0.0, 2.0)
        assert [s.model for s in store.sweep_expired(now=100.0)] == ["m"]
        assert store.database.health.status == "ok"
        assert store.log("predictions", "m", ["after"], rows[:1], **{**options, "now": 101.0}).accepted == 1
    finally:
        store.close()


def test_driver_errors_are_classified() -> None:
    import psycopg
    from psycopg_pool import PoolTimeout

    from service.store import StoreFullError, StoreUnavailableError
    from service.store.health import classified

    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorname = "SQLITE_BUSY"  # type: ignore[attr-defined]
    assert isinstance(classified(full), StoreFullError)
    assert isinstance(classified(OSError(28, "No space left on device")), StoreFullError)
    assert isinstance(classified(psycopg.errors.DiskFull("could not extend file")), StoreFullError)
    assert isinstance(classified(locked), StoreUnavailableError)
    assert isinstance(classified(PoolTimeout("couldn't get a connection after 2.00 sec")), StoreUnavailableError)
    assert isinstance(classified(psycopg.errors.AdminShutdown("terminating connection")), StoreUnavailableError)
    assert isinstance(classified(psycopg.OperationalError("connection refused")), StoreUnavailableError)
    # A bug stays a bug (500): a bad statement, a constraint, a corrupt file.
    assert classified(sqlite3.OperationalError("no such table: x")) is None
    assert classified(psycopg.errors.UniqueViolation("duplicate key")) is None
    assert classified(ValueError("x")) is None


def test_an_error_on_a_connection_the_server_closed_is_an_outage(postgres_url: str) -> None:
    """Mid-pipeline, psycopg may report a lost connection as a result out of step (a
    ProgrammingError fetching rows from an UPDATE's result, seen when PostgreSQL stopped under
    load): the connection being closed makes it a 503, while the same error on a working
    connection stays a bug (a 500)."""
    import psycopg

    from service.store import StoreUnavailableError
    from service.store.postgres import PostgresDatabase

    def out_of_step(database: PostgresDatabase, *, terminated: bool) -> None:
        with database.transaction() as tx:
            (pid,) = tx.one("SELECT pg_backend_pid()") or (None,)
            if terminated:
                with psycopg.connect(postgres_url, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
                with contextlib.suppress(psycopg.OperationalError):
                    tx.one("SELECT 1")  # finds the connection gone
            raise psycopg.ProgrammingError("the last operation didn't produce records (command status: UPDATE 1)")

    database = PostgresDatabase(postgres_url, max_connections=2)
    try:
        with pytest.raises(psycopg.ProgrammingError):
            out_of_step(database, terminated=False)
        assert database.health.status == "ok"
        with pytest.raises(StoreUnavailableError, match="PostgreSQL closed the connection"):
            out_of_step(database, terminated=True)
        assert database.health.status == "unavailable"
    finally:
        database.close()


@pytest.mark.slow
async def test_a_stopped_postgresql_answers_503_and_recovers_after_its_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if binaries() is None:
        pytest.skip(MISSING)
    caplog.set_level(logging.INFO)
    # A cluster of its own: stopping it leaves the other tests' cluster alone.
    with running_cluster() as server:
        settings = Settings(store_url=fresh_database(server.url), store_timeout=2.0, sweep_interval=3600)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            pool = app.state.store.database._pool
            # The pool waits for a connection, and libpq for a connection attempt, only that long.
            assert (pool.timeout, pool.kwargs["connect_timeout"]) == (2.0, 2)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://loss-service") as api:
                assert (await api.put("/v1/models/m", json=CONFIG)).status_code == 200
                answers: dict[str, int] = {}
                stop = anyio.Event()

                async def load() -> None:
                    for n in range(100_000):
                        if stop.is_set():
                            return
                        row_id = f"r{n}"
                        answer = await api.post(
                            "/v1/models/m/predictions", json={"ids": [row_id], "predictions": [[1.0]]}
                        )
                        answers[row_id] = answer.status_code
                        if answer.status_code == 503:
                            assert answer.headers["content-type"] == "application/problem+json"
                            assert int(answer.headers["retry-after"]) > 0
                            await anyio.sleep(0.05)

                with anyio.fail_after(60):  # only stops a hang: the pool's timeout ends each wait
                    async with anyio.create_task_group() as group:
                        group.start_soon(load)
                        while len(answers) < 20:
                            await anyio.sleep(0.01)
                        await anyio.to_thread.run_sync(server.stop)
                        while 503 not in answers.values():
                            await anyio.sleep(0.05)
                        ready = await api.get("/readyz")
                        assert ready.status_code == 503
                        assert ready.json()["store"] == "unavailable"
                        assert "PostgreSQL" in ready.json()["reason"]
                        metrics = (await api.get("/metrics")).text
                        assert metric(metrics, "loss_service_store_status", "unavailable") == 1
                        await anyio.to_thread.run_sync(server.start)
                        seen = len(answers)
                        while not [c for r, c in list(answers.items())[seen:] if c == 200]:
                            await anyio.sleep(0.05)
                        stop.set()
                    while (await api.get("/readyz")).status_code != 200:
                        await anyio.sleep(0.1)
                assert set(answers.values()) == {200, 503}
                # Every accepted row is stored, and the counter counts exactly the stored rows.
                import psycopg

                with psycopg.connect(settings.store_url) as connection:
                    stored = {row[0] for row in connection.execute("SELECT id FROM loss_predictions")}
                accepted = {r for r, c in answers.items() if c == 200}
                assert accepted <= stored <= set(answers)
                assert (await api.get("/v1/models/m")).json()["pending_predictions"] == len(stored)
                metrics = (await api.get("/metrics")).text
                assert metric(metrics, "loss_service_store_status", "ok") == 1
    warnings = store_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "unavailable" in warnings[0]
    assert "recovered" in warnings[1]
    assert not [
        r for r in caplog.records if r.name.startswith("service") and (r.levelno >= logging.ERROR or r.exc_info)
    ]
    # psycopg_pool's own warning per failed connection attempt would repeat what the episode's
    # one line says, every two seconds per pool.
    assert not [r.getMessage() for r in caplog.records if r.name == "psycopg.pool" and r.levelno >= logging.WARNING]


def test_the_client_retries_507_on_log_calls_as_retry_after_says_but_not_on_a_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import service.client.http
    from service.client import InsufficientStorageError, LossClient

    slept: list[float] = []
    monkeypatch.setattr(service.client.http.time, "sleep", slept.append)
    seen: list[httpx.Request] = []
    full = {"type": "about:blank", "title": "Insufficient Storage", "status": 507, "detail": "disk is full"}
    logged = {"accepted": 1, "duplicates": 0, "duplicate_ids": [], "joined": 0, "joined_ids": [], "results": []}

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= 2 or request.url.path == "/v1/loss":
            return httpx.Response(507, json=full, headers={"retry-after": "7"})
        return httpx.Response(200, json={**logged, "pending_predictions": 1, "pending_labels": 0})

    with LossClient("http://mock", transport=httpx.MockTransport(handle), backoff=0.0) as client:
        assert client.log_predictions("m", ["a"], [[1.0]]).accepted == 1
        assert (len(seen), slept) == (3, [7.0, 7.0])  # retried, each after the Retry-After asked for
        # A loss is not a log: the server may have computed it, so a 507 is not repeated.
        with pytest.raises(InsufficientStorageError) as refused:
            client.loss("mse", [[1.0]], [[0.0]])
    assert (len(seen), refused.value.retry_after) == (4, 7.0)


def test_the_logger_waits_as_long_as_the_service_asks_before_sending_again() -> None:
    import threading

    from service.client import InsufficientStorageError
    from service.client.logger import PredictionLogger

    attempts: list[list[Any]] = []
    second = threading.Event()

    class Full:
        def log_predictions(self, model: str, ids: Any, predictions: Any, *, timestamps: Any = None) -> Any:
            attempts.append(list(ids))
            if len(attempts) > 1:
                second.set()
            error = InsufficientStorageError(507, {"title": "Insufficient Storage", "detail": "disk is full"})
            error.retry_after = 60.0
            raise error

        def log_labels(self, model: str, ids: Any, labels: Any, *, sample_weight: Any = None) -> Any:
            raise AssertionError("no labels were logged")

    logger = PredictionLogger(Full(), "m", batch_size=1, retry_interval=0.01, close_timeout=0.1)
    try:
        logger.prediction("a", [1.0])
        # The next attempt waits the 60 s the service asked for, not the 0.01 s retry_interval.
        assert not second.wait(2.0)
        assert attempts == [["a"]]
        assert logger.stats.failed_attempts == 1
    finally:
        logger.close()


async def test_a_sqlite_store_locked_past_the_store_timeout_answers_503_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "store.sqlite3"
    app = create_app(Settings(store_url=f"sqlite:///{path}", store_timeout=0.5, sweep_interval=3600))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loss-service") as api:
            assert (await api.put("/v1/models/m", json=CONFIG)).status_code == 200
            # Another process holds the write lock (a long transaction, a backup, a stuck worker).
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                with anyio.fail_after(60):  # only stops a hang: the busy timeout is the store's 0.5 s
                    answers = [
                        await api.post("/v1/models/m/predictions", json={"ids": [f"a{n}"], "predictions": [[1.0]]})
                        for n in range(3)
                    ]
                    ready = await api.get("/readyz")
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            assert [a.status_code for a in answers] == [503, 503, 503]
            assert {a.headers["retry-after"] for a in answers} == {"5"}
            assert "locked" in answers[0].json()["detail"]
            assert ready.status_code == 503
            assert ready.json()["store"] == "unavailable"
            answer = await api.post("/v1/models/m/predictions", json={"ids": ["a0"], "predictions": [[1.0]]})
            assert answer.json()["accepted"] == 1  # nothing of the refused requests was stored
            assert (await api.get("/readyz")).status_code == 200
    warnings = store_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "locked" in warnings[0]
    assert "recovered" in warnings[1]


@pytest.mark.slow
async def test_a_full_postgresql_tablespace_answers_507_and_recovers_once_it_has_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if binaries() is None:
        pytest.skip(MISSING)
    import pwd

    import psycopg

    caplog.set_level(logging.INFO)
    with running_cluster() as server, tmpfs(server.directory / "small") as small_disk:
        # The store's tables live in a tablespace on the 2 MiB tmpfs; the WAL and catalogs do not.
        owner = pwd.getpwnam(server.user) if server.user else None
        if owner is not None:
            os.chown(small_disk, owner.pw_uid, owner.pw_gid)
        url = fresh_database(server.url)
        with psycopg.connect(server.url, autocommit=True) as connection:
            connection.execute(f"CREATE TABLESPACE small LOCATION '{small_disk}'")
            connection.execute(f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET default_tablespace = small")
        app = create_app(Settings(store_url=url, sweep_interval=3600))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://loss-service") as api:
                assert (await api.put("/v1/models/filler", json=CONFIG)).status_code == 200
                accepted, answer = await fill(api, "filler")
                assert answer.status_code == 507, answer.text
                assert answer.headers["retry-after"] == "30"
                assert "PostgreSQL" in answer.json()["detail"]
                with psycopg.connect(url) as connection:
                    (stored,) = connection.execute("SELECT count(*) FROM loss_predictions").fetchone() or (0,)
                assert (await api.get("/v1/models/filler")).json()["pending_predictions"] == accepted == stored > 0
                ready = await api.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["store"] == "full"
                # A deletion succeeds on the full disk, but proves no room for new rows (PostgreSQL
                # reuses the space after vacuum, which itself needs room): the store stays full.
                assert (await api.delete("/v1/models/filler")).status_code == 204
                assert (await api.get("/readyz")).json()["store"] == "full"
                # The operator grows the volume: rows are accepted again, without a restart.
                grown = ["mount", "-o", "remount,size=4m", str(small_disk)]
                subprocess.run(grown, check=True, capture_output=True)
                assert (await api.put("/v1/models/filler", json=CONFIG)).status_code == 200
                body = {"ids": ["after"], "predictions": [[0.0] * 64]}
                assert (await api.post("/v1/models/filler/predictions", json=body)).status_code == 200
                assert (await api.get("/readyz")).status_code == 200
    warnings = store_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "disk is full" in warnings[0]
    assert "recovered" in warnings[1]


def test_a_worker_that_finds_the_disk_full_stops_the_others_adding_rows_until_a_delete(small_disk: Path) -> None:
    from service.store import StoreFullError

    url = f"sqlite:///{small_disk}/store.sqlite3"
    first, second = Store.open(url, reserve_bytes=RESERVE), Store.open(url, reserve_bytes=RESERVE)
    try:
        first.configure_model("big", {"dtype": "float64"}, retention_seconds=10.0, now=0.0)
        first.configure_model("small", {"dtype": "float64"}, retention_seconds=10.0, now=0.0)
        rows = np.random.default_rng(0).random((20, 64))
        options: dict[str, Any] = {"now": 1.0, "max_pending": 10**9, "on_join": keep}
        with pytest.raises(StoreFullError):  # noqa: PT012 - the error ends the filling
            for batch in range(10_000):
                first.log("predictions", "big", [f"{batch}-{i}" for i in range(20)], rows, **options)
        # The other worker (its own connection) has not failed yet, and still adds no row: the
        # room the reserve gave back stays for deletions.
        with pytest.raises(StoreFullError, match="by this or another worker"):
            second.log("predictions", "small", ["s"], rows[:1], **options)
        assert (second.database.health.status, second.model("small").pending_predictions) == ("full", 0)  # type: ignore[union-attr]
        assert second.delete_model("big")
        assert first.log("predictions", "small", ["f"], rows[:1], **options).accepted == 1
        assert second.log("predictions", "small", ["s"], rows[:1], **options).accepted == 1
        assert (first.database.health.status, second.database.health.status) == ("ok", "ok")
    finally:
        first.close()
        second.close()


def test_a_store_that_starts_without_room_for_its_reserve_adds_no_rows_until_there_is(small_disk: Path) -> None:
    from service.store import StoreFullError

    url = f"sqlite:///{small_disk}/store.sqlite3"
    Store.open(url, reserve_bytes=RESERVE).close()
    ballast = small_disk / "ballast"
    with ballast.open("wb") as file:  # another program fills the disk
        disk = os.statvfs(small_disk)
        os.posix_fallocate(file.fileno(), 0, disk.f_bavail * disk.f_frsize)
    (small_disk / "store.sqlite3.reserve").unlink()  # given back before a restart
    store = Store.open(url, reserve_bytes=RESERVE)
    try:
        assert store.database.health.status == "full"
        assert "no room to allocate it again" in store.database.health.reason
        with pytest.raises(StoreFullError):
            store.configure_model("m", {"dtype": "float64"}, retention_seconds=10.0, now=0.0)
        ballast.unlink()  # the operator frees space: the next write finds room, without a restart
        store.database.probe()
        assert store.database.health.status == "ok"
        assert store.configure_model("m", {"dtype": "float64"}, retention_seconds=10.0, now=0.0).name == "m"
    finally:
        store.close()


def test_a_model_many_times_the_reserve_is_deleted_on_a_full_disk_in_batches(small_disk: Path) -> None:
    from service.store import StoreFullError

    reserve = 128 * 1024
    store = Store.open(f"sqlite:///{small_disk}/store.sqlite3", reserve_bytes=reserve)
    try:
        store.configure_model("big", {"dtype": "float64"}, retention_seconds=10.0, now=0.0)
        rows = np.random.default_rng(0).random((20, 64))
        options: dict[str, Any] = {"now": 1.0, "max_pending": 10**9, "on_join": keep}
        with pytest.raises(StoreFullError):  # noqa: PT012 - the error ends the filling
            for batch in range(10_000):
                store.log("predictions", "big", [f"{batch}-{i}" for i in range(20)], rows, **options)
        size = (small_disk / "store.sqlite3").stat().st_size
        assert size > 10 * reserve  # the model takes ten times the room the reserve gives back
        assert store.delete_model("big", batch_rows=200)
        assert store.model("big") is None
        assert store.database.health.status == "ok"
        store.configure_model("next", {"dtype": "float64"}, retention_seconds=10.0, now=0.0)
        assert store.log("predictions", "next", ["a"], rows[:1], **options).accepted == 1
    finally:
        store.close()


def test_expired_rows_many_times_the_reserve_are_swept_on_a_full_disk_in_batches(small_disk: Path) -> None:
    """The retention sweep deletes in batches too: one transaction for all of a model's expired
    rows needs journal pages for about half of them, which the reserve cannot hold."""
    from service.store import StoreFullError

    reserve = 128 * 1024
    store = Store.open(f"sqlite:///{small_disk}/store.sqlite3", reserve_bytes=reserve)
    try:
        store.configure_model("big", {"dtype": "float64"}, retention_seconds=10.0, now=0.0)
        rows = np.random.default_rng(0).random((20, 64))
        options: dict[str, Any] = {"now": 1.0, "max_pending": 10**9, "on_join": keep}
        stored = 0
        with pytest.raises(StoreFullError):  # noqa: PT012 - the error ends the filling
            for batch in range(10_000):
                store.log("predictions", "big", [f"{batch}-{i}" for i in range(20)], rows, **options)
                stored += 20
        assert (small_disk / "store.sqlite3").stat().st_size > 10 * reserve
        swept = store.sweep_expired(now=100.0, batch_rows=200)
        assert [(s.model, s.expired_predictions, s.pending_predictions) for s in swept] == [("big", stored, 0)]
        model = store.model("big")
        assert model is not None
        assert (model.pending_predictions, model.expired_predictions, model.stored_bytes) == (0, stored, 0)
        assert store.database.health.status == "ok"
        assert store.log("predictions", "big", ["after"], rows[:1], **{**options, "now": 101.0}).accepted == 1
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.sqlite3"
    return str(request.getfixturevalue("postgres_url"))


def test_a_delete_in_batches_removes_everything_and_a_partial_one_keeps_counts_true(any_url: str) -> None:
    from service.store import StoreUnavailableError
    from service.store.schema import row_bytes_sql

    store = Store.open(any_url)
    try:
        options: dict[str, Any] = {"now": 1.0, "max_pending": 10**9, "on_join": keep}
        for name in ("gone", "kept"):
            store.configure_model(name, {"dtype": "float64"}, retention_seconds=10.0, now=0.0)
            store.log("predictions", name, [f"p{i}" for i in range(7)], np.zeros((7, 2)), **options)
            store.log("labels", name, [f"p{i}" for i in range(3)] + ["l0", "l1"], np.zeros((5, 2)), **options)
        # Interrupted after two batches of 3 rows: the model keeps fewer rows, counted exactly.
        database, calls = store.database, 0
        real = database.transaction

        def failing(*, write: bool = True) -> Any:
            nonlocal calls
            calls += 1
            if calls > 2:
                raise StoreUnavailableError("the store is unavailable: the test stopped it")
            return real(write=write)

        database.transaction = failing  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailableError):
            store.delete_model("gone", batch_rows=3)
        database.transaction = real  # type: ignore[method-assign]

        def rows_of(name: str, pending: bool) -> list[int]:
            with database.transaction(write=False) as tx:
                return [
                    (
                        tx.one(
                            f"SELECT count(*) FROM {table} r JOIN loss_models m ON m.id = r.model_id WHERE m.name = ?"
                            + (" AND r.joined_at IS NULL" if pending else ""),
                            [name],
                        )
                        or (0,)
                    )[0]
                    for table in ("loss_predictions", "loss_labels")
                ]

        model = store.model("gone")
        assert model is not None
        assert sum(rows_of("gone", pending=False)) == 12 - 6  # two batches of three rows went
        assert [model.pending_predictions, model.pending_labels] == rows_of("gone", pending=True)
        with database.transaction(write=False) as tx:
            kept_bytes = sum(
                (
                    tx.one(
                        f"SELECT coalesce(sum({row_bytes_sql(tx.dialect.name)}), 0) FROM {table} "
                        "WHERE model_id = (SELECT m.id FROM loss_models m WHERE m.name = ?)",
                        ["gone"],
                    )
                    or (0,)
                )[0]
                for table in ("loss_predictions", "loss_labels")
            )
        assert model.stored_bytes == kept_bytes > 0  # what the quota counts is what is left
        assert store.delete_model("gone", batch_rows=3)
        assert not store.delete_model("gone")
        assert store.model("gone") is None
        kept = store.model("kept")
        assert kept is not None
        assert (kept.pending_predictions, kept.pending_labels, kept.joined) == (4, 2, 3)
        assert rows_of("kept", pending=False) == [7, 5]
    finally:
        store.close()


@pytest.mark.slow
async def test_readyz_notices_a_stopped_postgresql_and_its_return_without_any_request() -> None:
    if binaries() is None:
        pytest.skip(MISSING)
    with running_cluster() as server:
        app = create_app(Settings(store_url=fresh_database(server.url), store_timeout=2.0, sweep_interval=3600))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://loss-service") as api:
                assert (await api.get("/readyz")).status_code == 200
                await anyio.to_thread.run_sync(server.stop)
                with anyio.fail_after(60):  # only stops a hang: each /readyz waits at most 0.8 s
                    while (ready := await api.get("/readyz")).status_code == 200:
                        await anyio.sleep(0.2)
                assert ready.status_code == 503
                assert ready.json()["store"] == "unavailable"
                await anyio.to_thread.run_sync(server.start)
                with anyio.fail_after(60):
                    while (await api.get("/readyz")).status_code != 200:
                        await anyio.sleep(0.2)
                assert (await api.get("/v1/models")).status_code == 200
