"""Transactions and the database interface for the two databases the store runs on (`sqlite.py`,
`postgres.py`; `connect.py` picks one by URL), and the few places where their SQL differs.
Everything else is the same plain SQL, written with `?` placeholders.

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

import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

import orjson

from service.store.errors import StoreFullError
from service.store.health import StoreHealth


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


@dataclass(frozen=True)
class Each:
    """A column's values to insert, one per row."""

    values: Sequence[Any]


@dataclass(frozen=True)
class Packed:
    """A blob column's values to insert, each `size` bytes, end to end in `raw`."""

    raw: bytes
    size: int


def _rows(columns: Sequence[tuple[str, str, Any]], count: int) -> Iterator[tuple[Any, ...]]:
    """The rows of `insert_columns`'s columns, one tuple each."""
    listed: list[Iterable[Any]] = []
    for _, _, values in columns:
        if isinstance(values, Each):
            listed.append(values.values)
        elif isinstance(values, Packed):
            size = values.size
            listed.append([values.raw[i * size : (i + 1) * size] for i in range(count)])
        else:
            listed.append(itertools.repeat(values, count))
    return zip(*listed, strict=True)


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

    def insert_columns(self, table: str, columns: Sequence[tuple[str, str, Any]], count: int) -> None:
        """Insert `count` rows whose keys the caller found free while holding its model's lock.

        `columns`: `(name, kind, values)` with a kind of `COPY_TYPES`; `values` is `Each` (one per
        row), `Packed` (blobs of one size, end to end) or any other value, which every row holds.
        SQLite inserts in-process, with `ON CONFLICT DO NOTHING` as a second guard (first write
        wins). PostgreSQL gets the rows by binary COPY, one round trip (faster than one INSERT
        over unnest() arrays or a statement per row: docs/performance.md); COPY has no ON
        CONFLICT, so a taken key aborts the transaction instead, which still never overwrites a row.
        """
        self._sql("INSERT")  # refused in SQLite's full-disk mode
        for name, _, values in columns:
            if (isinstance(values, Each) and len(values.values) != count) or (
                isinstance(values, Packed) and len(values.raw) != values.size * count
            ):
                raise ValueError(f"column {name} does not hold {count} values")
        if count == 0:
            return
        names = ", ".join(name for name, _, _ in columns)
        if self.dialect.name == "sqlite":
            self._sqlite_insert(table, names, columns, count)
            return
        with self._cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([COPY_TYPES[kind] for _, kind, _ in columns])
            for row in _rows(columns, count):
                copy.write_row(row)

    def _sqlite_insert(self, table: str, names: str, columns: Sequence[tuple[str, str, Any]], count: int) -> None:
        """One statement over `json_each` when only text columns and packed blobs vary from row
        to row (faster than a statement per row: docs/performance.md): the texts are read from
        one JSON array, each blob cut from one bound blob, the other columns bound once. Anything
        else varying (a float, which would not survive JSON exactly) takes a statement per row."""
        texts = [k for k, (_, kind, values) in enumerate(columns) if isinstance(values, Each) and kind == "text"]
        others = [values for _, kind, values in columns if isinstance(values, Each) and kind != "text"]
        if count < 2 or others:
            marks = ", ".join("?" for _ in columns)
            self.many(f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING", _rows(columns, count))
            return
        selected, params = [], []
        for k, (_, _, values) in enumerate(columns):
            if k in texts:
                selected.append("j.value" if len(texts) == 1 else f"j.value ->> {texts.index(k)}")
            elif isinstance(values, Packed):
                selected.append(f"substr(?, j.key * {values.size} + 1, {values.size})")
                params.append(values.raw)
            else:
                selected.append("?")
                params.append(values)
        if len(texts) == 1:
            listed = columns[texts[0]][2].values
        elif texts:
            listed = list(zip(*(columns[k][2].values for k in texts), strict=True))
        else:
            listed = [None] * count
        self.execute(
            f"INSERT INTO {table} ({names}) SELECT {', '.join(selected)} FROM json_each(?) AS j "
            "WHERE true ON CONFLICT DO NOTHING",  # `WHERE true`: SQLite's parser needs it before ON CONFLICT
            [*params, orjson.dumps(listed).decode()],
        )

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self._cursor.execute(self._sql(sql), params)
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)

    def all(self, sql: str, params: Sequence[Any] = (), *, binary: bool = False) -> list[tuple[Any, ...]]:
        """The statement's rows. `binary`: PostgreSQL sends them in its binary format, which
        neither side spells out as text (bytea as hex, floats as decimals); the values are the same."""
        return [tuple(row) for row in self._fetched(sql, params, binary)]

    def columns(self, sql: str, params: Sequence[Any], width: int) -> list[tuple[Any, ...]]:
        """The `width` columns of a SELECT's rows, one tuple each (empty where there are no rows).
        PostgreSQL sends them in its binary format: numbers and bytes come without text to parse."""
        rows = self._fetched(sql, params, binary=True)
        # One column at a time: zip(*rows) would make an iterator per row for the collector to chase.
        return [tuple(map(itemgetter(column), rows)) for column in range(width)]

    def _fetched(self, sql: str, params: Sequence[Any], binary: bool) -> list[Any]:
        if binary and self.dialect.name != "sqlite":
            self._cursor.execute(self._sql(sql), params, binary=True)
        else:
            self._cursor.execute(self._sql(sql), params)
        rows: list[Any] = self._cursor.fetchall()
        return rows

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Statements that go to PostgreSQL together (its pipeline mode): those that return no
        rows are sent with the next that does, or at the end of the block, in one round trip;
        an error in any of them surfaces there. SQLite runs each as it comes."""
        if self.dialect.name == "sqlite":
            yield
            return
        with self._cursor.connection.pipeline():
            yield


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


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
