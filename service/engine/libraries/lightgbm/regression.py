"""LightGBM's regression metrics (src/metric/regression_metric.hpp): l1, l2, rmse, quantile, mape,
huber and fair, and the objectives whose outputs they take."""

from __future__ import annotations

from typing import Annotated

import numpy as np

from service.engine.conventions import Convention
from service.engine.libraries.base import metric
from service.engine.libraries.lightgbm.objectives import F32_INPUTS, Margin, Objective, Sigmoid, _objective_doc, _scores
from service.engine.losses._shared import elementwise_loss
from service.engine.losses.regression import (
    absolute_percentage_errors,
    huber,
    mean_absolute_error,
    mean_squared_error,
    pinball,
)
from service.engine.options import Doc, Positive, Range
from service.engine.reduction import Array, LossValues

RegressionObjective = Annotated[Objective, Doc(_objective_doc("regression"))]
RegressionL1Objective = Annotated[Objective, Doc(_objective_doc("regression_l1"))]
QuantileObjective = Annotated[Objective, Doc(_objective_doc("quantile"))]
MapeObjective = Annotated[Objective, Doc(_objective_doc("mape"))]
HuberObjective = Annotated[Objective, Doc(_objective_doc("huber"))]
FairObjective = Annotated[Objective, Doc(_objective_doc("fair"))]
Alpha = Annotated[float, Range(gt=0.0, lt=1.0), Doc("LightGBM's alpha: the quantile (shared with huber)")]
HuberAlpha = Annotated[
    float, Positive, Doc("LightGBM's alpha: where huber turns from quadratic to linear (shared with quantile)")
]
FairC = Annotated[float, Positive, Doc("LightGBM's fair_c: the fair loss's scale")]


@metric(
    "lightgbm",
    "l1",
    loss="mean_absolute_error",
    link="objective's: regression_l1, identity",
    precision=F32_INPUTS,
    aliases=("mae", "mean_absolute_error", "regression_l1"),
    float32_targets=True,
)
def l1(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: RegressionL1Objective = "regression_l1",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Mean absolute error: LightGBM's `l1` (`mae`).

    Formula:
        |p - y|

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp L1Metric::LossOnPoint.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "regression_l1")
    return LossValues(mean_absolute_error(p, labels, "torch").values)


@metric(
    "lightgbm",
    "l2",
    loss="mean_squared_error",
    link="objective's: regression, identity",
    precision=F32_INPUTS,
    aliases=("mse", "mean_squared_error", "regression", "regression_l2"),
    float32_targets=True,
)
def l2(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: RegressionObjective = "regression",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Mean squared error: LightGBM's `l2` (`mse`).

    Formula:
        (p - y)^2

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp L2Metric::LossOnPoint.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "regression")
    return LossValues(mean_squared_error(p, labels, "torch").values)


@metric(
    "lightgbm",
    "rmse",
    loss="mean_squared_error",
    link="objective's: regression, identity",
    precision=F32_INPUTS,
    aggregate="root_mean",
    aliases=("root_mean_squared_error", "l2_root"),
    float32_targets=True,
)
def rmse(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: RegressionObjective = "regression",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Root mean squared error: LightGBM's `rmse` (`l2_root`).

    Formula:
        per value (p - y)^2; mean: sqrt(sum(w (p - y)^2) / sum(w))

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: w (p - y)^2 per value; `mean` the root of sum / denominator.

    Follows:
        src/metric/regression_metric.hpp RMSEMetric (AverageLoss: sqrt(sum_loss / sum_weights)).
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "regression")
    return LossValues(mean_squared_error(p, labels, "torch").values)


@metric(
    "lightgbm",
    "quantile",
    loss="pinball",
    link="objective's: quantile, identity",
    precision=F32_INPUTS,
    float32_targets=True,
)
def quantile(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: QuantileObjective = "quantile",
    sigmoid: Sigmoid = 1.0,
    alpha: Alpha = 0.9,
) -> LossValues:
    """Quantile (pinball) loss: LightGBM's `quantile`, alpha 0.9 by default.

    Formula:
        d = y - p; (alpha - 1) d if d < 0 else alpha d (pinball with LightGBM's alpha)

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp QuantileMetric::LossOnPoint (config.alpha).
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "quantile")
    return LossValues(pinball(p, labels, "torch", alpha=alpha).values)


@metric(
    "lightgbm",
    "mape",
    loss="mean_absolute_percentage_error",
    link="objective's: mape, identity",
    precision=F32_INPUTS,
    aliases=("mean_absolute_percentage_error",),
    float32_targets=True,
)
def mape(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: MapeObjective = "mape",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Mean absolute percentage error as a fraction: LightGBM's `mape`.

    Formula:
        |y - p| / max(1, |y|) (no factor 100; the denominator floored at 1, Keras's at 1e-7)

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp MAPEMetric::LossOnPoint.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "mape")
    return LossValues(absolute_percentage_errors(p, labels, "torch", 1.0))


@metric(
    "lightgbm",
    "huber",
    loss="huber",
    link="objective's: huber, identity",
    precision=F32_INPUTS,
    float32_targets=True,
)
def huber_metric(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: HuberObjective = "huber",
    sigmoid: Sigmoid = 1.0,
    alpha: HuberAlpha = 0.9,
) -> LossValues:
    """Huber loss: LightGBM's `huber`, its delta LightGBM's alpha (0.9 by default).

    Formula:
        e = p - y; 0.5 e^2 if |e| <= alpha else alpha (|e| - 0.5 alpha) (huber with delta = alpha)

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp HuberLossMetric::LossOnPoint (config.alpha).
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "huber")
    return LossValues(huber(p, labels, "torch", delta=alpha).values)


@metric("lightgbm", "fair", loss=None, link="objective's: fair, identity", precision=F32_INPUTS, float32_targets=True)
def fair(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: FairObjective = "fair",
    sigmoid: Sigmoid = 1.0,
    fair_c: FairC = 1.0,
) -> LossValues:
    """Fair loss: LightGBM's `fair` (no catalogue loss is the fair loss).

    Formula:
        x = |p - y|; c x - c^2 log1p(x / c), c = fair_c

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp FairLossMetric::LossOnPoint (config.fair_c).
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "fair")

    def formula(p: Array, y: Array) -> Array:
        x = np.abs(p - y)
        return fair_c * x - fair_c * fair_c * np.log1p(x / fair_c)

    return LossValues(elementwise_loss(p, labels, "torch", formula))
