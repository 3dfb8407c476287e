"""Each history bucket's estimated loss (`estimated`, docs/estimates.md): the expected loss of all
its predictions, a 3-sigma band, and the expected loss of those still pending.

A bucket's predictions are its joined pairs and its pending rows (an expired prediction leaves
with its row). A joined pair's moments were kept when it joined (`estimates.pair_moments`): the
rollup cells and the rows hold their totals. A pending prediction is estimated here, from its
stored values under the model's current belief, in batches of the scan. Per entry and estimated
loss the totals are EXPECTED_TOTALS numbers: how many predictions are estimated, then their
moments summed (history.MOMENTS), which add up over any set of predictions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.engine import Aggregate, ExpectedTotals, LossInputError
from service.store import DTYPES, Model
from service.store.history import EXPECTED_TOTALS
from service.store.pairs import PredictionRow
from service.usecases.configured import loss_aggregate
from service.usecases.estimates import estimable_parts, estimated, moments

# The band's half-width in standard deviations.
BAND_SIGMAS = 3.0

_log = logging.getLogger(__name__)


def no_totals(losses: int, entries: int) -> NDArray[np.float64]:
    """Totals of nothing: (losses, entries, EXPECTED_TOTALS) zeros."""
    return np.zeros((losses, entries, EXPECTED_TOTALS))


def grown_totals(totals: NDArray[np.float64], losses: int, entries: int) -> NDArray[np.float64]:
    """`totals` with room for `losses` and `entries` (the new ones zero)."""
    grown = no_totals(losses, entries)
    grown[: totals.shape[0], : totals.shape[1]] = totals
    return grown


def add_pending(
    model: Model, rows: Sequence[PredictionRow], entries: Sequence[int], totals: NDArray[np.float64]
) -> None:
    """Estimate pending prediction rows (their stored values, under the model's current belief)
    and add each into `totals[loss, entry]` (row i into entry `entries[i]`; -1: into none)."""
    positions = estimated(model)
    kept = [i for i, entry in enumerate(entries) if entry >= 0 and rows[i].prediction is not None]
    if not positions or not kept or model.prediction_shape is None:
        return
    by_dtype: dict[int, list[int]] = {}
    for i in kept:
        by_dtype.setdefault(rows[i].prediction_dtype, []).append(i)
    for code, members in by_dtype.items():
        payload = b"".join(rows[i].prediction or b"" for i in members)
        predictions = np.frombuffer(payload, DTYPES[code]).reshape(len(members), *model.prediction_shape)
        at = np.array([entries[i] for i in members], np.int64)
        refused: list[LossInputError] = []
        for part, found in estimable_parts(model, predictions, np.arange(len(members)), refused):
            for position, expected in found.items():
                values = moments(expected)
                counted = ~np.isnan(values).any(axis=1)
                np.add.at(totals[position, :, 0], at[part][counted], 1.0)
                np.add.at(totals[position, :, 1:], at[part][counted], values[counted])
        if refused:
            _log.warning("model %s: pending predictions not estimated, the first: %s", model.name, refused[0])


def add_joined(row: PredictionRow, entry: int, variants: Sequence[int], totals: NDArray[np.float64]) -> None:
    """A joined row's kept moments into `totals[loss, entry]`, for each loss it was estimated for."""
    for kept in row.expected:
        variant = int(kept["variant"])
        values = kept["moments"]
        if variant in variants and not np.isnan(values).any():
            which = variants.index(variant)
            totals[which, entry, 0] += 1.0
            totals[which, entry, 1:] += values


def estimated_entries(
    model: Model, which: int, joined: NDArray[np.float64], pending: NDArray[np.float64]
) -> list[dict[str, Any] | None]:
    """The `estimated` field of loss `which` in each entry (its rows of `joined` and `pending`,
    (entries, EXPECTED_TOTALS)): null where no prediction of it is estimated."""
    if which not in estimated(model):
        return [None] * len(joined)
    aggregate = loss_aggregate(model, which)
    found: list[dict[str, Any] | None] = []
    for mine, waiting in zip((joined + pending).tolist(), pending.tolist(), strict=True):
        if mine[0] == 0:
            found.append(None)
            continue
        mean, sigma = _estimate(mine, aggregate)
        pending_mean = _estimate(waiting, aggregate)[0] if waiting[0] else None
        found.append(
            {
                "mean": _finite(mean),
                "low": _finite(mean - BAND_SIGMAS * sigma),
                "high": _finite(mean + BAND_SIGMAS * sigma),
                "pending_mean": None if pending_mean is None else _finite(pending_mean),
                "predictions": int(mine[0]),
                "pending": int(waiting[0]),
            }
        )
    return found


def band(totals: Sequence[float], aggregate: Aggregate) -> tuple[float, float, float]:
    """(expected value, low, high) of the loss over the predictions of `totals` (EXPECTED_TOTALS
    numbers), the band BAND_SIGMAS standard deviations either side, as the history's `estimated`
    gives them (its fields not finite where the history's are null)."""
    mean, sigma = _estimate(totals, aggregate)
    return mean, mean - BAND_SIGMAS * sigma, mean + BAND_SIGMAS * sigma


def _estimate(totals: Sequence[float], aggregate: Aggregate) -> tuple[float, float]:
    """(expected value, its standard deviation) of the loss over the predictions of `totals`:
    the summed share itself for a sum, the ratio of the sums otherwise (ExpectedTotals)."""
    summed = ExpectedTotals(*totals[1:])
    if aggregate == "sum":
        return summed.mean, math.sqrt(max(summed.variance, 0.0))
    return summed.estimate, summed.sigma


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
