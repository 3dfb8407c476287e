"""The history and export reads: a model's rollup cells and its prediction rows, in one read
transaction per answer or per batch (`Store`'s history methods)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from service.store import comparisons, pairs, rollups
from service.store.comparisons import CommonPairs
from service.store.database import Database
from service.store.pairs import PairColumns, PredictionRow
from service.store.records import Model
from service.store.rollups import RollupCells, RollupLosses
from service.store.rows import _MODEL_COLUMNS, _model


class _Reads:
    """`Store`'s reads of history and of prediction rows for export."""

    database: Database

    def history_cells(
        self, name: str, level: int, key: str, start: float, end: float
    ) -> tuple[Model, RollupCells, RollupLosses] | None:
        """The model and its rollup cells of `level` and segment key `key` ('' for all rows)
        whose buckets start in [start, end), with their losses, read in one transaction; None if
        there is no such model. Cost: the cells read, however many rows they count."""
        with self.database.transaction(write=False) as tx:
            found = tx.one(f"SELECT {_MODEL_COLUMNS} FROM loss_models WHERE name = ?", [name])
            if found is None:
                return None
            cells, losses = rollups.read_cells(tx, found[0], level, key, start, end)
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
            return pairs.read_rows(tx, found[0], start, end, after, limit, joined_only)

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

    def pair_batches(
        self,
        name: str,
        start: float,
        end: float,
        *,
        keys: Sequence[str] = (),
        payloads: bool = False,
        batch_rows: int = 10_000,
    ) -> Iterator[PairColumns]:
        """The model's joined prediction rows made in [start, end), in (time, id) order, as
        columns (`history.read_pairs`: segment values of `keys`, and the stored payloads if
        `payloads`), in batches of at most `batch_rows`, each batch one read transaction (rows
        swept between batches are read as they are then). Memory holds one batch; nothing if
        there is no such model."""
        after: tuple[float, str] | None = None
        while True:
            with self.database.transaction(write=False) as tx:
                found = tx.one("SELECT id FROM loss_models WHERE name = ?", [name])
                if found is None:
                    return
                batch = pairs.read_pairs(tx, found[0], start, end, after, batch_rows, keys, payloads)
            if not len(batch):
                return
            yield batch
            if len(batch) < batch_rows:
                return
            after = (float(batch.made[-1]), batch.ids[-1])

    def common_batches(
        self,
        challenger: str,
        champion: str,
        start: float,
        end: float,
        *,
        key: str | None = None,
        batch_rows: int = 10_000,
    ) -> Iterator[CommonPairs]:
        """The ids both models joined whose challenger prediction was made in [start, end), in its
        (time, id) order (`comparisons.read_common`), in batches of at most `batch_rows`, each one
        read transaction. Memory holds one batch; nothing if either model is missing."""
        after: tuple[float, str] | None = None
        while True:
            with self.database.transaction(write=False) as tx:
                found = [tx.one("SELECT id FROM loss_models WHERE name = ?", [name]) for name in (challenger, champion)]
                if found[0] is None or found[1] is None:
                    return
                batch = comparisons.read_common(tx, found[0][0], found[1][0], start, end, after, batch_rows, key)
            if not len(batch):
                return
            yield batch
            if len(batch) < batch_rows:
                return
            after = (float(batch.made[-1]), batch.ids[-1])
