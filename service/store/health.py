"""Whether the store can write, and why not; driver errors turned into the store's own errors.

Each database keeps one `StoreHealth`. Every transaction reports its outcome to it: a failure
classified as the disk being full or the database being unavailable starts an *episode*, logged
once as a warning; the first success that proves the store writes again ends it, logged once.
Requests in between fail fast with the same class of error and add nothing to the log.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Literal

from service.store.errors import StoreFailureError, StoreFullError, StoreUnavailableError

log = logging.getLogger("service.store")

Status = Literal["ok", "full", "unavailable"]
STATUSES: tuple[Status, ...] = ("ok", "full", "unavailable")

# SQLite's result codes for a database it cannot use at the moment (as opposed to a bad statement
# or a corrupt file, which stay errors): busy or locked past the busy timeout, I/O errors,
# a read-only or unopenable file.
_SQLITE_UNAVAILABLE = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN"}


def classified(exc: BaseException) -> StoreFailureError | None:
    """The store's error for a driver's exception that means the disk is full or the database
    cannot be reached; None for anything else (a bug, which stays a 500)."""
    if isinstance(exc, StoreFailureError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StoreFullError(f"the store's disk is full: {exc.strerror}")
    if isinstance(exc, sqlite3.Error):
        name = str(getattr(exc, "sqlite_errorname", ""))
        if name == "SQLITE_FULL":
            return StoreFullError(f"the store's disk is full: SQLite: {exc}")
        if any(name == code or name.startswith(code + "_") for code in _SQLITE_UNAVAILABLE):
            return StoreUnavailableError(f"the store is unavailable: SQLite: {exc}")
        return None
    return _classified_postgres(exc)


def _classified_postgres(exc: BaseException) -> StoreFailureError | None:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return None
    if isinstance(exc, psycopg.errors.DiskFull):
        return StoreFullError(f"the store's disk is full: PostgreSQL: {_first_line(exc)}")
    # Connection refused or lost, the pool's timeout (PoolTimeout is an OperationalError), an
    # administrator's shutdown, a server that is starting or stopping.
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailableError(f"the store is unavailable: PostgreSQL: {_first_line(exc)}")
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class StoreHealth:
    """The store's status as its last transactions and probes found it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.status: Status = "ok"
        self.reason = ""
        self._since = 0.0
        self.failures = 0  # failed operations in the current episode
        self.last_probe = float("-inf")  # time.monotonic() of the last probe
        self.listeners: list[Callable[[Status], None]] = []

    def failed(self, error: StoreFailureError, note: str = "") -> None:
        status: Status = "full" if isinstance(error, StoreFullError) else "unavailable"
        with self._lock:
            self.failures += 1
            if self.status == status:
                return
            if self.status == "ok":
                self._since = time.monotonic()
                self.failures = 1
            self.status, self.reason = status, error.reason
            self.last_probe = time.monotonic()  # this failure was the probe: the next one comes later
        log.warning(
            "%s%s; store operations fail with %d and Retry-After until it recovers (logged once)",
            error.reason,
            note,
            507 if status == "full" else 503,
        )
        self._tell(status)

    def succeeded(self, *, wrote: bool) -> None:
        """A transaction or probe succeeded: a write ends the episode; a read does not (reads
        succeed on a full disk, and on SQLite while another process holds the write lock)."""
        with self._lock:
            if self.status == "ok" or not wrote:
                return
            was, failures, lasted = self.status, self.failures, time.monotonic() - self._since
            self.status, self.reason, self.failures = "ok", "", 0
        log.warning("the store recovered (it was %s for %.1f s, %d operations failed)", was, lasted, failures)
        self._tell("ok")

    def _tell(self, status: Status) -> None:
        for listener in list(self.listeners):
            listener(status)
