"""The history and export reads: a model's rollup cells and its prediction rows, in one read
transaction per answer or per batch (`Store`'s history methods)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from service.store import comparisons, pairs, rollup_reads
from service.store.comparisons import CommonPairs
from service.store.database import Database, Transaction
from service.store.pairs import PairColumns, PredictionRow
from service.store.records import Model
from service.store.rollup_reads import RollupCells, RollupLosses
from service.store.rows import _MODEL_COLUMNS, _model


class _Batch(Protocol):
    """A batch of rows in (time, id) order: its times and ids, the last of which resumes the next."""

    @property
    def made(self) -> NDArray[np.float64]: ...

    @property
    def ids(self) -> Sequence[str]: ...

    def __len__(self) -> int: ...


B = TypeVar("B", bound=_Batch)


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
            cells, losses = rollup_reads.read_cells(tx, found[0], level, key, start, end)
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
        pending_only: bool = False,
    ) -> list[PredictionRow] | None:
        """Up to `limit` of the model's prediction rows made in [start, end) (by prediction time,
        then id), after the row `after` names ((time, id) of the last row of a previous batch),
        each with its label's weight and payloads; None if there is no such model."""
        with self.database.transaction(write=False) as tx:
            found = tx.one("SELECT id FROM loss_models WHERE name = ?", [name])
            if found is None:
                return None
            return pairs.read_rows(tx, found[0], start, end, after, limit, joined_only, pending_only)

    def prediction_batches(
        self,
        name: str,
        start: float,
        end: float,
        *,
        batch_rows: int = 10_000,
        joined_only: bool = False,
        pending_only: bool = False,
    ) -> Iterator[list[PredictionRow]]:
        """The model's prediction rows made in [start, end), in batches of at most `batch_rows`,
        each batch one read transaction (rows joined or swept between batches are read as they
        are then). Memory holds one batch; nothing if there is no such model."""
        after: tuple[float, str] | None = None
        while True:
            batch = self.prediction_rows(
                name, start, end, after=after, limit=batch_rows, joined_only=joined_only, pending_only=pending_only
            )
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

        def read(tx: Transaction, ids: list[int], after: tuple[float, str] | None) -> PairColumns:
            return pairs.read_pairs(tx, ids[0], start, end, after, batch_rows, keys, payloads)

        return self._keyset_batches([name], read, batch_rows)

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

        def read(tx: Transaction, ids: list[int], after: tuple[float, str] | None) -> CommonPairs:
            return comparisons.read_common(tx, ids[0], ids[1], start, end, after, batch_rows, key)

        return self._keyset_batches([challenger, champion], read, batch_rows)

    def _keyset_batches(
        self,
        names: list[str],
        read: Callable[[Transaction, list[int], tuple[float, str] | None], B],
        batch_rows: int,
    ) -> Iterator[B]:
        """Batches `read` gives for the models' row ids, each in a read transaction of its own,
        each after the last row of the one before (its (time, id)); none once a model is missing,
        or after a batch shorter than `batch_rows`."""
        after: tuple[float, str] | None = None
        while True:
            with self.database.transaction(write=False) as tx:
                found = [tx.one("SELECT id FROM loss_models WHERE name = ?", [name]) for name in names]
                if any(row is None for row in found):
                    return
                batch = read(tx, [row[0] for row in found if row is not None], after)
            if not len(batch):
                return
            yield batch
            if len(batch) < batch_rows:
                return
            after = (float(batch.made[-1]), batch.ids[-1])
