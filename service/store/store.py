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

import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import orjson

from service.store import history
from service.store.database import Database, Transaction, connect
from service.store.errors import (
    QuotaExceededError,
    RowIdError,
    RowShapeError,
    SegmentKeysRemovedError,
    TooManyPendingError,
    UnknownModelError,
)
from service.store.history import HISTORY_LOSS, PairLosses, PredictionRow, RollupCell, RollupLoss
from service.store.schema import ROW_BYTES, migrate, table_bytes_sql

Side = Literal["predictions", "labels"]
T = TypeVar("T")
# The dtype of a stored row's payload, by the small integer kept beside it.
DTYPES: dict[int, np.dtype[Any]] = {0: np.dtype(np.float64), 1: np.dtype(np.float32), 2: np.dtype(np.int64)}
_CODES = {dtype: code for code, dtype in DTYPES.items()}
_TABLE = {"predictions": "loss_predictions", "labels": "loss_labels"}
# What no id may hold, as neither database keeps it as given: U+0000 (SQLite's JSON functions,
# which carry id lists, cut a string there; PostgreSQL refuses it in text) and lone surrogates,
# which have no UTF-8 encoding.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_MODEL_COLUMNS = (
    "id, name, config, retention_seconds, created_at, updated_at, prediction_shape, label_shape, "
    "pending_predictions, pending_labels, joined, expired_predictions, expired_labels, stored_bytes"
)
# Any fixed number: the first half of the PostgreSQL advisory lock a quota holder's writes take.
_QUOTA_LOCK = 0x1055_0A07


@dataclass(frozen=True)
class Model:
    """A configured model: its configuration, retention and counters.

    Of the configuration the store reads three fields: `losses` (how many `HISTORY_LOSS` entries
    each joined pair keeps), `segments` (the keys its rollups are kept by) and `keep_pairs`
    (joined rows keep their payloads)."""

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
    # What its rows count towards quotas: per row, ROW_BYTES + its id's and payload's bytes.
    stored_bytes: int = 0


@dataclass(frozen=True)
class Quota:
    """Limits a write is checked against, inside its transaction, and whose usage they bound.

    `holder` names it (in errors, and for the lock that serialises its writes); the models whose
    usage counts towards it are those whose names match one of `patterns` (glob patterns, as
    `fnmatch.fnmatchcase` reads them: an API key's), or every model if `patterns` is None."""

    holder: str
    patterns: tuple[str, ...] | None
    max_models: int
    max_stored_bytes: int


@dataclass(frozen=True)
class Usage:
    """A quota holder's usage: the models that count towards it and their stored bytes."""

    models: int
    stored_bytes: int


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
    # Each prediction's time, its segment values (non-null ones), and whether its row is counted
    # in the model's rollups (rows logged before history was kept are not).
    times: np.ndarray[Any, np.dtype[np.float64]] = field(default_factory=lambda: np.zeros(0))
    segments: list[dict[str, str]] = field(default_factory=list)
    rolled_up: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class Logged(Generic[T]):
    """What logging one side's rows did."""

    accepted: int
    duplicate_ids: list[str]
    pairs: Pairs
    # What the caller's `on_join` returned for the pairs (None when none were completed).
    joined_result: T | None
    model: Model
    # The quota holder's usage after this write (None without a quota).
    usage: Usage | None = None


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
# never held for long (bench/tenants.py measured batch sizes: docs/performance.md).
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
        stored_bytes=int(row[13]),
    )


@dataclass(frozen=True)
class _Written:
    """What one log writes beside the rows: its time, whether joined rows keep their payloads,
    each prediction's segments as stored, each joining row's losses (by its position in the
    request) and the partners it joins."""

    now: float
    keep: bool
    texts: list[str | None] | None
    losses: dict[int, bytes | None]
    partners: dict[str, tuple[Any, ...]]


def _segment_texts(segments: Sequence[Mapping[str, str]] | None, count: int) -> list[str | None] | None:
    """Each row's non-null segment values as the JSON text the row keeps (None without any)."""
    if segments is None:
        return None
    if len(segments) != count:
        raise ValueError(f"{len(segments)} segment rows for {count} ids")
    return [orjson.dumps(dict(values), option=orjson.OPT_SORT_KEYS).decode() if values else None for values in segments]


def _text_bytes(text: str | None) -> int:
    return 0 if text is None else len(text.encode("utf-8"))


