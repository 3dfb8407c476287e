"""The inference events: each event's request and response halves kept until both have come,
then logged as predictions in the same transaction, and swept when they wait too long
(`Store`'s event methods)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.store import events
from service.store.database import Database
from service.store.events import EventBounds, EventCounts
from service.store.records import EventLogged, EventRows, Logged, Model, Quota, T
from service.store.retention import SWEEP_BATCH_ROWS
from service.store.rows import _check_ids, _lock_holder, _locked_model, _segment_rows


class _InferenceEvents:
    """`Store`'s operations on inference events, each one transaction."""

    database: Database
    _log: Callable[..., Logged[Any]]  # Store's rows path: log one side's rows in a transaction

    def log_event(
        self,
        name: str,
        event_id: str,
        half: int,
        meta: str,
        payload: bytes | None,
        *,
        now: float,
        bounds: EventBounds,
        max_pending: int,
        complete: Callable[[Model, int, str, bytes | None], EventRows[T]],
        quota: Quota | None = None,
    ) -> EventLogged[T]:
        """One half of an inference event (`half`: events.REQUEST or events.RESPONSE, `meta` and
        `payload` encoded by the caller), in one transaction under the model's lock.

        - No half of `event_id` waits (or the one waiting is older than `bounds.ttl_seconds`,
          which then expires): this half waits, within `bounds` (TooManyPendingEventsError).
        - The same half waits, or the event completed before: a duplicate; nothing changes.
        - The other half waits: `complete(model, its half, its meta, its payload)` makes the
          prediction rows of both, which are logged as `log` logs predictions (with the rows'
          segments and the pairs' `history_of`), in this very transaction; the event is marked
          done, its halves dropped. If `complete` or the log
          raises, nothing of either half changes.
        """
        with self.database.transaction() as tx:
            _lock_holder(tx, quota)
            model_id, model = _locked_model(tx, name)
            found = events.waiting(tx, model_id, event_id)
            if found is not None and found.done_at is None and found.arrived < now - bounds.ttl_seconds:
                events.expire(tx, model_id, [found])
                found = None
            if found is None:
                events.keep(tx, model_id, name, event_id, half, meta, payload, now, bounds)
                return EventLogged("pending", model, events.counts(tx, model_id))
            if found.done_at is not None or found.half == half:
                return EventLogged("duplicate", model, events.counts(tx, model_id))
            made = complete(model, found.half, found.meta or "", found.payload)
            _check_ids(made.ids)
            segments = _segment_rows(made.segments, len(made.ids))
            logged = self._log(
                tx, model_id, model, "predictions", made.ids, made.rows, now, max_pending, made.timestamps, None,
                made.on_join, quota, segments, made.history_of,
            )  # fmt: skip
            events.done(tx, model_id, found, now)
            return EventLogged("completed", logged.model, events.counts(tx, model_id), logged)

    def event_counts(self, name: str) -> EventCounts | None:
        """The model's waiting event halves, their bytes and the halves expired; None: no model."""
        with self.database.transaction(write=False) as tx:
            found = tx.one("SELECT id FROM loss_models WHERE name = ?", [name])
            return None if found is None else events.counts(tx, found[0])

    def sweep_events(self, name: str, now: float, ttl_seconds: float, limit: int = SWEEP_BATCH_ROWS) -> bool | None:
        """One transaction of the events' sweep: up to `limit` halves waiting longer than
        `ttl_seconds` (or the model's retention) expire, then up to `limit` markers of completed
        events past the model's retention go. True: nothing is left to sweep; None: no model."""
        with self.database.transaction() as tx:
            found = tx.one(f"SELECT id, retention_seconds FROM loss_models WHERE name = ?{tx.dialect.lock_row}", [name])
            if found is None:
                return None
            model_id, retention = found[0], float(found[1])
            cutoff = now - min(ttl_seconds, retention)
            expired = events.stale(tx, model_id, cutoff, limit)
            events.expire(tx, model_id, expired)
            removed = events.forget_done(tx, model_id, now - retention, limit)
        return len(expired) < limit and removed < limit
