"""Connections and transactions for the two databases the store runs on, and the few places
where their SQL differs. Everything else is the same plain SQL, written with `?` placeholders.

- SQLite (stdlib `sqlite3`): one writing connection per process in WAL mode, so several worker
  processes on one host share the file; `BEGIN IMMEDIATE` takes the database's write lock at
  the start of every writing transaction, which serialises writers across processes. Reads
  have connections of their own (`readers` of them, query-only): WAL lets them read a
  committed snapshot while a writer holds the lock, so a read never queues behind a write.
- PostgreSQL (psycopg 3 with its connection pools): replicas on several hosts share one
  database; a writing transaction locks its model's row (`SELECT ... FOR UPDATE`). Reads take
  their connections from a pool of their own (read-only transactions), so writers holding
  every writing connection never hold up a read.

`readers` and `writers` say how many transactions of each kind can run at once without
waiting for a connection; the service sizes the threads it gives each kind to match.

A disk that is full or a database that cannot be reached within the store's timeout surfaces as
`StoreFullError` or `StoreUnavailableError` (see health.py), and each database's `health` says
whether it can write. On SQLite a full disk also turns on the full-disk mode (space.py), in
which deletions can still free space.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from service.store.errors import StoreFullError, StoreUnavailableError
from service.store.health import StoreHealth, classified
from service.store.space import FullDiskMode


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str
    # Appended to the SELECT that reads a model's row in a writing transaction.
    lock_row: str
    # `id <in_list>` with one parameter holding the whole list of ids.
    in_list: str
    # Column types and table options for the DDL.
    types: dict[str, str]

    def list_parameter(self, values: Sequence[str]) -> Any:
        return orjson.dumps(list(values)).decode() if self.name == "sqlite" else list(values)


SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    # The whole database is already locked by BEGIN IMMEDIATE.
    lock_row="",
    in_list="IN (SELECT value FROM json_each(?))",
    types={
        "serial": "INTEGER PRIMARY KEY",
        "int": "INTEGER",
        "real": "REAL",
        "blob": "BLOB",
        "small": "INTEGER",
        # The primary key is the table: no hidden rowid and no second copy of (model, id).
        "rows_table_options": "WITHOUT ROWID",
    },
)
POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    lock_row=" FOR UPDATE",
    in_list="= ANY(?)",
    types={
        "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "int": "BIGINT",
        "real": "DOUBLE PRECISION",
        "blob": "BYTEA",
        "small": "SMALLINT",
        "rows_table_options": "",
    },
)


# PostgreSQL's binary COPY types for the kinds of column the store writes.
COPY_TYPES = {"int": "int8", "text": "text", "real": "float8", "small": "int2", "blob": "bytea"}


class Transaction:
    """One open transaction. SQL is written with `?` placeholders for both databases."""

    def __init__(self, cursor: Any, dialect: Dialect, refuse_rows: StoreFullError | None = None) -> None:
        # A sqlite3 or a psycopg cursor: both take execute/executemany/fetchone/fetchall alike.
        self._cursor = cursor
        self.dialect = dialect
        # Set in SQLite's full-disk mode: statements that add rows raise it instead of running.
        self._refuse_rows = refuse_rows
        # Whether a statement that adds rows ran: only that proves a full disk has room again.
        self.added_rows = False

    def _sql(self, sql: str) -> str:
        if sql.lstrip()[:6].upper() == "INSERT":
            if self._refuse_rows is not None:
                raise StoreFullError(self._refuse_rows.reason)
            self.added_rows = True
        return sql if self.dialect.placeholder == "?" else sql.replace("?", self.dialect.placeholder)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(self._sql(sql), params)

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._cursor.executemany(self._sql(sql), rows)

    def insert_new(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
        """Insert rows whose keys the caller found free while holding its model's lock.

        `rows`: one tuple per row in the order of `columns`, each `(name, kind)` with a kind of
        `COPY_TYPES`. SQLite inserts row by row in-process, with `ON CONFLICT DO NOTHING` as a
        second guard (first write wins). PostgreSQL gets the rows by binary COPY, one round trip
        (faster than one INSERT over unnest() arrays or a statement per row: docs/performance.md);
        COPY has no ON CONFLICT, so a taken key aborts the transaction
        instead, which still never overwrites a row.
        """
        names = ", ".join(name for name, _ in columns)
        self._sql("INSERT")  # refused in SQLite's full-disk mode
        if self.dialect.name == "sqlite":
            self._sqlite_insert(table, columns, rows)
            return
        with self._cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([COPY_TYPES[kind] for _, kind in columns])
            for row in rows:
                copy.write_row(row)

    def _sqlite_insert(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
        """One statement over `json_each` when only the text key and an equal-length blob vary
        from row to row (faster than a statement per row: docs/performance.md); the
        other columns are then bound once. Anything else varying (a float, which would not
        survive JSON exactly) takes a statement per row."""
        names = ", ".join(name for name, _ in columns)
        varying = [k for k in range(len(columns)) if len({row[k] for row in rows}) > 1]
        kinds = {columns[k][1] for k in varying}
        blobs = [k for k in varying if columns[k][1] == "blob"]
        sizes = {None if row[blobs[0]] is None else len(row[blobs[0]]) for row in rows} if blobs else set()
        if len(rows) < 2 or not kinds <= {"text", "blob"} or None in sizes or len(sizes) > 1 or len(blobs) > 1:
            marks = ", ".join("?" for _ in columns)
            self.many(f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows)
            return
        texts = [k for k in varying if columns[k][1] == "text"]
        size = next(iter(sizes), 0)
        selected, params = [], []
        for k in range(len(columns)):
            if k in texts:
                selected.append(f"j.value ->> {texts.index(k)}")
            elif k in blobs:
                selected.append(f"substr(?, j.key * {size} + 1, {size})")
                params.append(b"".join(row[k] for row in rows))
            else:
                selected.append("?")
                params.append(rows[0][k])
        keys = orjson.dumps([[row[k] for k in texts] for row in rows]).decode()
        self.execute(
            f"INSERT INTO {table} ({names}) SELECT {', '.join(selected)} FROM json_each(?) AS j "
            "WHERE true ON CONFLICT DO NOTHING",  # `WHERE true`: SQLite's parser needs it before ON CONFLICT
            [*params, keys],
        )

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self._cursor.execute(self._sql(sql), params)
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(self._sql(sql), params)
        return [tuple(row) for row in self._cursor.fetchall()]


class Database(Protocol):
    dialect: Dialect
    url: str
    health: StoreHealth
    # Seconds an operation may wait for the database before StoreUnavailableError.
    timeout: float
    # Transactions of each kind that can run at once without waiting for a connection.
    readers: int
    writers: int

    def transaction(self, *, write: bool = True) -> Any: ...

    def probe(self) -> None:
        """Check, within `timeout`, whether the database answers (and, while it is failing,
        whether it can write again), and report the outcome to `health`."""

    def close(self) -> None: ...


class SQLiteDatabase:
    """A SQLite file shared by the worker processes of one host (WAL mode). With `reserve_bytes`,
    deletions can free space on a full disk (space.py).

    Writes go through one connection, one transaction at a time (`_lock`). Reads go through
    up to `readers` query-only connections of their own, opened as needed and kept; under WAL
    a read transaction sees the last commit and never waits for the writer. An in-memory
    database (`:memory:`) is private to its connection: there, reads share the writer's.
    """

    dialect = SQLITE

    def __init__(self, url: str, path: str, timeout: float = 5.0, reserve_bytes: int = 0, readers: int = 4) -> None:
        self.url = url
        self.timeout = timeout
        self.health = StoreHealth()
        self._path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._connection = self._open(path, timeout)
        self._connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is in the WAL file before it returns, so a killed process loses no
        # answered request; only an operating-system crash or power loss can lose the last ones.
        self._connection.execute("PRAGMA synchronous=NORMAL")
        # Builds with SECURE_DELETE (Debian's) zero every page a DELETE frees, writing each one to
        # the WAL: deleting a model would need as much free disk as the model takes. FAST zeroes
        # deleted content only in pages written anyway (freed pages keep theirs until reused).
        self._connection.execute("PRAGMA secure_delete=FAST")
        self._lock = threading.Lock()  # one writing connection, used by one thread at a time
        self._full_disk = (
            FullDiskMode(self._connection, path, reserve_bytes, self.health)
            if path != ":memory:" and reserve_bytes
            else None
        )
        self.writers = 1
        self.readers = 1 if path == ":memory:" else readers
        # Idle read connections; `_opened` counts those that exist, idle or in use.
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._opened = 0
        self._opened_lock = threading.Lock()
        self._closed = False

    @staticmethod
    def _open(path: str, timeout: float) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun and ended here, explicitly. The timeout
        # is how long a writer waits for another process's write lock before giving up.
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        if not write and self._path != ":memory:":
            yield from self._read()
            return
        with self._lock:
            refusal = self._full_disk.before_write() if write and self._full_disk else None
            try:
                cursor = self._connection.cursor()
                cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    tx = Transaction(cursor, self.dialect, refusal)
                    yield tx
                    cursor.execute("COMMIT")
                finally:
                    if self._connection.in_transaction:  # SQLite ends some failed transactions itself
                        cursor.execute("ROLLBACK")
            except Exception as exc:
                failure = classified(exc)
                if failure is None:
                    raise
                self.health.failed(failure, self._full_disk.failed(failure) if self._full_disk else "")
                if failure is exc:
                    raise
                raise failure from exc
            if not (write and self._full_disk and self._full_disk.after_write()):
                self.health.succeeded(wrote=write and (tx.added_rows or self.health.status != "full"))

    def _read(self) -> Iterator[Transaction]:
        """A read transaction on a read connection; failures are classified as writes' are."""
        connection = None
        try:
            connection = self._reader()
            cursor = connection.cursor()
            cursor.execute("BEGIN")
            try:
                yield Transaction(cursor, self.dialect)
                cursor.execute("COMMIT")
            finally:
                if connection.in_transaction:
                    cursor.execute("ROLLBACK")
        except Exception as exc:
            failure = classified(exc)
            if failure is None:
                raise
            self.health.failed(failure)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            if connection is not None:
                self._release(connection)

    def _reader(self) -> sqlite3.Connection:
        """An idle read connection, a new one while fewer than `readers` exist, else the next freed."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._opened_lock:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            opening = self._opened < self.readers
            if opening:
                self._opened += 1
        if not opening:
            return self._idle.get()
        try:
            connection = self._open(self._path, self.timeout)
            # Reads only: a statement that would write fails instead.
            connection.execute("PRAGMA query_only=ON")
        except BaseException:
            with self._opened_lock:
                self._opened -= 1
            raise
        return connection

    def _release(self, connection: sqlite3.Connection) -> None:
        with self._opened_lock:  # so that `close` either finds it idle or has already begun
            if not self._closed:
                self._idle.put(connection)
                return
        connection.close()  # the database was closed while this read ran

    def probe(self) -> None:
        if not self._lock.acquire(timeout=self.timeout):
            return  # busy with requests, which report their own outcomes
        try:
            if self.health.status == "unavailable":
                try:
                    self._connection.execute("BEGIN IMMEDIATE")
                    self._connection.execute("ROLLBACK")
                except Exception as exc:
                    failure = classified(exc)
                    if failure is None:
                        raise
                    self.health.failed(failure)
                else:
                    self.health.succeeded(wrote=True)
            elif self._full_disk is not None:
                self._full_disk.probe()
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._opened_lock:
            self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break
        with self._lock:
            self._connection.close()


class _OutageWarnings(logging.Filter):
    """Drops psycopg_pool's warnings about connections it could not make or had to discard: while
    PostgreSQL is down it repeats them about every two seconds per pool, and the store's health
    (health.py) logs one line for the whole episode instead. Other pool warnings pass."""

    _OUTAGE = ("error connecting", "discarding broken connection", "discarding closed connection")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING or not str(record.msg).startswith(self._OUTAGE)


_POOL_LOG = logging.getLogger("psycopg.pool")
if not any(isinstance(f, _OutageWarnings) for f in _POOL_LOG.filters):
    _POOL_LOG.addFilter(_OutageWarnings())


class PostgresDatabase:
    """A PostgreSQL database shared by every replica, through two pools of up to
    `max_connections` connections each: one for writing transactions, one for reads (whose
    transactions are read-only)."""

    dialect = POSTGRES

    def __init__(self, url: str, max_connections: int, timeout: float = 5.0) -> None:
        from psycopg import Connection
        from psycopg_pool import ConnectionPool

        def read_only(connection: Connection[Any]) -> None:
            connection.read_only = True

        self.url = url
        self.timeout = timeout
        self.health = StoreHealth()
        self.readers = self.writers = max_connections
        # `timeout`: how long a request waits for a connection (PoolTimeout after it); libpq's
        # connect_timeout (whole seconds, at least 2) bounds each attempt to connect.
        options: dict[str, Any] = {
            "min_size": 1,
            "max_size": max_connections,
            "open": False,
            "timeout": timeout,
            "kwargs": {"connect_timeout": max(2, math.ceil(timeout))},
        }
        self._pool = ConnectionPool(url, **options)
        self._readers = ConnectionPool(url, configure=read_only, **options)
        # Connection failures surface here, at start-up, not at the first request.
        self._pool.open(wait=True, timeout=max(30.0, timeout))
        try:
            self._readers.open(wait=True, timeout=max(30.0, timeout))
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        pool = self._pool if write else self._readers
        try:
            # The pool's context commits when the block ends and rolls back when it raises.
            with pool.connection() as connection, connection.cursor() as cursor:
                tx = Transaction(cursor, self.dialect)
                yield tx
        except Exception as exc:
            failure = classified(exc)
            if failure is None:
                raise
            if isinstance(failure, StoreUnavailableError) and self.health.status != "unavailable":
                # The server went away: the pools' idle connections are likely broken too. Dropping
                # them now, once per episode, spares the requests after its return a failure each
                # (checking every connection as it is handed out would cost a round trip each).
                self._check_pools()
            self.health.failed(failure)
            if failure is exc:
                raise
            raise failure from exc
        # A deletion succeeds on a full disk: only added rows end that episode.
        self.health.succeeded(wrote=write and (tx.added_rows or self.health.status != "full"))

    def probe(self) -> None:
        """`SELECT 1` while healthy; while failing, a write that changes nothing."""
        failing = self.health.status != "ok"
        try:
            with self._pool.connection(timeout=self.timeout) as connection:
                connection.execute("UPDATE loss_schema SET version = version" if failing else "SELECT 1")
        except Exception as exc:
            failure = classified(exc)
            if failure is None:
                raise
            if isinstance(failure, StoreUnavailableError) and self.health.status != "unavailable":
                self._check_pools()  # as a failed transaction does
            self.health.failed(failure)
        else:
            if failing:
                # The read pool's idle connections may predate the episode (a restarted server):
                # the probe went through the write pool only.
                self._check_pools()
            self.health.succeeded(wrote=failing)

    def _check_pools(self) -> None:
        """Drop the idle connections of both pools that no longer work."""
        for pool in (self._pool, self._readers):
            with contextlib.suppress(Exception):
                pool.check()

    def close(self) -> None:
        self._readers.close()
        self._pool.close()


def connect(url: str, max_connections: int = 10, timeout: float = 5.0, reserve_bytes: int = 0) -> Database:
    """A database from a URL: `sqlite:///relative/path`, `sqlite:////absolute/path`, or
    `postgresql://user:password@host:port/database` (also `postgres://`). `timeout`: seconds an
    operation may wait for the database; `reserve_bytes`: SQLite's full-disk reserve (0: none);
    `max_connections`: SQLite's read connections, PostgreSQL's connections in each pool."""
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(url, url.removeprefix("sqlite:///"), timeout, reserve_bytes, max_connections)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, max_connections, timeout)
    raise ValueError(
        f"unsupported store URL {redacted(url)!r}: use sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE"
    )


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