def _id_bytes(row_id: str) -> int:
    # surrogatepass: the same count for any str the driver stores as text
    return len(row_id.encode("utf-8", "surrogatepass"))


def _lock_holder(tx: Transaction, quota: Quota | None) -> None:
    """Serialise the quota holder's writes (SQLite's BEGIN IMMEDIATE already serialises all)."""
    if quota is not None and tx.dialect.name == "postgresql":
        tx.execute("SELECT pg_advisory_xact_lock(?, ?)", [_QUOTA_LOCK, _holder_key(quota.holder)])


def _holder_key(holder: str) -> int:
    """A signed 32-bit key for the holder's advisory lock (a shared key only serialises more)."""
    return zlib.crc32(holder.encode("utf-8", "surrogatepass")) - 2**31


def _usage(tx: Transaction, quota: Quota) -> Usage:
    """The holder's usage as committed (read under its lock when writing), summed by the database
    over the models' rows (never the row tables). Patterns of only `*`, `?` and the characters a
    model name may hold are matched in SQL, as SQLite's GLOB or PostgreSQL's LIKE, which read them
    as fnmatchcase does; any other pattern is matched by fnmatchcase over the models' names."""
    total = "SELECT count(*), coalesce(sum(stored_bytes), 0) FROM loss_models"
    if quota.patterns is None:
        row = tx.one(total)
    elif all(_PLAIN_PATTERN.match(pattern) for pattern in quota.patterns):
        if tx.dialect.name == "sqlite":
            where, params = " OR ".join("name GLOB ?" for _ in quota.patterns), list(quota.patterns)
        else:
            where = " OR ".join("name LIKE ? ESCAPE '!'" for _ in quota.patterns)
            params = [_like(pattern) for pattern in quota.patterns]
        row = tx.one(f"{total} WHERE {where}", params)
    else:
        models = tx.all("SELECT name, stored_bytes FROM loss_models")
        counted = [int(size) for name, size in models if any(fnmatchcase(name, p) for p in quota.patterns)]
        return Usage(len(counted), sum(counted))
    assert row is not None
    return Usage(int(row[0]), int(row[1]))


# A glob pattern that SQL can match as fnmatchcase does: wildcards and model-name characters only.
_PLAIN_PATTERN = re.compile(r"^[A-Za-z0-9_.:*?-]*$")


def _like(pattern: str) -> str:
    """A plain glob pattern as a LIKE pattern with `!` as its escape character."""
    return pattern.replace("_", "!_").replace("*", "%").replace("?", "_")


def _decode(payloads: Sequence[bytes], codes: Sequence[int], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """Stored rows back as one array of shape (len(payloads), *shape)."""
    if len(set(codes)) <= 1:
        dtype = DTYPES[codes[0]] if codes else np.dtype(np.float64)
        return np.frombuffer(b"".join(payloads), dtype=dtype).reshape((len(payloads), *shape))
    # Rows stored under different dtypes (the model's dtype was changed in between): NumPy
    # widens them to their common type, exactly.
    return np.stack([np.frombuffer(p, dtype=DTYPES[c]).reshape(shape) for p, c in zip(payloads, codes, strict=True)])


def _check_ids(ids: Sequence[str]) -> None:
    """Refuse ids the store cannot keep one row each, exactly: one search over all of them, then
    the index of the first bad one."""
    joined = "".join(ids)
    # U+0000 by memchr; a lone surrogate only where the text is not ASCII (`isascii` is O(1)).
    unstorable = "\x00" in joined or (not joined.isascii() and _UNSTORABLE.search(joined) is not None)
    if not unstorable and len(set(ids)) == len(ids):
        return
    seen: set[str] = set()
    for index, row_id in enumerate(ids):
        found = _UNSTORABLE.search(row_id)
        if found is not None:
            raise RowIdError(index, f"an id cannot hold U+{ord(found.group()):04X}")
        if row_id in seen:
            raise RowIdError(index, f"the id {row_id[:64]!r} is given twice")
        seen.add(row_id)


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
        other: Side = "labels" if side == "predictions" else "predictions"
        _check_ids(ids)
        usage = None
        texts = _segment_texts(segments, len(ids)) if side == "predictions" else None
        with self.database.transaction() as tx:
            _lock_holder(tx, quota)
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
