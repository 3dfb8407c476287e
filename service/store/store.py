"""The delayed-labels store: configured models, their predictions and labels, joined once.

Each operation is one transaction, except the retention sweep and a model's removal, which go
in batches of at most `SWEEP_BATCH_ROWS` rows per transaction so that no writer waits long
behind them. Concurrency rules, where they are enforced:
- `(model_id, id)` is the primary key of each row table and rows are inserted with
  `ON CONFLICT DO NOTHING`: a repeated id never overwrites the first row (first write wins).
- Every writing transaction first locks its model's row (`_locked_model`): on SQLite by
  `BEGIN IMMEDIATE`, on PostgreSQL by `SELECT ... FOR UPDATE`. Two requests that complete the
  same pair from opposite sides therefore run one after the other, and the second sees the
  first's row: each pair is joined by exactly one transaction, whatever the order, retries,
  workers or replicas.
- A write checked against a `Quota` first takes its holder's lock (SQLite: the database's write
  lock; PostgreSQL: an advisory lock on the holder's name), then its model's: two writes of
  one holder check and add to its usage one after the other, so they cannot both fit under
  its limit. Each model's `stored_bytes` changes in the transaction that changes its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import orjson

from service.store import events, history
from service.store.connect import connect
from service.store.database import Database, Transaction
from service.store.errors import QuotaExceededError, RowShapeError, SegmentKeysRemovedError, TooManyPendingError
from service.store.events import EventBounds, EventCounts
from service.store.history import HISTORY_LOSS, PairLosses, PredictionRow, RollupCell, RollupLoss
from service.store.records import EventLogged, EventRows, Logged, Model, Pairs, Quota, Side, Swept, T, Usage, _Written
from service.store.rows import (
    _CODES,
    _MODEL_COLUMNS,
    _TABLE,
    _check_ids,
    _decode,
    _id_bytes,
    _lock_holder,
    _locked_model,
    _model,
    _segment_rows,
    _segment_texts,
    _text_bytes,
    _usage,
)
from service.store.schema import ROW_BYTES, migrate, table_bytes_sql

# Rows one retention sweep, and one DELETE of a model, remove per transaction: the write lock is
# never held for long (bench/tenants.py measured batch sizes: docs/performance.md).
SWEEP_BATCH_ROWS = 250
DELETE_BATCH_ROWS = SWEEP_BATCH_ROWS


class Store:
    """The operations the service performs on its database, each one transaction (the sweep
    and a model's removal: one per batch)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        migrate(database)

    @classmethod
    def open(cls, url: str, max_connections: int = 10, timeout: float = 5.0, reserve_bytes: int = 0) -> Store:
        return cls(connect(url, max_connections, timeout, reserve_bytes))

    def close(self) -> None:
        self.database.close()

    # -- models ---------------------------------------------------------------------------------

    def configure_model(
        self, name: str, config: dict[str, Any], retention_seconds: float, now: float, quota: Quota | None = None
    ) -> Model:
        """Create the model, or replace its configuration; its rows and counters stay. Creating it
        is refused (QuotaExceededError) when `quota`'s holder already has `max_models` models.
        Replacing it updates its row in place, which adds no row: it runs in SQLite's full-disk
        mode, so a shorter retention can let the sweep free the disk. Segment keys (`segments`)
        may be added, each rollup of the model's rows copied as that key's null value, never
        removed (SegmentKeysRemovedError)."""
        with self.database.transaction() as tx:
            _lock_holder(tx, quota)
            found = tx.one(f"SELECT id, config FROM loss_models WHERE name = ?{tx.dialect.lock_row}", [name])
            if found is not None:
                before = list(orjson.loads(found[1]).get("segments", []))
                after = list(config.get("segments", []))
                removed = [key for key in before if key not in after]
                if removed:
                    raise SegmentKeysRemovedError(name, removed)
                history.add_keys(tx, found[0], [key for key in after if key not in before])
                tx.execute(
                    "UPDATE loss_models SET config = ?, retention_seconds = ?, updated_at = ? WHERE id = ?",
                    [orjson.dumps(config).decode(), retention_seconds, now, found[0]],
                )
            else:
                if quota is not None:
                    usage = _usage(tx, quota)
                    if usage.models + 1 > quota.max_models:
                        raise QuotaExceededError("max_models", quota.holder, usage.models, 1, quota.max_models)
                tx.execute(
                    "INSERT INTO loss_models (name, config, retention_seconds, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "config = excluded.config, retention_seconds = excluded.retention_seconds, "
                    "updated_at = excluded.updated_at",
                    [name, orjson.dumps(config).decode(), retention_seconds, now, now],
                )
            row = tx.one(f"SELECT {_MODEL_COLUMNS} FROM loss_models WHERE name = ?", [name])
        assert row is not None
        return _model(row)

    def usage(self, quota: Quota) -> Usage:
        """The holder's usage as committed."""
        return self.usages([quota])[0]

    def usages(self, quotas: Sequence[Quota]) -> list[Usage]:
        """Each holder's usage as committed, in one transaction."""
        with self.database.transaction(write=False) as tx:
            return [_usage(tx, quota) for quota in quotas]

    def model(self, name: str) -> Model | None:
        with self.database.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_MODEL_COLUMNS} FROM loss_models WHERE name = ?", [name])
        return None if row is None else _model(row)

    def models(self) -> list[Model]:
        with self.database.transaction(write=False) as tx:
            rows = tx.all(f"SELECT {_MODEL_COLUMNS} FROM loss_models ORDER BY name")
        return [_model(row) for row in rows]

    def oldest_pending(self, name: str) -> float | None:
        """Arrival time of the model's oldest row still waiting for its other half.

        The first entry of the model's range in each side's index of pending rows: its cost does
        not grow with the joined rows the model keeps."""
        with self.database.transaction(write=False) as tx:
            found = tx.one("SELECT id FROM loss_models WHERE name = ?", [name])
            if found is None:
                return None
            firsts = [
                tx.one(
                    f"SELECT arrived FROM {table} WHERE model_id = ? AND joined_at IS NULL ORDER BY arrived LIMIT 1",
                    [found[0]],
                )
                for table in _TABLE.values()
            ]
        times = [float(row[0]) for row in firsts if row is not None]
        return min(times) if times else None

    def delete_model(self, name: str, batch_rows: int = DELETE_BATCH_ROWS) -> bool:
        """Remove the model and every row stored for it; False if there was no such model.

        Rows go `batch_rows` per transaction (`delete_batch`), each taking the unjoined ones it
        removes off the model's pending counts and their bytes off its `stored_bytes`; the model's
        row goes with the last. On a full disk each batch's journal pages fit in the room the store
        keeps for deletions (space.py). A deletion that fails partway leaves the model with fewer
        rows and counts that match them: repeat it."""
        found_once = False
        while True:
            done = self.delete_batch(name, batch_rows)
            if done is None:
                return found_once  # deleted meanwhile, or never there
            if done:
                return True
            found_once = True

    def delete_batch(self, name: str, limit: int = DELETE_BATCH_ROWS) -> bool | None:
        """One transaction of removing a model: up to `limit` of its rows, its pending counts and
        `stored_bytes` kept equal to the rows left; once fewer than `limit` were left, the model's
        row too.

        True: the model is gone; False: rows are left (call again); None: there is no such model.
        Rows logged meanwhile are removed by a later batch: the model is gone when this says so."""
        with self.database.transaction() as tx:
            found = tx.one(f"SELECT id FROM loss_models WHERE name = ?{tx.dialect.lock_row}", [name])
            if found is None:
                return None
            model_id, left, unjoined, freed = found[0], limit, [], 0
            for table in _TABLE.values():
                rows = tx.all(
                    "SELECT id, CASE WHEN joined_at IS NULL THEN 1 ELSE 0 END, "
                    f"{table_bytes_sql(tx.dialect.name, table)} FROM {table} WHERE model_id = ? LIMIT ?",
                    [model_id, left],
                )
                if rows:
                    tx.execute(
                        f"DELETE FROM {table} WHERE model_id = ? AND id {tx.dialect.in_list}",
                        [model_id, tx.dialect.list_parameter([row[0] for row in rows])],
                    )
                unjoined.append(sum(int(row[1]) for row in rows))
                freed += sum(int(row[2]) for row in rows)
                left -= len(rows)
            left -= events.delete_some(tx, model_id, left)
            left -= history.sweep_cells(tx, model_id, None, left)
            if left > 0:  # fewer rows than a batch were left: the last batch
                tx.execute("DELETE FROM loss_models WHERE id = ?", [model_id])
                return True
            tx.execute(
                "UPDATE loss_models SET pending_predictions = pending_predictions - ?, "
                "pending_labels = pending_labels - ?, stored_bytes = stored_bytes - ? WHERE id = ?",
                [unjoined[0], unjoined[1], freed, model_id],
            )
        return False

    # -- rows -----------------------------------------------------------------------------------

    def log(
        self,
        side: Side,
        name: str,
        ids: Sequence[str],
        rows: np.ndarray[Any, Any],
        *,
        now: float,
        max_pending: int,
        timestamps: Sequence[float] | None = None,
        weights: Sequence[float] | None = None,
        on_join: Callable[[Model, Pairs], T],
        quota: Quota | None = None,
        segments: Sequence[Mapping[str, str]] | None = None,
        history_of: Callable[[T], Sequence[PairLosses]] | None = None,
    ) -> Logged[T]:
        """Store one side's rows and join those whose other half is waiting.

        `ids`: distinct, none holding U+0000 or a lone surrogate; otherwise `RowIdError`, and
        nothing is stored (a silently merged or truncated id would leave the counters wrong).

        `rows`: one row per id, in a dtype of `DTYPES`. `timestamps` (predictions only): each
        prediction's time, default `now`; `weights` (labels only): each label's sample weight;
        `segments` (predictions only): each prediction's non-null segment values.
        `on_join(model, pairs)` runs inside the transaction on the pairs this call completed,
        with the model's configuration as it is now; if it raises, nothing is stored.
        `history_of(result)`: what the pairs keep of `on_join`'s result, one `PairLosses` per
        configured loss, in order (history.py); without it joined rows keep no losses.
        A write that would add stored bytes past `quota.max_stored_bytes` raises
        QuotaExceededError before any row is written; one that adds none always passes.
        """
        _check_ids(ids)
        with self.database.transaction() as tx:
            _lock_holder(tx, quota)
            model_id, model = _locked_model(tx, name)
            return self._log(
                tx, model_id, model, side, ids, rows, now, max_pending, timestamps, weights, on_join, quota,
                segments, history_of,
            )  # fmt: skip

    def _log(
        self,
        tx: Transaction,
        model_id: int,
        model: Model,
        side: Side,
        ids: Sequence[str],
        rows: np.ndarray[Any, Any],
        now: float,
        max_pending: int,
        timestamps: Sequence[float] | None,
        weights: Sequence[float] | None,
        on_join: Callable[[Model, Pairs], T],
        quota: Quota | None,
        segments: Sequence[Mapping[str, str]] | None,
        history_of: Callable[[T], Sequence[PairLosses]] | None,
    ) -> Logged[T]:
        """`log`'s work inside a transaction that holds the model's lock (and the quota holder's)."""
        other: Side = "labels" if side == "predictions" else "predictions"
        usage = None
        texts = _segment_texts(segments, len(ids)) if side == "predictions" else None
        model = self._fix_shape(tx, model_id, model, side, tuple(rows.shape[1:]))
        existing = {
            row[0]
            for row in tx.all(
                f"SELECT id FROM {_TABLE[side]} WHERE model_id = ? AND id {tx.dialect.in_list}",
                [model_id, tx.dialect.list_parameter(ids)],
            )
        }
        fresh = [i for i, row_id in enumerate(ids) if row_id not in existing]
        partners = self._waiting_partners(tx, other, model_id, [ids[i] for i in fresh])
        joined = [i for i in fresh if ids[i] in partners]
        keep = bool(model.config.get("keep_pairs", False))
        entry_bytes = HISTORY_LOSS.itemsize * len(model.config.get("losses", ())) if history_of else 0
        adding = self._added_bytes(ids, rows, fresh, joined, partners, keep, entry_bytes, texts)
        if quota is not None:
            usage = _usage(tx, quota)
            if adding > 0 and usage.stored_bytes + adding > quota.max_stored_bytes:
                raise QuotaExceededError(
                    "max_stored_bytes", quota.holder, usage.stored_bytes, adding, quota.max_stored_bytes
                )
            usage = Usage(usage.models, usage.stored_bytes + adding)
        model = self._count(tx, model_id, model, side, len(fresh), len(joined), max_pending, adding)
        pairs = self._pairs(side, model, ids, rows, joined, partners, now, timestamps, weights, segments)
        joined_result = on_join(model, pairs) if joined else None
        kept = list(history_of(joined_result)) if history_of is not None and joined_result is not None else []
        if len(kept) * HISTORY_LOSS.itemsize != (entry_bytes if joined else 0):
            raise ValueError(f"history_of gave {len(kept)} losses for a model configured with other losses")
        losses = history.encode_losses(kept, len(pairs.ids))
        written = _Written(now, keep, texts, dict(zip(joined, losses, strict=True)), partners)
        # Rows that join now are stored joined, so only the other side's rows are updated.
        self._insert(tx, side, model_id, ids, rows, fresh, written, timestamps, weights)
        if joined:
            self._join_partners(tx, other, model_id, pairs.ids, now, keep)
        self._roll_up(tx, model_id, model, side, fresh, pairs, kept, now, timestamps, segments)
        duplicates = [ids[i] for i in range(len(ids)) if ids[i] in existing]
        return Logged(len(fresh), duplicates, pairs, joined_result, model, usage)

    @staticmethod
    def _roll_up(
        tx: Transaction,
        model_id: int,
        model: Model,
        side: Side,
        fresh: list[int],
        pairs: Pairs,
        kept: list[PairLosses],
        now: float,
        timestamps: Sequence[float] | None,
        segments: Sequence[Mapping[str, str]] | None,
    ) -> None:
        """Count the predictions logged and the pairs joined into the model's rollups."""
        keys = list(model.config.get("segments", ()))
        oldest_end = now - model.retention_seconds
        logged = None
        if side == "predictions" and fresh:
            times = np.array([now if timestamps is None else timestamps[i] for i in fresh], dtype=np.float64)
            values = [{} if segments is None else segments[i] for i in fresh]
            logged = history.cells_of(times, values, keys, oldest_end)
        counted = np.flatnonzero(pairs.rolled_up) if pairs.ids else np.zeros(0, np.int64)
        joined = None
        if counted.size == len(pairs.ids) and counted.size:
            joined = history.cells_of(pairs.times, pairs.segments, keys, oldest_end)
        elif counted.size:  # some pairs' predictions were logged before history was kept
            values = [pairs.segments[i] for i in counted]
            joined = history.cells_of(pairs.times[counted], values, keys, oldest_end)
            kept = [
                replace(
                    loss,
                    sums=loss.sums[counted],
                    denominators=loss.denominators[counted],
                    counts=loss.counts[counted],
                )
                for loss in kept
            ]
        history.roll_up(tx, model_id, logged, joined, pairs.delays[counted], kept)

    # -- inference events -----------------------------------------------------------------------

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

    @staticmethod
    def _added_bytes(
        ids: Sequence[str],
        rows: np.ndarray[Any, Any],
        fresh: list[int],
        joined: list[int],
        partners: dict[str, tuple[Any, ...]],
        keep: bool,
        entry_bytes: int,
        texts: list[str | None] | None,
    ) -> int:
        """What storing the rows at `fresh` adds to `stored_bytes`: each row with its id and
        segments, waiting ones with their payload (joining ones too with `keep`), less the payloads
        of the partners that join (dropped unless `keep`), and each joined pair's losses."""
        size = int(rows[0].nbytes) if len(rows) else 0
        added = sum(ROW_BYTES + _id_bytes(ids[i]) for i in fresh) + size * (len(fresh) - (0 if keep else len(joined)))
        if texts is not None:
            added += sum(_text_bytes(texts[i]) for i in fresh)
        dropped = 0 if keep else sum(len(partners[ids[i]][2]) for i in joined)
        return added - dropped + entry_bytes * len(joined)

    @staticmethod
    def _fix_shape(tx: Transaction, model_id: int, model: Model, side: Side, shape: tuple[int, ...]) -> Model:
        """The first rows of a side fix its per-row shape for good."""
        column = "prediction_shape" if side == "predictions" else "label_shape"
        fixed = getattr(model, column)
        if fixed is None:
            tx.execute(f"UPDATE loss_models SET {column} = ? WHERE id = ?", [orjson.dumps(shape).decode(), model_id])
            if side == "predictions":
                return replace(model, prediction_shape=shape)
            return replace(model, label_shape=shape)
        if fixed != shape:
            raise RowShapeError(side, fixed, shape)
        return model

    @staticmethod
    def _insert(
        tx: Transaction,
        side: Side,
        model_id: int,
        ids: Sequence[str],
        rows: np.ndarray[Any, Any],
        fresh: list[int],
        written: _Written,
        timestamps: Sequence[float] | None,
        weights: Sequence[float] | None,
    ) -> None:
        """Store the rows at `fresh`; those that join now (`written.losses`) already joined."""
        if not fresh:
            return
        rows = np.ascontiguousarray(rows)
        code, raw, size = _CODES[rows.dtype], rows.tobytes(), rows[0].nbytes
        payloads = [raw[i * size : (i + 1) * size] for i in fresh]
        now, joining, keep = written.now, written.losses, written.keep
        columns = [("model_id", "int"), ("id", "text"), ("arrived", "real")]
        # Joining rows and waiting ones differ in joined_at and payload: one insert for each group.
        groups: dict[bool, list[tuple[Any, ...]]] = {True: [], False: []}
        waiting, joined = groups[False], groups[True]
        if side == "predictions":
            columns += [("at", "real"), ("segments", "text"), ("rolled_up", "small")]
            columns += [("losses", "blob"), ("label_arrived", "real")]
            texts = written.texts or [None] * len(ids)
            ats = [None] * len(ids) if timestamps is None else timestamps
            for i, p in zip(fresh, payloads, strict=True):
                if i in joining:
                    arrival = written.partners[ids[i]][0]
                    stored = p if keep else None
                    joined.append((model_id, ids[i], now, ats[i], texts[i], 1, joining[i], arrival, now, code, stored))
                else:
                    waiting.append((model_id, ids[i], now, ats[i], texts[i], 1, None, None, None, code, p))
        else:
            columns += [("weight", "real"), ("losses", "blob")]
            given = [None] * len(ids) if weights is None else weights
            for i, p in zip(fresh, payloads, strict=True):
                if i in joining:
                    joined.append((model_id, ids[i], now, given[i], joining[i], now, code, p if keep else None))
                else:
                    waiting.append((model_id, ids[i], now, given[i], None, None, code, p))
        all_columns = [*columns, ("joined_at", "real"), ("dtype", "small"), ("payload", "blob")]
        for group in groups.values():
            if group:
                tx.insert_new(_TABLE[side], all_columns, group)

    @staticmethod
    def _join_partners(
        tx: Transaction,
        other: Side,
        model_id: int,
        ids: list[str],
        now: float,
        keep: bool,
    ) -> None:
        """Mark the other side's rows joined: their payloads dropped (unless `keep`), prediction
        rows given their label's arrival. One statement: the pairs' losses are on the rows this
        request inserts, so no row is updated with a value of its own."""
        dropped = "" if keep else ", payload = NULL"
        arrival = ", label_arrived = ?" if other == "predictions" else ""
        tx.execute(
            f"UPDATE {_TABLE[other]} SET joined_at = ?{arrival}{dropped} "
            f"WHERE model_id = ? AND id {tx.dialect.in_list}",
            [now, *([now] if arrival else []), model_id, tx.dialect.list_parameter(ids)],
        )

    @staticmethod
    def _waiting_partners(tx: Transaction, other: Side, model_id: int, ids: list[str]) -> dict[str, tuple[Any, ...]]:
        """The other side's unjoined rows with these ids: id -> (time, dtype code, payload, weight,
        segments, rolled_up); a label's time is its arrival, a prediction's its own time."""
        if not ids:
            return {}
        if other == "predictions":
            columns = "coalesce(at, arrived), dtype, payload, NULL, segments, rolled_up"
        else:
            columns = "arrived, dtype, payload, weight, NULL, NULL"
        rows = tx.all(
            f"SELECT id, {columns} FROM {_TABLE[other]} "
            f"WHERE model_id = ? AND joined_at IS NULL AND id {tx.dialect.in_list}",
            [model_id, tx.dialect.list_parameter(ids)],
        )
        return {row[0]: row[1:] for row in rows}

    @staticmethod
    def _pairs(
        side: Side,
        model: Model,
        ids: Sequence[str],
        rows: np.ndarray[Any, Any],
        joined: list[int],
        partners: dict[str, tuple[Any, ...]],
        now: float,
        timestamps: Sequence[float] | None,
        weights: Sequence[float] | None,
        segments: Sequence[Mapping[str, str]] | None,
    ) -> Pairs:
        joined_ids = [ids[i] for i in joined]
        mine = rows[joined]
        found = [partners[row_id] for row_id in joined_ids]
        other_shape = model.label_shape if side == "predictions" else model.prediction_shape
        theirs = _decode([f[2] for f in found], [f[1] for f in found], other_shape or ())
        if side == "predictions":
            times = np.array([now if timestamps is None else timestamps[i] for i in joined], dtype=np.float64)
            delays = np.array([f[0] for f in found], dtype=np.float64) - times
            values = [dict(segments[i]) if segments is not None else {} for i in joined]
            return Pairs(joined_ids, mine, theirs, [f[3] for f in found], delays, times, values, [True] * len(joined))
        label_weights = [None if weights is None else float(weights[i]) for i in joined]
        times = np.array([f[0] for f in found], dtype=np.float64)
        values = [{} if f[4] is None else orjson.loads(f[4]) for f in found]
        rolled = [f[5] is not None and int(f[5]) == 1 for f in found]
        return Pairs(joined_ids, theirs, mine, label_weights, now - times, times, values, rolled)

    @staticmethod
    def _count(
        tx: Transaction, model_id: int, model: Model, side: Side, stored: int, joined: int, limit: int, added: int
    ) -> Model:
        pending = {"predictions": model.pending_predictions, "labels": model.pending_labels}
        other: Side = "labels" if side == "predictions" else "predictions"
        before = sum(pending.values())
        pending[side] += stored - joined
        pending[other] -= joined
        after = sum(pending.values())
        if after > limit and after > before:  # a request that only drains pending rows always passes
            raise TooManyPendingError(model.name, after, limit)
        tx.execute(
            "UPDATE loss_models SET pending_predictions = ?, pending_labels = ?, joined = joined + ?, "
            "stored_bytes = stored_bytes + ? WHERE id = ?",
            [pending["predictions"], pending["labels"], joined, added, model_id],
        )
        return replace(
            model,
            pending_predictions=pending["predictions"],
            pending_labels=pending["labels"],
            joined=model.joined + joined,
            stored_bytes=model.stored_bytes + added,
        )

    # -- retention ------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        with self.database.transaction(write=False) as tx:
            return [row[0] for row in tx.all("SELECT name FROM loss_models ORDER BY name")]

    def sweep_expired(self, now: float, batch_rows: int = SWEEP_BATCH_ROWS) -> list[Swept]:
        """Delete every row that arrived more than its model's retention ago, one model at a time,
        `batch_rows` rows per transaction (`sweep_batch`)."""
        swept = []
        for name in self.model_names():
            total: Swept | None = None
            while True:
                batch = self.sweep_batch(name, now, batch_rows)
                if batch is None:
                    break  # deleted meanwhile
                total = batch if total is None else total.then(batch)
                if batch.done:
                    break
            if total is not None:
                swept.append(total)
        return swept

    def sweep_batch(self, name: str, now: float, limit: int = SWEEP_BATCH_ROWS) -> Swept | None:
        """One transaction of a retention sweep: delete up to `limit` of the model's rows that
        arrived before `now` minus its retention, oldest first, predictions before labels, and
        with what is left of `limit`, its rollup cells that ended before then (history.py). An
        unjoined prediction counts as expired in the cells that still hold it.

        Found through the `(model_id, arrived)` and `(model_id, ends)` indexes, so a batch costs
        O(limit log n). `done` says that fewer than `limit` rows and cells were left; `removed`
        counts the rows; None if there is no such model."""
        with self.database.transaction() as tx:
            found = tx.one(
                "SELECT id, retention_seconds, pending_predictions, pending_labels, config FROM loss_models "
                f"WHERE name = ?{tx.dialect.lock_row}",
                [name],
            )
            if found is None:
                return None
            model_id, retention, pending_predictions, pending_labels, config = found
            cutoff = now - float(retention)
            expired, left, freed = [], limit, 0
            for table in _TABLE.values():
                made = ", coalesce(at, arrived), segments, rolled_up" if table == "loss_predictions" else ""
                rows = tx.all(
                    "SELECT id, CASE WHEN joined_at IS NULL THEN 1 ELSE 0 END, "
                    f"{table_bytes_sql(tx.dialect.name, table)}{made} FROM {table} "
                    "WHERE model_id = ? AND arrived < ? ORDER BY arrived LIMIT ?",
                    [model_id, cutoff, left],
                )
                if rows:
                    tx.execute(
                        f"DELETE FROM {table} WHERE model_id = ? AND id {tx.dialect.in_list}",
                        [model_id, tx.dialect.list_parameter([row[0] for row in rows])],
                    )
                if made:
                    counted = [row for row in rows if row[1] and row[5] == 1]
                    if counted:
                        keys = list(orjson.loads(config).get("segments", ()))
                        times = np.array([row[3] for row in counted], dtype=np.float64)
                        values = [{} if row[4] is None else orjson.loads(row[4]) for row in counted]
                        history.expire(tx, model_id, history.cells_of(times, values, keys, cutoff))
                expired.append(sum(int(row[1]) for row in rows))
                freed += sum(int(row[2]) for row in rows)
                left -= len(rows)
            removed = limit - left
            left -= history.sweep_cells(tx, model_id, cutoff, left)
            if any(expired):
                tx.execute(
                    "UPDATE loss_models SET pending_predictions = pending_predictions - ?, "
                    "pending_labels = pending_labels - ?, expired_predictions = expired_predictions + ?, "
                    "expired_labels = expired_labels + ? WHERE id = ?",
                    [expired[0], expired[1], expired[0], expired[1], model_id],
                )
            if freed:
                tx.execute("UPDATE loss_models SET stored_bytes = stored_bytes - ? WHERE id = ?", [freed, model_id])
        pending = (int(pending_predictions) - expired[0], int(pending_labels) - expired[1])
        return Swept(name, expired[0], expired[1], *pending, removed=removed, done=left > 0)

    # -- history --------------------------------------------------------------------------------

    def history_cells(
        self, name: str, level: int, key: str, start: float, end: float
    ) -> tuple[Model, list[RollupCell], list[RollupLoss]] | None:
        """The model and its rollup cells of `level` and segment key `key` ('' for all rows)
        whose buckets start in [start, end), with their losses, read in one transaction; None if
        there is no such model. Cost: the cells read, however many rows they count."""
        with self.database.transaction(write=False) as tx:
            found = tx.one(f"SELECT {_MODEL_COLUMNS} FROM loss_models WHERE name = ?", [name])
            if found is None:
                return None
            cells, losses = history.read_cells(tx, found[0], level, key, start, end)
        return _model(found), cells, losses

    def prediction_rows(
        self,
        name: str,
        start: float,
        end: float,
        *,
        after: tuple[float, str] | None = None,
        limit: int = 10_000,
        joined_only: bool = False,
    ) -> list[PredictionRow] | None:
        """Up to `limit` of the model's prediction rows made in [start, end) (by prediction time,
        then id), after the row `after` names ((time, id) of the last row of a previous batch),
        each with its label's weight and payloads; None if there is no such model."""
        with self.database.transaction(write=False) as tx:
            found = tx.one("SELECT id FROM loss_models WHERE name = ?", [name])
            if found is None:
                return None
            return history.read_rows(tx, found[0], start, end, after, limit, joined_only)

    def prediction_batches(
        self, name: str, start: float, end: float, *, batch_rows: int = 10_000, joined_only: bool = False
    ) -> Iterator[list[PredictionRow]]:
        """The model's prediction rows made in [start, end), in batches of at most `batch_rows`,
        each batch one read transaction (rows joined or swept between batches are read as they
        are then). Memory holds one batch; nothing if there is no such model."""
        after: tuple[float, str] | None = None
        while True:
            batch = self.prediction_rows(name, start, end, after=after, limit=batch_rows, joined_only=joined_only)
            if not batch:
                return
            yield batch
            if len(batch) < batch_rows:
                return
            after = (batch[-1].made, batch[-1].id)
