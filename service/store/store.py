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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import orjson

from service.store import history
from service.store.connect import connect
from service.store.database import Database, Transaction
from service.store.errors import QuotaExceededError, RowShapeError, TooManyPendingError
from service.store.history import HISTORY_LOSS, PairLosses
from service.store.inference_events import _InferenceEvents
from service.store.models import _Models
from service.store.reads import _Reads
from service.store.records import Logged, Model, Pairs, Quota, Side, T, Usage, _Written
from service.store.retention import _Retention
from service.store.rows import (
    _CODES,
    _TABLE,
    _check_ids,
    _decode,
    _id_bytes,
    _lock_holder,
    _locked_model,
    _segment_texts,
    _text_bytes,
    _usage,
)
from service.store.schema import ROW_BYTES, migrate


class Store(_Models, _Retention, _InferenceEvents, _Reads):
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
