"""CatBoost's regression metrics (catboost/libs/metrics/metric.cpp `TRMSEMetric`, `TQuantileMetric`):
RMSE, MAE and Quantile."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np

from service.engine.checks import check_same_shape
from service.engine.conventions import Convention
from service.engine.libraries.base import metric
from service.engine.libraries.catboost.common import MAE_DELTA, MAX_DELTA, PER_OBJECT, Margin
from service.engine.losses.regression import mean_absolute_error, mean_squared_error, pinball
from service.engine.options import Doc, Probability, Range
from service.engine.reduction import Array, LossValues


@metric(
    "catboost",
    "RMSE",
    loss="mean_squared_error",
    link="none",
    precision=PER_OBJECT,
    aggregate="root_mean",
    float32_targets=True,
)
def rmse(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Root mean squared error: CatBoost's `RMSE`.

    Formula:
        per object (a - y)^2; mean: sqrt(sum(w (a - y)^2) / (sum(w) + 1e-38))

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: w (a - y)^2 per object; `mean` the root of sum / denominator.

    Follows:
        catboost/libs/metrics/metric.cpp TRMSEMetric (GetFinalError).
    """
    check_same_shape(predictions, labels)
    return LossValues(mean_squared_error(predictions, labels, "torch").values)


def _dead_zone(predictions: Array, labels: Array, delta: float) -> Array:
    """CatBoost's quantile error e = y - a moved towards 0 by delta: 0 where |e| < delta, e as is where
    |e| == delta (CatBoost moves only |e| > delta, and its multiplier is not 0 there)."""
    check_same_shape(predictions, labels)
    e = labels - predictions
    d = e.dtype.type(delta)
    return np.where(np.abs(e) < d, 0, np.where(e > d, e - d, np.where(e < -d, e + d, e)))


@metric(
    "catboost",
    "MAE",
    loss="mean_absolute_error",
    link="none",
    precision=PER_OBJECT,
    float32_targets=True,
)
def mae(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Mean absolute error less CatBoost's 1e-6 dead zone: CatBoost's `MAE`.

    Formula:
        |y - a| - 1e-6 where |y - a| > 1e-6, 0 where |y - a| < 1e-6 (1e-6 at equality)
        2 Quantile(alpha = 0.5, delta = 1e-6): mean_absolute_error of the error moved towards 0 by 1e-6

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TQuantileMetric (MaeAlpha = 0.5, MaeDelta = 1e-6, Stats[0] *= 2).
    """
    moved = _dead_zone(predictions, labels, MAE_DELTA)
    return LossValues(mean_absolute_error(np.zeros_like(moved), moved, "torch").values)


Alpha = Annotated[
    float, Probability, Doc("the quantile (CatBoost's alpha, read as double); Quantile:alpha=0.3 sets it")
]
Delta = Annotated[
    float,
    Range(ge=0.0, le=MAX_DELTA),
    Doc("errors smaller than delta count 0 and larger ones are moved towards 0 by delta (CatBoost's delta)"),
]


def _describe_quantile(bound: Mapping[str, Any]) -> str:
    """TQuantileMetric::GetDescription: alpha with %.3g, delta with %g when it is not 1e-6."""
    described = f"Quantile:alpha={bound['alpha']:.3g}"
    return described if bound["delta"] == MAE_DELTA else f"{described};delta={bound['delta']:g}"


@metric(
    "catboost",
    "Quantile",
    loss="pinball",
    link="none",
    precision=PER_OBJECT,
    parameter="alpha",
    describe=_describe_quantile,
    float32_targets=True,
)
def quantile(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    alpha: Alpha = 0.5,
    delta: Delta = MAE_DELTA,
) -> LossValues:
    """Quantile (pinball) loss with a dead zone: CatBoost's `Quantile`.

    Formula:
        e = y - a; 0 if |e| < delta; else e' = e moved towards 0 by delta (e at |e| = delta),
        alpha e' if e > 0 else -(1 - alpha) e': pinball of the moved error; alpha 0.5, delta 1e-6 by default

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TQuantileMetric (alpha, delta: GetParamOrDefault, double).
    """
    moved = _dead_zone(predictions, labels, delta)
    return LossValues(pinball(np.zeros_like(moved), moved, "torch", alpha=alpha).values)
