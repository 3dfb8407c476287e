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
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson


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

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        # A sqlite3 or a psycopg cursor: both take execute/executemany/fetchone/fetchall alike.
        self._cursor = cursor
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
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
        (1,000 rows: 3.9 ms, against 9-12 ms as one INSERT over unnest() arrays and 30 ms as a
        statement per row); COPY has no ON CONFLICT, so a taken key aborts the transaction
        instead, which still never overwrites a row.
        """
        names = ", ".join(name for name, _ in columns)
        if self.dialect.name == "sqlite":
            self._sqlite_insert(table, columns, rows)
            return
        with self._cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([COPY_TYPES[kind] for _, kind in columns])
            for row in rows:
                copy.write_row(row)

    def _sqlite_insert(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
        """One statement over `json_each` when only the text key and an equal-length blob vary
        from row to row (1,000 rows: 0.4-1.1 ms against 1.8-2.6 for a statement per row); the
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
    # Transactions of each kind that can run at once without waiting for a connection.
    readers: int
    writers: int

    def transaction(self, *, write: bool = True) -> Any: ...

    def close(self) -> None: ...


class SQLiteDatabase:
    """A SQLite file shared by the worker processes of one host (WAL mode).

    Writes go through one connection, one transaction at a time (`_lock`). Reads go through
    up to `readers` query-only connections of their own, opened as needed and kept; under WAL
    a read transaction sees the last commit and never waits for the writer. An in-memory
    database (`:memory:`) is private to its connection: there, reads share the writer's.
    """

    dialect = SQLITE

    def __init__(self, url: str, path: str, readers: int = 4) -> None:
        self.url = url
        self._path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._connection = self._open(path)
        self._connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is in the WAL file before it returns, so a killed process loses no
        # answered request; only an operating-system crash or power loss can lose the last ones.
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()  # one writing connection, used by one thread at a time
        self.writers = 1
        self.readers = 1 if path == ":memory:" else readers
        # Idle read connections; `_opened` counts those that exist, idle or in use.
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._opened = 0
        self._opened_lock = threading.Lock()
        self._closed = False

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun and ended here, explicitly. The timeout
        # is how long a writer waits for another process's write lock before giving up.
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        if write or self._path == ":memory:":
            with self._lock:
                yield from self._run(self._connection, "BEGIN IMMEDIATE" if write else "BEGIN")
            return
        connection = self._reader()
        try:
            yield from self._run(connection, "BEGIN")
        finally:
            self._release(connection)

    def _run(self, connection: sqlite3.Connection, begin: str) -> Iterator[Transaction]:
        cursor = connection.cursor()
        cursor.execute(begin)
        try:
            yield Transaction(cursor, self.dialect)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

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
            connection = self._open(self._path)
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


class PostgresDatabase:
    """A PostgreSQL database shared by every replica, through two pools of up to
    `max_connections` connections each: one for writing transactions, one for reads (whose
    transactions are read-only)."""

    dialect = POSTGRES

    def __init__(self, url: str, max_connections: int) -> None:
        from psycopg import Connection
        from psycopg_pool import ConnectionPool

        def read_only(connection: Connection[Any]) -> None:
            connection.read_only = True

        self.url = url
        self.readers = self.writers = max_connections
        # Connection failures surface here, at start-up, not at the first request.
        self._pool = ConnectionPool(url, min_size=1, max_size=max_connections, open=False)
        self._readers = ConnectionPool(url, min_size=1, max_size=max_connections, open=False, configure=read_only)
        self._pool.open(wait=True, timeout=30.0)
        try:
            self._readers.open(wait=True, timeout=30.0)
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        # The pool's context commits when the block ends and rolls back when it raises.
        pool = self._pool if write else self._readers
        with pool.connection() as connection, connection.cursor() as cursor:
            yield Transaction(cursor, self.dialect)

    def close(self) -> None:
        self._readers.close()
        self._pool.close()


def connect(url: str, max_connections: int = 10) -> Database:
    """A database from a URL: `sqlite:///relative/path`, `sqlite:////absolute/path`, or
    `postgresql://user:password@host:port/database` (also `postgres://`).

    `max_connections`: SQLite's read connections; PostgreSQL's connections in each pool."""
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(url, url.removeprefix("sqlite:///"), max_connections)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, max_connections)
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
