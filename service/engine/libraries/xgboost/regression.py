"""XGBoost's regression metrics (src/metric/elementwise_metric.cu): rmse, rmsle, mae, mape and mphe."""

from __future__ import annotations

from typing import Annotated

import numpy as np

from service.engine.checks import check_same_shape
from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.libraries.base import metric
from service.engine.libraries.xgboost.links import PER_ROW, Margin, _f32
from service.engine.losses._shared import elementwise_loss
from service.engine.losses.regression import (
    absolute_percentage_errors,
    mean_absolute_error,
    mean_squared_error,
    squared_log_errors,
)
from service.engine.options import Doc, Positive
from service.engine.reduction import Array, LossValues


@metric(
    "xgboost",
    "rmse",
    loss="mean_squared_error",
    link="none (reg:squarederror)",
    precision=PER_ROW,
    aggregate="root_mean",
)
def rmse(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Root mean squared error: XGBoost's `rmse`.

    Formula:
        per value (y - p)^2; mean: sqrt(sum(w (y - p)^2) / sum(w))

    Shapes:
        predictions: (N,) or (N, T); labels: the same shape.
        per_sample: w (y - p)^2 per value; `sum` their sum, `mean` the root of sum / denominator.

    Follows:
        src/metric/elementwise_metric.cu EvalRowRMSE (GetFinal: sqrt(esum / wsum)).
    """
    return LossValues(mean_squared_error(predictions, labels, "torch").values)


@metric(
    "xgboost",
    "rmsle",
    loss="mean_squared_logarithmic_error",
    link="none (reg:squaredlogerror)",
    precision=PER_ROW,
    aggregate="root_mean",
)
def rmsle(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Root mean squared logarithmic error: XGBoost's `rmsle`.

    Formula:
        per value (log1p(y) - log1p(p))^2 (no floor, unlike Keras's msle); mean: sqrt(sum(w v) / sum(w))
        domain: y > -1 and p > -1

    Shapes:
        predictions: (N,) or (N, T); labels: the same shape.
        per_sample: w (log1p(y) - log1p(p))^2 per value; `mean` the root of sum / denominator.

    Follows:
        src/metric/elementwise_metric.cu EvalRowRMSLE.
    """
    check_same_shape(predictions, labels)
    for field, values in (("labels", labels), ("predictions", predictions)):
        below = values <= -1
        if below.any():
            index = tuple(int(i) for i in np.argwhere(below)[0])
            raise LossInputError(field, f"must be > -1 (log1p), got {values[index].item()!r}", index)
    return LossValues(squared_log_errors(predictions, labels, "torch", np.log1p))


@metric("xgboost", "mae", loss="mean_absolute_error", link="none (reg:absoluteerror)", precision=PER_ROW)
def mae(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Mean absolute error: XGBoost's `mae`.

    Formula:
        |y - p|

    Shapes:
        predictions: (N,) or (N, T); labels: the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu EvalRowMAE.
    """
    return LossValues(mean_absolute_error(predictions, labels, "torch").values)


@metric("xgboost", "mape", loss="mean_absolute_percentage_error", link="none", precision=PER_ROW)
def mape(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Mean absolute percentage error as a fraction: XGBoost's `mape`.

    Formula:
        |(y - p) / y| (no factor 100 and no floor on |y|, unlike Keras's mape); labels y != 0

    Shapes:
        predictions: (N,) or (N, T); labels: the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu EvalRowMAPE.
    """
    check_same_shape(predictions, labels)
    zero = labels == 0
    if zero.any():
        index = tuple(int(i) for i in np.argwhere(zero)[0])
        raise LossInputError("labels", "must not be 0: XGBoost's mape divides by the label (inf)", index)
    return LossValues(absolute_percentage_errors(predictions, labels, "torch", None))


HuberSlope = Annotated[float, Positive, Doc("XGBoost's huber_slope: where the loss turns from quadratic to linear")]


@metric("xgboost", "mphe", loss=None, link="none (reg:pseudohubererror)", precision=PER_ROW)
def mphe(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    huber_slope: HuberSlope = 1.0,
) -> LossValues:
    """Mean pseudo-Huber error: XGBoost's `mphe` (no catalogue loss is the pseudo-Huber loss).

    Formula:
        a = y - p; s = huber_slope; s^2 (sqrt(1 + (a / s)^2) - 1)

    Shapes:
        predictions: (N,) or (N, T); labels: the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu PseudoErrorLoss (pseudo_huber_param.huber_slope).
    """
    slope = predictions.dtype.type(_f32(huber_slope))

    def formula(p: Array, y: Array) -> Array:
        a = y - p
        return slope * slope * (np.sqrt(1 + np.square(a / slope)) - 1)  # type: ignore[no-any-return]

    return LossValues(elementwise_loss(predictions, labels, "torch", formula))
