"""A buffered logger of predictions and labels, for services that see one prediction at a time.

    >>> with LossClient(url) as client, client.logger("fraud-v3") as log:
    ...     log.prediction("tx-1", logits)      # returns at once; sent in a batch
    ...     log.label("tx-0", 1)

One HTTP request per prediction would cost more than the model, so rows are kept in memory
and sent from a background thread in batches of `batch_size`, or when the oldest has waited
`max_delay` seconds. A prediction's timestamp is taken when it is logged, not when it is sent.
Memory is bounded: past `max_buffered` rows waiting, new rows are dropped and counted. When
the service cannot be reached, batches are kept and sent again (a row sent twice is only a
duplicate on the service); what is still unsent when `close` gives up is dropped and counted.
Batches the service refuses as invalid are dropped, counted in `rejected`, and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

import numpy as np

from service.client.errors import InvalidInputError, LossServiceError, NotFoundError

log = logging.getLogger("loss_service.logger")


class _Answer(Protocol):
    @property
    def joined_ids(self) -> list[str]: ...


class Sender(Protocol):
    """What the logger needs of a client (`LossClient` is one)."""

    def log_predictions(self, model: str, ids: Any, predictions: Any, *, timestamps: Any = None) -> _Answer: ...

    def log_labels(self, model: str, ids: Any, labels: Any, *, sample_weight: Any = None) -> _Answer: ...


@dataclass
class LoggerStats:
    """What the logger did with the rows it was given."""

    sent_predictions: int = 0
    sent_labels: int = 0
    # Rows never delivered: the buffer was full, or close() gave up on an unreachable service.
    dropped_predictions: int = 0
    dropped_labels: int = 0
    # Rows in batches the service refused (400/404/422): retrying cannot help.
    rejected: int = 0
    # Rows whose id was already waiting in the buffer: the first is kept, as the service would.
    duplicates: int = 0
    joined: int = 0
    failed_attempts: int = 0
    last_error: str | None = None


@dataclass
class _Side:
    ids: list[Any] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)
    extra: list[float | None] = field(default_factory=list)
    waiting: set[Any] = field(default_factory=set)
    oldest: float | None = None


class PredictionLogger:
    """Use as a context manager, or call `close()`; see the module docstring."""

    def __init__(
        self,
        client: Sender,
        model: str,
        *,
        batch_size: int = 1000,
        max_delay: float = 1.0,
        max_buffered: int = 100_000,
        close_timeout: float = 10.0,
        retry_interval: float = 1.0,
    ) -> None:
        if batch_size < 1 or max_buffered < 1:
            raise ValueError("batch_size and max_buffered must be >= 1")
        self.client, self.model = client, model
        self.batch_size, self.max_delay, self.max_buffered = batch_size, max_delay, max_buffered
        self.close_timeout, self.retry_interval = close_timeout, retry_interval
        self._wait = retry_interval  # before the next attempt after a failed one
        self.stats = LoggerStats()
        self._sides = {"predictions": _Side(), "labels": _Side()}
        self._changed = threading.Condition()
        self._closing = False
        self._flush_requested = False
        self._thread = threading.Thread(target=self._run, name=f"loss-service-logger-{model}", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def prediction(self, row_id: str | int, row: Any, timestamp: float | None = None) -> bool:
        """Queue one prediction; False if it was dropped because the buffer is full."""
        return self._add("predictions", row_id, row, time.time() if timestamp is None else timestamp)

    def label(self, row_id: str | int, value: Any, weight: float | None = None) -> bool:
        """Queue one label (with an optional sample weight); False if it was dropped."""
        return self._add("labels", row_id, value, weight)

    def _add(self, side: str, row_id: Any, row: Any, extra: float | None) -> bool:
        row_id = int(row_id) if isinstance(row_id, np.integer) else row_id
        with self._changed:
            if self._closing:
                raise RuntimeError("the logger is closed")
            queue = self._sides[side]
            if str(row_id) in queue.waiting:
                self.stats.duplicates += 1
                return True
            if sum(len(s.ids) for s in self._sides.values()) >= self.max_buffered:
                self._count_dropped(side, 1)
                return False
            queue.ids.append(row_id)
            queue.rows.append(row)
            queue.extra.append(extra)
            queue.waiting.add(str(row_id))
            queue.oldest = queue.oldest or time.monotonic()
            if len(queue.ids) >= self.batch_size:
                self._changed.notify()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything buffered now; True once the buffer is empty, False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            self._flush_requested = True
            self._changed.notify()
            while any(s.ids for s in self._sides.values()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self) -> LoggerStats:
        """Send what is buffered (waiting up to `close_timeout`), drop and count what could not
        be sent, stop the thread, and return the stats."""
        if not self._closing:
            self.flush(self.close_timeout)
            with self._changed:
                self._closing = True
                self._changed.notify()
            self._thread.join()
            with self._changed:
                for side, queue in self._sides.items():
                    self._count_dropped(side, len(queue.ids))
                    self._take(queue, len(queue.ids))
            dropped = self.stats.dropped_predictions + self.stats.dropped_labels
            if dropped or self.stats.rejected:
                log.warning(
                    "loss-service logger for %s dropped %d predictions and %d labels, and the service refused %d "
                    "rows; last error: %s",
                    self.model,
                    self.stats.dropped_predictions,
                    self.stats.dropped_labels,
                    self.stats.rejected,
                    self.stats.last_error,
                )
        return self.stats

    def _count_dropped(self, side: str, count: int) -> None:
        if side == "predictions":
            self.stats.dropped_predictions += count
        else:
            self.stats.dropped_labels += count

    def _due(self) -> bool:
        if self._flush_requested or self._closing:
            return any(s.ids for s in self._sides.values())
        now = time.monotonic()
        return any(
            len(s.ids) >= self.batch_size or (s.oldest is not None and now - s.oldest >= self.max_delay)
            for s in self._sides.values()
        )

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due() and not self._closing:
                    self._changed.wait(self.max_delay / 4 if any(s.ids for s in self._sides.values()) else None)
                if self._closing:
                    return
                batches = {side: self._peek(queue) for side, queue in self._sides.items()}
            # Predictions first: a prediction and its label buffered together join at the label.
            failed = False
            for side, batch in batches.items():
                if batch[0] and not self._send(side, *batch):
                    failed = True
                    break
            with self._changed:
                if not any(s.ids for s in self._sides.values()):
                    self._flush_requested = False
                self._changed.notify_all()
                if failed:  # the service is unreachable, overloaded or full: wait, then try again
                    self._changed.wait(self._wait)

    def _peek(self, queue: _Side) -> tuple[list[Any], list[Any], list[float | None]]:
        count = min(len(queue.ids), self.batch_size)
        return queue.ids[:count], queue.rows[:count], queue.extra[:count]

    def _take(self, queue: _Side, count: int) -> None:
        for row_id in queue.ids[:count]:
            queue.waiting.discard(str(row_id))
        del queue.ids[:count], queue.rows[:count], queue.extra[:count]
        queue.oldest = time.monotonic() if queue.ids else None

    def _send(self, side: str, ids: list[Any], rows: list[Any], extra: list[float | None]) -> bool:
        """One batch; True when it is settled (sent, or refused for good), False to retry later."""
        try:
            if side == "predictions":
                result = self.client.log_predictions(self.model, ids, rows, timestamps=extra)
            else:
                given = any(w is not None for w in extra)
                weights = [1.0 if w is None else w for w in extra] if given else None
                result = self.client.log_labels(self.model, ids, rows, sample_weight=weights)
        except (InvalidInputError, NotFoundError) as exc:
            log.error("loss-service refused a batch of %d %s for %s: %s", len(ids), side, self.model, exc)
            with self._changed:
                self.stats.rejected += len(ids)
                self.stats.last_error = str(exc)
                self._take(self._sides[side], len(ids))
            return True
        except LossServiceError as exc:
            with self._changed:
                self.stats.failed_attempts += 1
                self.stats.last_error = str(exc)
                # The service's Retry-After (503, 507) when it asks for longer than retry_interval.
                self._wait = max(self.retry_interval, exc.retry_after or 0.0)
            return False
        with self._changed:
            if side == "predictions":
                self.stats.sent_predictions += len(ids)
            else:
                self.stats.sent_labels += len(ids)
            self.stats.joined += len(result.joined_ids)
            self._take(self._sides[side], len(ids))
        return True
