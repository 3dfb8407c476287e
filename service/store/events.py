"""The SQL of inference events' halves (table `loss_events`), run inside the store's transactions
(`Store.log_event`, `Store.sweep_events`, `Store.delete_batch`), which hold the model's lock.

A half waits in one row until the other half of its event arrives; the model's row counts the
waiting halves (`pending_events`), their bytes (`pending_event_bytes`) and those that expired
unmatched (`expired_events`), changed in the same statement sequence as the rows they count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.store.database import Transaction
from service.store.errors import TooManyPendingEventsError
from service.store.schema import ROW_BYTES

REQUEST, RESPONSE = 0, 1


@dataclass(frozen=True)
class EventBounds:
    """How many halves, and how many bytes of them, a model may keep waiting, and for how long."""

    max_halves: int
    max_bytes: int
    ttl_seconds: float


@dataclass(frozen=True)
class EventCounts:
    """A model's waiting halves, their bytes, and the halves that expired unmatched."""

    pending: int
    pending_bytes: int
    expired: int


@dataclass(frozen=True)
class Waiting:
    """An event's row: the half that waits (or waited: `done_at` set once the event completed)."""

    id: str
    half: int
    arrived: float
    done_at: float | None
    size: int
    meta: str | None
    payload: bytes | None


def half_size(event_id: str, meta: str, payload: bytes | None) -> int:
    """What a waiting half counts towards `max_bytes`: ROW_BYTES, its id's, meta's and payload's bytes."""
    return ROW_BYTES + len(event_id.encode("utf-8", "surrogatepass")) + len(meta.encode()) + len(payload or b"")


def counts(tx: Transaction, model_id: int) -> EventCounts:
    row = tx.one("SELECT pending_events, pending_event_bytes, expired_events FROM loss_models WHERE id = ?", [model_id])
    assert row is not None
    return EventCounts(int(row[0]), int(row[1]), int(row[2]))


def waiting(tx: Transaction, model_id: int, event_id: str) -> Waiting | None:
    row = tx.one(
        "SELECT id, half, arrived, done_at, size, meta, payload FROM loss_events WHERE model_id = ? AND id = ?",
        [model_id, event_id],
    )
    return None if row is None else _waiting(row)


def _waiting(row: tuple[Any, ...]) -> Waiting:
    event_id, half, arrived, done_at, size, meta, payload = row
    return Waiting(
        str(event_id),
        int(half),
        float(arrived),
        None if done_at is None else float(done_at),
        int(size),
        None if meta is None else str(meta),
        None if payload is None else bytes(payload),
    )


def keep(
    tx: Transaction,
    model_id: int,
    model: str,
    event_id: str,
    half: int,
    meta: str,
    payload: bytes | None,
    now: float,
    bounds: EventBounds,
) -> None:
    """Keep a half waiting, within `bounds`: halves older than the TTL expire first if the bounds
    would be passed, and if they still would, TooManyPendingEventsError, nothing kept."""
    size = half_size(event_id, meta, payload)
    found = counts(tx, model_id)
    if found.pending + 1 > bounds.max_halves or found.pending_bytes + size > bounds.max_bytes:
        expire(tx, model_id, stale(tx, model_id, now - bounds.ttl_seconds, found.pending))
        found = counts(tx, model_id)
    if found.pending + 1 > bounds.max_halves:
        raise TooManyPendingEventsError(
            model, "halves", found.pending + 1, bounds.max_halves, "LOSS_SERVICE_EVENT_MAX_PENDING"
        )
    if found.pending_bytes + size > bounds.max_bytes:
        raise TooManyPendingEventsError(
            model, "bytes", found.pending_bytes + size, bounds.max_bytes, "LOSS_SERVICE_EVENT_MAX_PENDING_BYTES"
        )
    tx.execute(
        "INSERT INTO loss_events (model_id, id, half, arrived, size, meta, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [model_id, event_id, half, now, size, meta, payload],
    )
    tx.execute(
        "UPDATE loss_models SET pending_events = pending_events + 1, pending_event_bytes = pending_event_bytes + ? "
        "WHERE id = ?",
        [size, model_id],
    )


def done(tx: Transaction, model_id: int, half: Waiting, now: float) -> None:
    """The event completed: its waiting half is dropped, its row kept as a marker of duplicates."""
    tx.execute(
        "UPDATE loss_events SET done_at = ?, meta = NULL, payload = NULL WHERE model_id = ? AND id = ?",
        [now, model_id, half.id],
    )
    tx.execute(
        "UPDATE loss_models SET pending_events = pending_events - 1, pending_event_bytes = pending_event_bytes - ? "
        "WHERE id = ?",
        [half.size, model_id],
    )


def stale(tx: Transaction, model_id: int, cutoff: float, limit: int) -> list[Waiting]:
    """Up to `limit` waiting halves that arrived before `cutoff`, oldest first (the partial index
    of waiting halves: completed events are not read)."""
    if limit <= 0:
        return []
    rows = tx.all(
        "SELECT id, half, arrived, done_at, size, NULL, NULL FROM loss_events "
        "WHERE model_id = ? AND done_at IS NULL AND arrived < ? ORDER BY arrived LIMIT ?",
        [model_id, cutoff, limit],
    )
    return [_waiting(row) for row in rows]


def expire(tx: Transaction, model_id: int, halves: Sequence[Waiting]) -> None:
    """Remove waiting halves unmatched, and count them as expired."""
    if not halves:
        return
    tx.execute(
        f"DELETE FROM loss_events WHERE model_id = ? AND id {tx.dialect.in_list}",
        [model_id, tx.dialect.list_parameter([half.id for half in halves])],
    )
    tx.execute(
        "UPDATE loss_models SET pending_events = pending_events - ?, pending_event_bytes = pending_event_bytes - ?, "
        "expired_events = expired_events + ? WHERE id = ?",
        [len(halves), sum(half.size for half in halves), len(halves), model_id],
    )


def forget_done(tx: Transaction, model_id: int, cutoff: float, limit: int) -> int:
    """Remove up to `limit` markers of completed events whose first half arrived before `cutoff`."""
    rows = tx.all(
        "SELECT id FROM loss_events WHERE model_id = ? AND arrived < ? AND done_at IS NOT NULL "
        "ORDER BY arrived LIMIT ?",
        [model_id, cutoff, limit],
    )
    if rows:
        tx.execute(
            f"DELETE FROM loss_events WHERE model_id = ? AND id {tx.dialect.in_list}",
            [model_id, tx.dialect.list_parameter([row[0] for row in rows])],
        )
    return len(rows)


def delete_some(tx: Transaction, model_id: int, limit: int) -> int:
    """Remove up to `limit` of the model's event rows (a model's deletion), its counts kept equal
    to the rows left; how many were removed."""
    if limit <= 0:
        return 0
    rows = tx.all("SELECT id, done_at, size FROM loss_events WHERE model_id = ? LIMIT ?", [model_id, limit])
    if not rows:
        return 0
    tx.execute(
        f"DELETE FROM loss_events WHERE model_id = ? AND id {tx.dialect.in_list}",
        [model_id, tx.dialect.list_parameter([row[0] for row in rows])],
    )
    waiting_rows = [row for row in rows if row[1] is None]
    tx.execute(
        "UPDATE loss_models SET pending_events = pending_events - ?, pending_event_bytes = pending_event_bytes - ? "
        "WHERE id = ?",
        [len(waiting_rows), sum(int(row[2]) for row in waiting_rows), model_id],
    )
    return len(rows)
