"""The store's SQLite database: one writing connection and a few reading ones over WAL, the
full-disk reserve, and SQLite's errors classified as the store's."""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.store.database import SQLITE, Transaction
from service.store.health import StoreHealth, classified
from service.store.space import FullDiskMode


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
