"""The retention sweep: each model's rows and rollup cells older than its retention, deleted in
batches of at most `SWEEP_BATCH_ROWS` rows per transaction (`Store`'s retention methods)."""

from __future__ import annotations

import numpy as np
import orjson

from service.store import rollups
from service.store.database import Database
from service.store.records import Swept
from service.store.rows import _TABLE, _delete_found, _found_key
from service.store.schema import table_bytes_sql

# Rows one retention sweep, and one DELETE of a model, remove per transaction: the write lock is
# never held for long (bench/tenants.py measured batch sizes: docs/performance.md).
SWEEP_BATCH_ROWS = 250
DELETE_BATCH_ROWS = SWEEP_BATCH_ROWS


class _Retention:
    """`Store`'s retention sweep, one transaction per batch."""

    database: Database

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
        with what is left of `limit`, its rollup cells that ended before then (rollups.py). An
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
                    f"{table_bytes_sql(tx.dialect.name, table)}{made}{_found_key(tx)} FROM {table} "
                    "WHERE model_id = ? AND arrived < ? ORDER BY arrived LIMIT ?",
                    [model_id, cutoff, left],
                )
                _delete_found(tx, table, model_id, rows)
                if made:
                    counted = [row for row in rows if row[1] and row[5] == 1]
                    if counted:
                        keys = list(orjson.loads(config).get("segments", ()))
                        times = np.array([row[3] for row in counted], dtype=np.float64)
                        values = [{} if row[4] is None else orjson.loads(row[4]) for row in counted]
                        rollups.expire(tx, model_id, rollups.cells_of(times, values, keys, cutoff))
                expired.append(sum(int(row[1]) for row in rows))
                freed += sum(int(row[2]) for row in rows)
                left -= len(rows)
            removed = limit - left
            left -= rollups.sweep_cells(tx, model_id, cutoff, left)
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
