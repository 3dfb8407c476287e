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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import orjson

from service.store.database import Database, Transaction, connect
from service.store.errors import RowShapeError, TooManyPendingError, UnknownModelError
from service.store.schema import migrate

Side = Literal["predictions", "labels"]
T = TypeVar("T")
# The dtype of a stored row's payload, by the small integer kept beside it.
DTYPES: dict[int, np.dtype[Any]] = {0: np.dtype(np.float64), 1: np.dtype(np.float32), 2: np.dtype(np.int64)}
_CODES = {dtype: code for code, dtype in DTYPES.items()}
_TABLE = {"predictions": "loss_predictions", "labels": "loss_labels"}
_MODEL_COLUMNS = (
    "id, name, config, retention_seconds, created_at, updated_at, prediction_shape, label_shape, "
    "pending_predictions, pending_labels, joined, expired_predictions, expired_labels"
)


@dataclass(frozen=True)
class Model:
    """A configured model: its configuration (opaque to the store), retention and counters."""

    name: str
    config: dict[str, Any]
    retention_seconds: float
    created_at: float
    updated_at: float
    prediction_shape: tuple[int, ...] | None
    label_shape: tuple[int, ...] | None
    pending_predictions: int
    pending_labels: int
    joined: int
    expired_predictions: int
    expired_labels: int


@dataclass(frozen=True)
class Pairs:
    """The pairs one request completed, in the order of its ids."""

    ids: list[str]
    predictions: np.ndarray[Any, Any]
    labels: np.ndarray[Any, Any]
    # One per pair; None where the label was logged without a weight.
    weights: list[float | None]
    # Label arrival minus prediction time, in seconds.
    delays: np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class Logged(Generic[T]):
    """What logging one side's rows did."""

    accepted: int
    duplicate_ids: list[str]
    pairs: Pairs
    # What the caller's `on_join` returned for the pairs (None when none were completed).
    joined_result: T | None
    model: Model


@dataclass(frozen=True)
class Swept:
    """Rows a retention sweep (or one batch of it) removed from a model; `expired_*` counts the
    unjoined ones, `removed` all of them. `done`: no row of the model is past its retention."""

    model: str
    expired_predictions: int
    expired_labels: int
    pending_predictions: int
    pending_labels: int
    removed: int = 0
    done: bool = True

    def then(self, later: Swept) -> Swept:
        """This batch followed by a later one of the same sweep."""
        return replace(
            later,
            expired_predictions=self.expired_predictions + later.expired_predictions,
            expired_labels=self.expired_labels + later.expired_labels,
            removed=self.removed + later.removed,
        )


# Rows one retention sweep, and one DELETE of a model, remove per transaction: the write lock is
# never held for long (bench/tenants.py: with 1,000, another model's writes had p99 133 ms during
# a sweep, against 59 ms with 250).
SWEEP_BATCH_ROWS = 250
DELETE_BATCH_ROWS = SWEEP_BATCH_ROWS


def _model(row: tuple[Any, ...]) -> Model:
    return Model(
        name=row[1],
        config=orjson.loads(row[2]),
        retention_seconds=float(row[3]),
        created_at=float(row[4]),
        updated_at=float(row[5]),
        prediction_shape=None if row[6] is None else tuple(orjson.loads(row[6])),
        label_shape=None if row[7] is None else tuple(orjson.loads(row[7])),
        pending_predictions=int(row[8]),
        pending_labels=int(row[9]),
        joined=int(row[10]),
        expired_predictions=int(row[11]),
        expired_labels=int(row[12]),
    )


