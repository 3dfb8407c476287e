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

from service.store import history, rollups
from service.store.connect import connect
from service.store.database import Database, Each, Packed, Transaction
from service.store.errors import QuotaExceededError, RowShapeError, TooManyPendingError
from service.store.fits import _Fits
from service.store.history import EXPECTED_LOSS, HISTORY_LOSS, PairLosses
from service.store.inference_events import _InferenceEvents
from service.store.joins import completed_pairs, join_partners, look_up, picked
from service.store.models import _followers, _Models
from service.store.reads import _Reads
from service.store.records import Logged, Model, Pairs, Quota, Side, T, Usage, _Partners
from service.store.retention import _Retention
from service.store.rows import (
    _CODES,
    _TABLE,
    _check_ids,
    _id_bytes,
    _lock_holder,
    _locked_model,
    _segment_texts,
    _text_bytes,
    _usage,
)
from service.store.schema import ROW_BYTES, migrate


class Store(_Models, _Retention, _InferenceEvents, _Reads, _Fits):
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
        rows_for: Callable[[Model], np.ndarray[Any, Any]] | None = None,
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

        Labels are logged, in the same transaction, for each model that takes its labels from
        this one (`labels_from`), after it and in the order those were created, each under its
        own lock, limits and configuration: `rows_for(follower)` gives the rows as that model
        keeps them (default `rows`). Whatever one of them refuses, nothing is stored.
        """
        _check_ids(ids)
        with self.database.transaction() as tx:
            _lock_holder(tx, quota)
            model_id, model = _locked_model(tx, name)
            logged = self._log(
                tx, model_id, model, side, ids, rows, now, max_pending, timestamps, weights, on_join, quota,
                segments, history_of,
            )  # fmt: skip
            if side != "labels":
                return logged
            followed = []
            for follower in _followers(tx, name):
                follower_id, theirs = _locked_model(tx, follower)
                given = rows if rows_for is None else rows_for(theirs)
                try:
                    logs = self._log(
                        tx, follower_id, theirs, side, ids, given, now, max_pending, None, weights, on_join, quota,
                        None, history_of,
                    )  # fmt: skip
                except RowShapeError as exc:
                    raise RowShapeError(exc.side, exc.expected, exc.got, follower) from None
                followed.append(logs)
            return replace(logged, followers=tuple(followed))

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
        existing, partners = look_up(tx, side, model_id, ids)
        fresh = _positions(len(ids), existing)
        joined = list(partners.at)
        keep = bool(model.config.get("keep_pairs", False))
        entry_bytes = _entry_bytes(model) if history_of else 0
        adding = self._added_bytes(ids, rows, fresh, partners, keep, entry_bytes, texts)
        if quota is not None:
            usage = _usage(tx, quota)
            if adding > 0 and usage.stored_bytes + adding > quota.max_stored_bytes:
                raise QuotaExceededError(
                    "max_stored_bytes", quota.holder, usage.stored_bytes, adding, quota.max_stored_bytes
                )
            usage = Usage(usage.models, usage.stored_bytes + adding)
        before, model = model, self._count(model, side, len(fresh), len(joined), max_pending, adding)
        pairs = completed_pairs(side, model, ids, rows, partners, now, timestamps, weights, segments)
        joined_result = on_join(model, pairs) if joined else None
        kept = list(history_of(joined_result)) if history_of is not None and joined_result is not None else []
        losses = history.packed_losses(kept, len(joined))
        expected = history.packed_expected(kept, len(joined))
        if len(losses) + len(expected) != (entry_bytes * len(joined) if joined else 0):
            raise ValueError(f"history_of gave {len(kept)} losses for a model configured with other losses")
        # Rows that join now are stored joined, so only the other side's rows are updated.
        self._insert(
            tx, side, model_id, ids, rows, fresh, partners, (losses, expected), now, keep, texts, timestamps, weights
        )
        with tx.batched():  # the rest in at most three round trips on PostgreSQL (no COPY among them)
            if joined:
                join_partners(tx, other, model_id, pairs.ids, partners, now, keep)
            _save_counts(tx, model_id, before, model)
            self._roll_up(tx, model_id, model, side, fresh, pairs, kept, now, timestamps, segments)
        return Logged(len(fresh), [ids[i] for i in existing], pairs, joined_result, model, usage)

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
            logged = rollups.cells_of(times, values, keys, oldest_end)
        counted = np.flatnonzero(pairs.rolled_up) if pairs.ids else np.zeros(0, np.int64)
        joined = None
        if counted.size == len(pairs.ids) and counted.size:
            joined = rollups.cells_of(pairs.times, pairs.segments, keys, oldest_end)
        elif counted.size:  # some pairs' predictions were logged before history was kept
            values = [pairs.segments[i] for i in counted]
            joined = rollups.cells_of(pairs.times[counted], values, keys, oldest_end)
            kept = [
                replace(
                    loss,
                    sums=loss.sums[counted],
                    denominators=loss.denominators[counted],
                    counts=loss.counts[counted],
                    expected=None if loss.expected is None else loss.expected[counted],
                )
                for loss in kept
            ]
        rollups.roll_up(tx, model_id, logged, joined, pairs.delays[counted], kept)

    @staticmethod
    def _added_bytes(
        ids: Sequence[str],
        rows: np.ndarray[Any, Any],
        fresh: Sequence[int],
        partners: _Partners,
        keep: bool,
        entry_bytes: int,
        texts: list[str | None] | None,
    ) -> int:
        """What storing the rows at `fresh` adds to `stored_bytes`: each row with its id and
        segments, waiting ones with their payload (joining ones too with `keep`), less the payloads
        of the partners that join (dropped unless `keep`), and each joined pair's losses. The
        UTF-8 bytes of the ids (and of the segments) are counted in one encoding of them all."""
        size = rows.nbytes // len(rows) if len(rows) else 0
        joined = len(partners.at)
        stored = picked(ids, fresh)
        added = ROW_BYTES * len(fresh) + _id_bytes("".join(stored)) + size * (len(fresh) - (0 if keep else joined))
        if texts is not None:
            added += _text_bytes("".join(filter(None, picked(texts, fresh))))
        dropped = 0 if keep else sum(map(len, partners.payloads))
        return added - dropped + entry_bytes * joined

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
        partners: _Partners,
        history_blobs: tuple[bytes, bytes],
        now: float,
        keep: bool,
        texts: list[str | None] | None,
        timestamps: Sequence[float] | None,
        weights: Sequence[float] | None,
    ) -> None:
        """Store the rows at `fresh`; those that join now (`partners.at`) already joined, with
        their losses and expected losses (`history_blobs`, each packed in the order of
        `partners.at`). Joining rows and waiting ones differ in joined_at and payload: one insert
        for each group, column by column."""
        if not fresh:
            return
        rows = np.ascontiguousarray(rows)
        code, size = _CODES[rows.dtype], rows.nbytes // len(rows)
        joining = list(partners.at)
        waiting = _positions(len(ids), joining) if len(fresh) == len(ids) else _without(fresh, joining)
        for group in (joining, waiting):
            if not group:
                continue
            joins = group is joining
            payload = Packed(rows[group].tobytes(), size) if keep or not joins else None
            columns: list[tuple[str, str, Any]] = [
                ("model_id", "int", model_id),
                ("id", "text", Each(picked(ids, group))),
                ("arrived", "real", now),
            ]
            if side == "predictions":
                columns += [
                    ("at", "real", None if timestamps is None else Each(picked(timestamps, group))),
                    ("segments", "text", None if texts is None else Each(picked(texts, group))),
                    ("rolled_up", "small", 1),
                    ("label_arrived", "real", Each(partners.times) if joins else None),
                ]
            else:
                columns.append(("weight", "real", None if weights is None else Each(picked(weights, group))))
            for column, blob in zip(("losses", "expected"), history_blobs, strict=True):
                entry = len(blob) // len(joining) if joining else 0
                columns.append((column, "blob", Packed(blob, entry) if joins and entry else None))
            columns += [
                ("joined_at", "real", now if joins else None),
                ("dtype", "small", code),
                ("payload", "blob", payload),
            ]
            tx.insert_columns(_TABLE[side], columns, len(group))

    @staticmethod
    def _count(model: Model, side: Side, stored: int, joined: int, limit: int, added: int) -> Model:
        """The model's counters once `stored` rows are stored and `joined` of them join
        (TooManyPendingError past `limit`); `_save_counts` writes them."""
        pending = {"predictions": model.pending_predictions, "labels": model.pending_labels}
        other: Side = "labels" if side == "predictions" else "predictions"
        before = sum(pending.values())
        pending[side] += stored - joined
        pending[other] -= joined
        after = sum(pending.values())
        if after > limit and after > before:  # a request that only drains pending rows always passes
            raise TooManyPendingError(model.name, after, limit)
        return replace(
            model,
            pending_predictions=pending["predictions"],
            pending_labels=pending["labels"],
            joined=model.joined + joined,
            stored_bytes=model.stored_bytes + added,
        )


def _entry_bytes(model: Model) -> int:
    """What each joined pair of `model` keeps of its losses: one HISTORY_LOSS entry per configured
    loss and one EXPECTED_LOSS entry per estimated one."""
    estimate = model.config.get("estimate")
    estimated = 0 if estimate is None else len(estimate["losses"])
    return HISTORY_LOSS.itemsize * len(model.config.get("losses", ())) + EXPECTED_LOSS.itemsize * estimated


def _save_counts(tx: Transaction, model_id: int, before: Model, after: Model) -> None:
    tx.execute(
        "UPDATE loss_models SET pending_predictions = ?, pending_labels = ?, joined = joined + ?, "
        "stored_bytes = stored_bytes + ? WHERE id = ?",
        [
            after.pending_predictions,
            after.pending_labels,
            after.joined - before.joined,
            after.stored_bytes - before.stored_bytes,
            model_id,
        ],
    )


def _positions(count: int, excluded: Sequence[int]) -> list[int]:
    """The positions 0..count-1 but the `excluded` ones."""
    if not excluded:
        return list(range(count))
    left = set(excluded)
    return [i for i in range(count) if i not in left]


def _without(positions: Sequence[int], excluded: Sequence[int]) -> list[int]:
    left = set(excluded)
    return [i for i in positions if i not in left]
