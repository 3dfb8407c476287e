"""The estimated losses /metrics reports (docs/monitoring.md, "Estimated loss"): per model
configured with `estimate` and per estimated loss, the expected loss of the last hour's
predictions with its band, and for the calibration-drift alert the realized mean of a cohort's
joined pairs beside the expected loss and band of the same pairs.

Both come from the history's totals (`history.totals`), read from the rollup cells from the start
of the minute the span begins in: the last hour's predictions joined and pending (the pending ones
estimated under the model's current fit), and the cohort's joined pairs, each with the moments it
kept when it joined.
"""

from __future__ import annotations

import math

from service.store import Store, StoreFailureError
from service.store.rollups import LEVELS
from service.usecases.bucket_estimates import band
from service.usecases.configured import loss_aggregate, loss_name_of
from service.usecases.estimates import estimated
from service.usecases.history import SpanTotals, totals
from service.usecases.models import unavailable
from service.values.results import mean_of
from service.values.watched import Watched

HOUR = 3600.0


def estimated_models(store: Store) -> list[str]:
    """The models whose configuration sets `estimate`."""
    try:
        return [model.name for model in store.models() if estimated(model)]
    except StoreFailureError as exc:
        raise unavailable(exc) from None


def span_start(now: float, seconds: float) -> float:
    """The start of the minute `seconds` before `now`: where a span's rollup cells begin."""
    width = LEVELS[0]
    return math.floor((now - seconds) / width) * width


def watched(store: Store, name: str, now: float, cohort: float) -> list[Watched]:
    """Each estimated loss of model `name` as /metrics shows it, the cohort the predictions of the
    `cohort` seconds before `now`; none where the model was deleted, or reconfigured between the
    two reads."""
    recent = totals(store, name, span_start(now, HOUR), now, pending=True)
    joined = totals(store, name, span_start(now, cohort), now, pending=False)
    if recent is None or joined is None or recent.model.config != joined.model.config:
        return []
    return [_watched(recent, joined, position) for position in estimated(recent.model)]


def _watched(recent: SpanTotals, cohort: SpanTotals, position: int) -> Watched:
    model = recent.model
    aggregate = loss_aggregate(model, position)
    every = (recent.expected_joined[position] + recent.expected_pending[position]).tolist()
    expected = band(every, aggregate) if every[0] else (None, None, None)
    mine = cohort.expected_joined[position].tolist()
    pairs = int(mine[0])
    joined_band = band(mine, aggregate) if pairs else (None, None, None)
    realized = None
    counted = cohort.counts[position] != 0 and (cohort.denominators[position] != 0 or aggregate == "sum")
    if pairs and pairs == cohort.joined and counted:
        realized = mean_of(float(cohort.sums[position]), float(cohort.denominators[position]), aggregate)
    return Watched(
        model=model.name,
        loss=loss_name_of(model, position),
        predictions=int(every[0]),
        expected=_finite(expected[0]),
        low=_finite(expected[1]),
        high=_finite(expected[2]),
        pairs=pairs,
        realized=_finite(realized),
        joined_expected=_finite(joined_band[0]),
        joined_low=_finite(joined_band[1]),
        joined_high=_finite(joined_band[2]),
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
