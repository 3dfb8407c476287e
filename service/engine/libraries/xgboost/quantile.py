"""XGBoost's quantile metric (src/metric/elementwise_metric.cu `QuantileError`): the pinball loss
at one or more quantiles."""

from __future__ import annotations

from typing import Annotated

import numpy as np

from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.libraries.base import metric
from service.engine.libraries.xgboost.links import PER_ROW, Margin, _f32
from service.engine.losses.regression import pinball
from service.engine.options import Doc, Probability
from service.engine.reduction import Array, LossValues

QuantileAlpha = Annotated[
    float | list[float],
    Probability,
    Doc("XGBoost's quantile_alpha: one quantile, or several with one prediction column each"),
]


@metric("xgboost", "quantile", loss="pinball", link="none (reg:quantileerror)", precision=PER_ROW)
def quantile(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    quantile_alpha: QuantileAlpha = 0.5,
) -> LossValues:
    """Quantile (pinball) loss: XGBoost's `quantile`.

    Formula:
        e = y - p; alpha e if e >= 0 else (alpha - 1) e (pinball, with XGBoost's alpha)
        several alphas: one prediction column per alpha, all values averaged together

    Shapes:
        predictions: (N,) for one alpha, (N, K) for K alphas; labels: (N,).
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu QuantileError (quantile_loss_param.quantile_alpha).
    """
    alphas = quantile_alpha if isinstance(quantile_alpha, list) else [quantile_alpha]
    if len(alphas) == 1 and predictions.ndim == 1:
        return LossValues(pinball(predictions, labels, "torch", alpha=_f32(alphas[0])).values)
    expected = [labels.shape[0], len(alphas)] if labels.ndim == 1 else None
    if expected is None or list(predictions.shape) != expected:
        raise LossInputError(
            "predictions",
            f"shape {list(predictions.shape)} should be {expected or '(N, K)'}: one column per quantile_alpha "
            f"({len(alphas)}), labels (N,)",
        )
    columns = [pinball(predictions[:, k], labels, "torch", alpha=_f32(alpha)).values for k, alpha in enumerate(alphas)]
    return LossValues(np.stack(columns, axis=1))
