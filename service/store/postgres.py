"""The store's PostgreSQL database: a pool of writing and a pool of reading connections (psycopg 3),
an outage logged once, and PostgreSQL's errors classified as the store's."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from service.store.database import POSTGRES, Transaction
from service.store.errors import StoreUnavailableError
from service.store.health import StoreHealth, classified


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
        connection: Any = None  # psycopg.Connection, once the pool hands one over
        try:
            # The pool's context commits when the block ends and rolls back when it raises.
            with pool.connection() as connection, connection.cursor() as cursor:
                tx = Transaction(cursor, self.dialect)
                yield tx
        except Exception as exc:
            failure = classified(exc) or _lost(connection, exc)
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


def _lost(connection: Any, exc: Exception) -> StoreUnavailableError | None:
    """The error of a statement whose connection the server closed under it. Mid-pipeline, psycopg
    may report the loss as a result out of step (a `ProgrammingError` fetching rows from an
    UPDATE's result) rather than as an `OperationalError`; the connection says what happened."""
    if connection is None or not connection.closed:
        return None
    return StoreUnavailableError(f"the store is unavailable: PostgreSQL closed the connection ({type(exc).__name__})")
