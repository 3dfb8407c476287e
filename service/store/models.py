"""The configured models: their creation and configuration, reads, usage against quotas and
removal in batches of at most `DELETE_BATCH_ROWS` rows per transaction (`Store`'s model methods)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from service.store import events, rollups
from service.store.database import Database, Transaction
from service.store.errors import FollowedModelError, LabelSourceError, QuotaExceededError, SegmentKeysRemovedError
from service.store.records import Model, Quota, Usage
from service.store.retention import DELETE_BATCH_ROWS
from service.store.rows import _MODEL_COLUMNS, _TABLE, _delete_found, _found_key, _lock_holder, _model, _usage
from service.store.schema import table_bytes_sql


class _Models:
    """`Store`'s operations on the configured models, each one transaction (a removal: one per
    batch)."""

    database: Database

    def configure_model(
        self, name: str, config: dict[str, Any], retention_seconds: float, now: float, quota: Quota | None = None
    ) -> Model:
        """Create the model, or replace its configuration; its rows and counters stay. Creating it
        is refused (QuotaExceededError) when `quota`'s holder already has `max_models` models.
        Replacing it updates its row in place, which adds no row: it runs in SQLite's full-disk
        mode, so a shorter retention can let the sweep free the disk. Segment keys (`segments`)
        may be added, each rollup of the model's rows copied as that key's null value, never
        removed (SegmentKeysRemovedError). A `labels_from` source must be another configured model
        that follows none, and a model others follow cannot follow one (LabelSourceError); the
        source's row is locked first, as a label log locks it before its followers'."""
        source = config.get("labels_from")
        with self.database.transaction() as tx:
            _lock_holder(tx, quota)
            if source is not None:
                _check_source(tx, name, source)
            found = tx.one(f"SELECT id, config FROM loss_models WHERE name = ?{tx.dialect.lock_row}", [name])
            if found is not None:
                before = list(orjson.loads(found[1]).get("segments", []))
                after = list(config.get("segments", []))
                removed = [key for key in before if key not in after]
                if removed:
                    raise SegmentKeysRemovedError(name, removed)
                rollups.add_keys(tx, found[0], [key for key in after if key not in before])
                tx.execute(
                    "UPDATE loss_models SET config = ?, retention_seconds = ?, updated_at = ?, labels_from = ? "
                    "WHERE id = ?",
                    [orjson.dumps(config).decode(), retention_seconds, now, source, found[0]],
                )
            else:
                if quota is not None:
                    usage = _usage(tx, quota)
                    if usage.models + 1 > quota.max_models:
                        raise QuotaExceededError("max_models", quota.holder, usage.models, 1, quota.max_models)
                tx.execute(
                    "INSERT INTO loss_models (name, config, retention_seconds, created_at, updated_at, labels_from) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "config = excluded.config, retention_seconds = excluded.retention_seconds, "
                    "updated_at = excluded.updated_at, labels_from = excluded.labels_from",
                    [name, orjson.dumps(config).decode(), retention_seconds, now, now, source],
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
        Rows logged meanwhile are removed by a later batch: the model is gone when this says so.
        A model others take their labels from is refused (FollowedModelError), nothing removed."""
        with self.database.transaction() as tx:
            found = tx.one(f"SELECT id FROM loss_models WHERE name = ?{tx.dialect.lock_row}", [name])
            if found is None:
                return None
            followers = _followers(tx, name)
            if followers:
                raise FollowedModelError(name, followers)
            model_id, left, unjoined, freed = found[0], limit, [], 0
            for table in _TABLE.values():
                rows = tx.all(
                    "SELECT id, CASE WHEN joined_at IS NULL THEN 1 ELSE 0 END, "
                    f"{table_bytes_sql(tx.dialect.name, table)}{_found_key(tx)} FROM {table} "
                    "WHERE model_id = ? LIMIT ?",
                    [model_id, left],
                )
                _delete_found(tx, table, model_id, rows)
                unjoined.append(sum(int(row[1]) for row in rows))
                freed += sum(int(row[2]) for row in rows)
                left -= len(rows)
            left -= events.delete_some(tx, model_id, left)
            left -= rollups.sweep_cells(tx, model_id, None, left)
            if left > 0:  # fewer rows than a batch were left: the last batch
                tx.execute("DELETE FROM loss_models WHERE id = ?", [model_id])
                return True
            tx.execute(
                "UPDATE loss_models SET pending_predictions = pending_predictions - ?, "
                "pending_labels = pending_labels - ?, stored_bytes = stored_bytes - ? WHERE id = ?",
                [unjoined[0], unjoined[1], freed, model_id],
            )
        return False


def _followers(tx: Transaction, name: str) -> list[str]:
    """The models that take their labels from model `name`, in the order they were created."""
    return [row[0] for row in tx.all("SELECT name FROM loss_models WHERE labels_from = ? ORDER BY id", [name])]


def _check_source(tx: Transaction, name: str, source: str) -> None:
    """Model `name` may take its labels from `source`: another configured model that takes its
    own from none (a chain would copy a label twice over, a loop forever), while no model takes
    its labels from `name`. The source's row is locked: its deletion waits for this check."""
    if source == name:
        raise LabelSourceError(name, source, "a model cannot take its labels from itself (a loop)")
    row = tx.one(f"SELECT labels_from FROM loss_models WHERE name = ?{tx.dialect.lock_row}", [source])
    if row is None:
        raise LabelSourceError(name, source, f"no model named {source!r} is configured")
    if row[0] == name:
        raise LabelSourceError(name, source, f"{source!r} takes its labels from {name!r}: that would be a loop")
    if row[0] is not None:
        reason = f"{source!r} takes its own labels from {row[0]!r}; name {row[0]!r}, the model labels are logged for"
        raise LabelSourceError(name, source, reason)
    followers = _followers(tx, name)
    if followers:
        reason = f"models {followers} take their labels from {name!r}, which therefore cannot follow another"
        raise LabelSourceError(name, source, reason)
