"""SQLite on a full disk: a reserve of space given back for deletions, and the full-disk mode.

A deletion writes journal pages too, so a full disk could refuse the very DELETE meant to free
it. Beside the database lies a reserve (`<file>.reserve`). The first write that fails for lack of
space removes it and turns the *full-disk mode* on, in every process that shares the file (each
looks for the reserve before it writes; a store that starts without room for the reserve starts
in the mode). In the mode, statements that add rows are refused before they run, so that the room
the reserve gave back stays free for what removes rows (DELETE of a model, the retention sweep)
and updates rows in place. The mode ends once the store has room again: the reserve can be
allocated anew, or the database file holds free pages worth the reserve (space that deletions
freed, which new rows reuse; the reserve follows once the disk has room). That is checked after
each write in the mode, by the store's probe, and before a write at most once a second.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time

from service.store.errors import StoreFailureError, StoreFullError
from service.store.health import StoreHealth


class Reserve:
    """A file of `size` bytes that the disk gives back when it is full. Its absence is the
    full-disk mode; a file shorter than `size` (even empty) means the mode is off but the reserve
    is not whole yet: it is completed once the disk has room."""

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size = path, size

    def whole(self) -> bool:
        try:
            return os.path.getsize(self.path) >= self.size
        except OSError:
            return False

    def released(self) -> bool:
        return not os.path.exists(self.path)

    def mark(self) -> None:
        """End the full-disk mode without the reserve's bytes (an empty file, completed later)."""
        with contextlib.suppress(OSError), open(self.path, "ab"):
            pass

    def create(self) -> bool:
        """Allocate the reserve if it is not whole; False when the disk has no room for it."""
        if self.whole():
            return True
        temporary = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(temporary, "wb") as file:
                try:
                    os.posix_fallocate(file.fileno(), 0, self.size)
                except OSError as exc:  # a filesystem without fallocate: write the bytes
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    file.write(bytes(self.size))
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(temporary, self.path)  # never a moment without the file
            return True
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            return False

    def release(self) -> bool:
        """Remove the reserve; False if there was none."""
        try:
            os.unlink(self.path)
            return True
        except FileNotFoundError:
            return False


class FullDiskMode:
    """The full-disk mode of one SQLite connection. Every method is called with the connection's
    lock held."""

    def __init__(self, connection: sqlite3.Connection, path: str, size: int, health: StoreHealth) -> None:
        self._connection, self._health = connection, health
        self.reserve = Reserve(f"{path}.reserve", size)
        self._last_recovery = float("-inf")
        # The WAL is copied into the file once it holds SQLite's default 1,000 pages, or a quarter
        # of a smaller reserve: on a full disk, the reserve then holds the file's growth by what
        # the WAL holds, and the deletion's own pages beside it.
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        connection.execute(f"PRAGMA wal_autocheckpoint={min(1000, max(1, size // 4 // page_size))}")
        if not self.reserve.create():  # less free space than the reserve, or one given back before a restart
            health.failed(self._missing())

    def _missing(self) -> StoreFullError:
        return StoreFullError(
            f"the store's disk is full: its {self.reserve.size}-byte reserve {self.reserve.path} was given back "
            "for deletions (by this or another worker) and there is no room to allocate it again"
        )

    def before_write(self) -> StoreFullError | None:
        """Before a writing transaction: the error that statements adding rows raise instead of
        running, while in the mode."""
        if self._health.status != "full" and self.reserve.released():
            self._health.failed(self._missing())  # another process found the disk full
        if self._health.status == "full":
            self._recover(allocate=time.monotonic() - self._last_recovery >= 1.0)
        return StoreFullError(self._health.reason) if self._health.status == "full" else None

    def after_write(self) -> bool:
        """After a committed write: True if in the mode (the write may have freed space, which
        decides whether the mode ends), False to report the success as usual."""
        if self._health.status != "full":
            return False
        self._recover()
        return True

    def failed(self, failure: StoreFailureError) -> str:
        """A failed transaction: on a full disk, give the reserve back. Returns a note for the log."""
        if not isinstance(failure, StoreFullError) or not self.reserve.release():
            return ""
        self._checkpoint()
        return f"; released the {self.reserve.size}-byte reserve so that deletions can free space"

    def probe(self) -> None:
        if self._health.status == "full":
            self._recover()
        elif self.reserve.released():
            self._health.failed(self._missing())
        else:
            self.reserve.create()  # completed once the disk has room

    def _checkpoint(self) -> None:
        """Copy the WAL's pages into the database file, so that the next transactions reuse the
        WAL's space instead of growing it."""
        with contextlib.suppress(sqlite3.Error):
            self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _recover(self, allocate: bool = True) -> None:
        """End the mode if the store has room again. `allocate`: try to allocate the reserve."""
        self._checkpoint()
        if not allocate:
            return
        self._last_recovery = time.monotonic()
        if self.reserve.released() and not self.reserve.create():
            try:
                pages = self._connection.execute("PRAGMA freelist_count").fetchone()[0]
                page_size = self._connection.execute("PRAGMA page_size").fetchone()[0]
            except sqlite3.Error:
                return
            if pages * page_size < self.reserve.size:
                return
            self.reserve.mark()
        self._health.succeeded(wrote=True)
