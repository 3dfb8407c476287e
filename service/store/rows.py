"""Rows as the store keeps them: payloads with their dtype code, ids checked and encoded, a model's
row read back, a key's usage summed, and the PostgreSQL lock a quota holder's writes take."""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import orjson

from service.store.database import Transaction
from service.store.errors import RowIdError, UnknownModelError
from service.store.records import Model, Quota, Usage

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
    "pending_predictions, pending_labels, joined, expired_predictions, expired_labels, stored_bytes, "
    "estimate_fit"
)


# Any fixed number: the first half of the PostgreSQL advisory lock a quota holder's writes take.
_QUOTA_LOCK = 0x1055_0A07


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
        estimate_fit=None if row[14] is None else orjson.loads(row[14]),
    )


def _segment_texts(segments: Sequence[Mapping[str, str]] | None, count: int) -> list[str | None] | None:
    """Each row's non-null segment values as the JSON text the row keeps (None without any)."""
    if segments is None:
        return None
    if len(segments) != count:
        raise ValueError(f"{len(segments)} segment rows for {count} ids")
    return [orjson.dumps(dict(values), option=orjson.OPT_SORT_KEYS).decode() if values else None for values in segments]


def _segment_rows(columns: Mapping[str, Sequence[str | None]], count: int) -> list[dict[str, str]] | None:
    """Segments given by key (one value or None per row) as each row's non-null values; None
    without any key."""
    if not columns:
        return None
    rows: list[dict[str, str]] = [{} for _ in range(count)]
    for key, values in columns.items():
        if len(values) != count:
            raise ValueError(f"segment {key!r} has {len(values)} values for {count} rows")
        for row, value in zip(rows, values, strict=True):
            if value is not None:
                row[key] = value
    return rows


def _text_bytes(text: str | None) -> int:
    return 0 if text is None else len(text.encode("utf-8"))


def _id_bytes(row_id: str) -> int:
    # surrogatepass: the same count for any str the driver stores as text
    return len(row_id.encode("utf-8", "surrogatepass"))


def _locked_model(tx: Transaction, name: str) -> tuple[int, Model]:
    """The model's row id and its model, its row locked for the transaction (UnknownModelError)."""
    found = tx.one(f"SELECT {_MODEL_COLUMNS} FROM loss_models WHERE name = ?{tx.dialect.lock_row}", [name])
    if found is None:
        raise UnknownModelError(name)
    return found[0], _model(found)


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


def _found_key(tx: Transaction) -> str:
    """The column a SELECT adds last so that `_delete_found` can remove the rows it found:
    none on SQLite (the id is enough), the row's ctid on PostgreSQL."""
    return "" if tx.dialect.name == "sqlite" else ", ctid::text"


def _found(tx: Transaction, model_id: int, ids: Sequence[str], ctids: Sequence[str | None]) -> tuple[str, list[Any]]:
    """The condition (and its parameters) that picks rows a SELECT of this transaction found
    under the model's lock: SQLite finds each id on the primary key; PostgreSQL each row by its
    ctid (`_found_key`), a TID scan whatever its statistics say (on a list of ids they may favour
    reading all of a model's rows and filtering them, at a cost that grows with the model)."""
    if tx.dialect.name == "sqlite":
        return f"model_id = ? AND id {tx.dialect.in_list}", [model_id, tx.dialect.list_parameter(ids)]
    # The TID scan is the plan left; every other statement of these transactions seeks a key.
    tx.execute("SET LOCAL enable_seqscan = off")
    return "ctid = ANY(?::tid[])", [list(ctids)]


def _delete_found(tx: Transaction, table: str, model_id: int, rows: Sequence[Sequence[Any]]) -> None:
    """Delete the rows of `table` a SELECT of this transaction found, under the model's lock
    (their id first and `_found_key` last)."""
    if not rows:
        return
    where, params = _found(tx, model_id, [row[0] for row in rows], [row[-1] for row in rows])
    tx.execute(f"DELETE FROM {table} WHERE {where}", params)
