"""The access log: one JSON line per request, written to stderr a batch at a time."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import orjson

access_log = logging.getLogger("loss_service.access")


class BatchedStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's handler: lines go to stderr a batch at a time, once `batch_bytes` are
    waiting or `flush_after` seconds after the first of a batch, and when the app stops (its
    lifespan flushes the access log's handlers; `logging.shutdown` does too, at exit). A write
    and flush per line would cost more than a tenth of a small request; a crash loses at most the last
    `flush_after` seconds of lines.
    """

    def __init__(self, stream: Any = None, flush_after: float = 0.1, batch_bytes: int = 64 * 1024) -> None:
        super().__init__(stream)
        # Given no stream, lines go to whatever sys.stderr is when they are written, as logging's
        # last-resort handler does: a process that replaces it (a test runner capturing output,
        # an application embedding the service) is followed, never written to once it closed it.
        self.follows_stderr = stream is None
        self.flush_after, self.batch_bytes = flush_after, batch_bytes
        self._lines: list[str] = []
        self._size = 0
        self._due = threading.Event()
        threading.Thread(target=self._flush_when_due, name="access-log", daemon=True).start()

    def setStream(self, stream: Any) -> Any:  # noqa: N802 - logging's name
        self.follows_stderr = False  # a stream chosen is kept
        return super().setStream(stream)

    def write_line(self, line: str) -> None:
        """Queue one line; no LogRecord is made (what `RequestMonitor` calls when this handler is
        the access log's only destination)."""
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            self._size += len(line) + 1
            if self._size >= self.batch_bytes:
                self._write()
            elif len(self._lines) == 1:
                self._due.set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _write(self) -> None:
        if self.follows_stderr:
            self.stream = sys.stderr
        if self._lines:
            self.stream.write("\n".join(self._lines) + "\n")
            self._lines.clear()
            self._size = 0
        super().flush()

    def _flush_when_due(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.flush_after)
            self._due.clear()
            self.flush()


def _direct_access_handler() -> BatchedStderr | None:
    """The access log's handler if it is the only place lines go: then a line needs no LogRecord."""
    handlers = access_log.handlers
    if len(handlers) != 1 or access_log.propagate or access_log.filters:
        return None
    handler = handlers[0]
    return handler if isinstance(handler, BatchedStderr) and not handler.filters else None


def write_access_line(line: dict[str, Any]) -> None:
    """One request's line, straight to the handler when it is the only destination."""
    text = orjson.dumps(line).decode()
    direct = _direct_access_handler()
    if direct is not None:
        direct.write_line(text)
    else:
        access_log.info(text)