def _decode(payloads: Sequence[bytes], codes: Sequence[int], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """Stored rows back as one array of shape (len(payloads), *shape)."""
    if len(set(codes)) <= 1:
        dtype = DTYPES[codes[0]] if codes else np.dtype(np.float64)
        return np.frombuffer(b"".join(payloads), dtype=dtype).reshape((len(payloads), *shape))
    # Rows stored under different dtypes (the model's dtype was changed in between): NumPy
    # widens them to their common type, exactly.
    return np.stack([np.frombuffer(p, dtype=DTYPES[c]).reshape(shape) for p, c in zip(payloads, codes, strict=True)])


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

    def configure_model(self, name: str, config: dict[str, Any], retention_seconds: float, now: float) -> Model:
        """Create the model, or replace its configuration; its rows and counters stay."""
        with self.database.transaction() as tx:
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
        removes off the model's pending counts; the model's row goes with the last. On a full disk
        each batch's journal pages fit in the room the store keeps for deletions (space.py). A
        deletion that fails partway leaves the model with fewer rows and counts that match them:
        repeat it."""
        found_once = False
        while True:
            done = self.delete_batch(name, batch_rows)
            if done is None:
                return found_once  # deleted meanwhile, or never there
            if done:
                return True
            found_once = True

    def delete_batch(self, name: str, limit: int = DELETE_BATCH_ROWS) -> bool | None:
        """One transaction of removing a model: up to `limit` of its rows, its pending counts kept
        equal to the rows left; once fewer than `limit` were left, the model's row too.

        True: the model is gone; False: rows are left (call again); None: there is no such model.
        Rows logged meanwhile are removed by a later batch: the model is gone when this says so."""
        with self.database.transaction() as tx:
            found = tx.one(f"SELECT id FROM loss_models WHERE name = ?{tx.dialect.lock_row}", [name])
            if found is None:
                return None
            model_id, left, unjoined = found[0], limit, []
            for table in _TABLE.values():
                rows = tx.all(
                    f"SELECT id, CASE WHEN joined_at IS NULL THEN 1 ELSE 0 END FROM {table} WHERE model_id = ? LIMIT ?",
                    [model_id, left],
                )
                if rows:
                    tx.execute(
                        f"DELETE FROM {table} WHERE model_id = ? AND id {tx.dialect.in_list}",
                        [model_id, tx.dialect.list_parameter([row[0] for row in rows])],
                    )
                unjoined.append(sum(int(row[1]) for row in rows))
                left -= len(rows)
            if left > 0:  # fewer rows than a batch were left: the last batch
                tx.execute("DELETE FROM loss_models WHERE id = ?", [model_id])
                return True
            tx.execute(
                "UPDATE loss_models SET pending_predictions = pending_predictions - ?, "
                "pending_labels = pending_labels - ? WHERE id = ?",
                [unjoined[0], unjoined[1], model_id],
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
    ) -> Logged[T]:
        """Store one side's rows (ids must be distinct) and join those whose other half is waiting.

        `rows`: one row per id, in a dtype of `DTYPES`. `timestamps` (predictions only): each
        prediction's time, default `now`; `weights` (labels only): each label's sample weight.
        `on_join(model, pairs)` runs inside the transaction on the pairs this call completed,
        with the model's configuration as it is now; if it raises, nothing is stored.
        """
        other: Side = "labels" if side == "predictions" else "predictions"
        with self.database.transaction() as tx:
            found = tx.one(f"SELECT {_MODEL_COLUMNS} FROM loss_models WHERE name = ?{tx.dialect.lock_row}", [name])
            if found is None:
                raise UnknownModelError(name)
            model_id, model = found[0], _model(found)
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
            # Rows that join now are stored joined, so only the other side's rows are updated.
            self._insert(tx, side, model_id, ids, rows, fresh, set(joined), now, timestamps, weights)
            pairs = self._pairs(side, model, ids, rows, joined, partners, now, timestamps, weights)
            if joined:
                tx.execute(
                    f"UPDATE {_TABLE[other]} SET joined_at = ?, payload = NULL "
                    f"WHERE model_id = ? AND id {tx.dialect.in_list}",
                    [now, model_id, tx.dialect.list_parameter(pairs.ids)],
                )
            model = self._count(tx, model_id, model, side, len(fresh), len(joined), max_pending)
            joined_result = on_join(model, pairs) if joined else None
        duplicates = [ids[i] for i in range(len(ids)) if ids[i] in existing]
        return Logged(len(fresh), duplicates, pairs, joined_result, model)

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
        joining: set[int],
        now: float,
        timestamps: Sequence[float] | None,
        weights: Sequence[float] | None,
    ) -> None:
        """Store the rows at `fresh`; those at `joining` already joined, without their payload."""
        if not fresh:
            return
        rows = np.ascontiguousarray(rows)
        code, raw, size = _CODES[rows.dtype], rows.tobytes(), rows[0].nbytes
        payloads = [raw[i * size : (i + 1) * size] for i in fresh]
        if side == "predictions":
            ats = [None if timestamps is None else timestamps[i] for i in fresh]
            columns = [("model_id", "int"), ("id", "text"), ("arrived", "real"), ("at", "real")]
            extra = ats
        else:
            columns = [("model_id", "int"), ("id", "text"), ("arrived", "real"), ("weight", "real")]
            extra = [None if weights is None else weights[i] for i in fresh]
        # Joining rows and waiting ones differ in joined_at and payload: one insert for each group.
        groups: dict[bool, list[tuple[Any, ...]]] = {True: [], False: []}
        for i, e, p in zip(fresh, extra, payloads, strict=True):
            joins = i in joining
            groups[joins].append((model_id, ids[i], now, e, now if joins else None, code, None if joins else p))
        all_columns = [*columns, ("joined_at", "real"), ("dtype", "small"), ("payload", "blob")]
        for group in groups.values():
            if group:
                tx.insert_new(_TABLE[side], all_columns, group)

    @staticmethod
    def _waiting_partners(tx: Transaction, other: Side, model_id: int, ids: list[str]) -> dict[str, tuple[Any, ...]]:
        """The other side's unjoined rows with these ids: id -> (time, dtype code, payload, weight)."""
        if not ids:
            return {}
        time, weight = ("coalesce(at, arrived)", "NULL") if other == "predictions" else ("arrived", "weight")
        rows = tx.all(
            f"SELECT id, {time}, dtype, payload, {weight} FROM {_TABLE[other]} "
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
    ) -> Pairs:
        joined_ids = [ids[i] for i in joined]
        mine = rows[joined]
        found = [partners[row_id] for row_id in joined_ids]
        other_shape = model.label_shape if side == "predictions" else model.prediction_shape
        theirs = _decode([f[2] for f in found], [f[1] for f in found], other_shape or ())
        if side == "predictions":
            times = [now if timestamps is None else timestamps[i] for i in joined]
            delays = np.array([f[0] for f in found], dtype=np.float64) - np.array(times, dtype=np.float64)
            return Pairs(joined_ids, mine, theirs, [f[3] for f in found], delays)
        label_weights = [None if weights is None else float(weights[i]) for i in joined]
        delays = now - np.array([f[0] for f in found], dtype=np.float64)
        return Pairs(joined_ids, theirs, mine, label_weights, delays)

    @staticmethod
    def _count(tx: Transaction, model_id: int, model: Model, side: Side, stored: int, joined: int, limit: int) -> Model:
        pending = {"predictions": model.pending_predictions, "labels": model.pending_labels}
        other: Side = "labels" if side == "predictions" else "predictions"
        before = sum(pending.values())
        pending[side] += stored - joined
        pending[other] -= joined
        after = sum(pending.values())
        if after > limit and after > before:  # a request that only drains pending rows always passes
            raise TooManyPendingError(model.name, after, limit)
        tx.execute(
            "UPDATE loss_models SET pending_predictions = ?, pending_labels = ?, joined = joined + ? WHERE id = ?",
            [pending["predictions"], pending["labels"], joined, model_id],
        )
        return replace(
            model,
            pending_predictions=pending["predictions"],
            pending_labels=pending["labels"],
            joined=model.joined + joined,
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
        arrived before `now` minus its retention, oldest first, predictions before labels.

        Found through the `(model_id, arrived)` index, so a batch costs O(limit log n). `done`
        says that fewer than `limit` were left; None if there is no such model."""
        with self.database.transaction() as tx:
            found = tx.one(
                "SELECT id, retention_seconds, pending_predictions, pending_labels FROM loss_models "
                f"WHERE name = ?{tx.dialect.lock_row}",
                [name],
            )
            if found is None:
                return None
            model_id, retention, pending_predictions, pending_labels = found
            cutoff = now - float(retention)
            expired, left = [], limit
            for table in _TABLE.values():
                rows = tx.all(
                    f"SELECT id, CASE WHEN joined_at IS NULL THEN 1 ELSE 0 END FROM {table} "
                    "WHERE model_id = ? AND arrived < ? ORDER BY arrived LIMIT ?",
                    [model_id, cutoff, left],
                )
                if rows:
                    tx.execute(
                        f"DELETE FROM {table} WHERE model_id = ? AND id {tx.dialect.in_list}",
                        [model_id, tx.dialect.list_parameter([row[0] for row in rows])],
                    )
                expired.append(sum(int(row[1]) for row in rows))
                left -= len(rows)
            if any(expired):
                tx.execute(
                    "UPDATE loss_models SET pending_predictions = pending_predictions - ?, "
                    "pending_labels = pending_labels - ?, expired_predictions = expired_predictions + ?, "
                    "expired_labels = expired_labels + ? WHERE id = ?",
                    [expired[0], expired[1], expired[0], expired[1], model_id],
                )
        pending = (int(pending_predictions) - expired[0], int(pending_labels) - expired[1])
        return Swept(name, expired[0], expired[1], *pending, removed=limit - left, done=left > 0)
