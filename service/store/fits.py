"""The calibration fit's reads and writes: a model's most recent joined pairs, decoded, in one
read transaction, and the fit kept in its row (`Store`'s fit methods; usecases/estimate_fit.py
fits them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from service.store.database import Database
from service.store.errors import UnknownModelError
from service.store.pairs import MADE
from service.store.records import Model
from service.store.rows import _MODEL_COLUMNS, _decode, _model


@dataclass(frozen=True)
class RecentPairs:
    """A model's most recent joined pairs that keep their payloads, most recent first, as float64:
    predictions (n, *prediction_shape), labels (n, *label_shape), weights (n,) (1.0 where the
    label came without one), and the first and last prediction time of the window (None when it
    is empty). `model` is the model as read in the same transaction."""

    model: Model
    predictions: NDArray[np.float64]
    labels: NDArray[np.float64]
    weights: NDArray[np.float64]
    first: float | None
    last: float | None

    def __len__(self) -> int:
        return len(self.weights)


class _Fits:
    """`Store`'s reads and writes of the calibration fit."""

    database: Database

    def recent_pairs(self, name: str, n: int) -> RecentPairs | None:
        """The model and its `n` most recent joined pairs (by prediction time, then id, latest
        first) whose prediction and label rows both kept their payloads (keep_pairs), read in one
        transaction; None if there is no such model. The `loss_predictions_by_time` index gives
        the rows latest first: the cost grows with the pairs read and the rows of the model's
        recent predictions still pending or kept without payload, not with all its rows."""
        with self.database.transaction(write=False) as tx:
            found = tx.one(f"SELECT {_MODEL_COLUMNS} FROM loss_models WHERE name = ?", [name])
            if found is None:
                return None
            rows = tx.all(
                f"SELECT {MADE}, p.dtype, p.payload, l.dtype, l.payload, l.weight FROM loss_predictions AS p "
                "JOIN loss_labels AS l ON l.model_id = p.model_id AND l.id = p.id "
                "WHERE p.model_id = ? AND p.joined_at IS NOT NULL AND p.payload IS NOT NULL "
                f"AND l.payload IS NOT NULL ORDER BY {MADE} DESC, p.id DESC LIMIT ?",
                [found[0], max(0, n)],
            )
        model = _model(found)
        made = [float(r[0]) for r in rows]
        return RecentPairs(
            model=model,
            predictions=_floats([bytes(r[2]) for r in rows], [int(r[1]) for r in rows], model.prediction_shape),
            labels=_floats([bytes(r[4]) for r in rows], [int(r[3]) for r in rows], model.label_shape),
            weights=np.array([1.0 if r[5] is None else float(r[5]) for r in rows], dtype=np.float64),
            first=min(made) if made else None,
            last=max(made) if made else None,
        )

    def save_fit(self, name: str, fit: dict[str, Any]) -> bool:
        """Keep `fit` (JSON) as the model's calibration fit, under the model's lock, unless the
        fit it keeps was read at more joined pairs (`fit["joined"]`: a slower refit never
        replaces a later one); whether it was written. UnknownModelError if the model is gone."""
        with self.database.transaction() as tx:
            found = tx.one(f"SELECT id, estimate_fit FROM loss_models WHERE name = ?{tx.dialect.lock_row}", [name])
            if found is None:
                raise UnknownModelError(name)
            kept = None if found[1] is None else orjson.loads(found[1])
            # A kept fit without its pair count (`joined`) is always replaced.
            if isinstance(kept, dict) and "joined" in kept and kept["joined"] > fit["joined"]:
                return False
            tx.execute("UPDATE loss_models SET estimate_fit = ? WHERE id = ?", [orjson.dumps(fit).decode(), found[0]])
        return True


def _floats(payloads: list[bytes], codes: list[int], shape: tuple[int, ...] | None) -> NDArray[np.float64]:
    """Stored rows as one float64 array (len(payloads), *shape)."""
    if not payloads or shape is None:
        return np.zeros((len(payloads), *(shape or ())), dtype=np.float64)
    return _decode(payloads, codes, shape).astype(np.float64)
