"""XGBoost's binary and multi-class metrics (src/metric/elementwise_metric.cu, multiclass_metric.cu):
logloss, mlogloss, error and merror."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import check_same_shape
from service.engine.conventions import Convention
from service.engine.libraries.base import metric
from service.engine.libraries.xgboost.links import (
    LOG_EPS,
    PER_ROW,
    Margin,
    _binary_labels,
    _class_probabilities,
    _f32,
    _probabilities,
)
from service.engine.losses.class_targets import nll
from service.engine.losses.crossentropy import binary_log_loss
from service.engine.losses.scoring import hamming
from service.engine.options import Doc, Probability
from service.engine.reduction import Array, LossValues


@metric("xgboost", "logloss", loss="binary_crossentropy", link="sigmoid (binary:logistic)", precision=PER_ROW)
def logloss(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Negative log-likelihood of binary labels: XGBoost's `logloss`.

    Formula:
        -(y log max(p, 1e-16) + (1 - y) log max(1 - p, 1e-16)); p = sigmoid(x) with margin
        binary_crossentropy's formula with XGBoost's clamp (Keras clips p to [1e-7, 1 - 1e-7])

    Shapes:
        predictions: probabilities (N,) or (N, T); labels: 0 or 1, the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu LogLoss / EvalRowLogLoss.
    """
    check_same_shape(predictions, labels)
    _binary_labels(labels)
    p = _probabilities(predictions, margin)
    eps = p.dtype.type(LOG_EPS)
    return LossValues(binary_log_loss(labels, np.log(np.maximum(p, eps)), np.log(np.maximum(1 - p, eps))))


@metric("xgboost", "mlogloss", loss="nll", link="softmax (multi:softprob)", precision=PER_ROW, class_labels=True)
def mlogloss(
    predictions: Array, labels: NDArray[np.intp], convention: Convention, /, *, margin: Margin = False
) -> LossValues:
    """Multi-class negative log-likelihood: XGBoost's `mlogloss`.

    Formula:
        -log max(p_y, 1e-16); p = softmax(x) with margin
        nll of the clamped log-probabilities (no renormalisation, unlike Keras's crossentropy)

    Shapes:
        predictions: class probabilities (N, C); labels: class indices (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/multiclass_metric.cu EvalMultiLogLoss.
    """
    p = _class_probabilities(predictions, labels, margin)
    return LossValues(nll(np.log(np.maximum(p, p.dtype.type(LOG_EPS))), labels, "torch").values)


Threshold = Annotated[float, Probability, Doc("predictions above it count as class 1 (error@t sets it)")]


@metric(
    "xgboost",
    "error",
    loss="hamming",
    link="sigmoid (binary:logistic)",
    precision="exact: each row is 0 or 1, summed in double",
    parameter="threshold",
)
def error(
    predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False, threshold: Threshold = 0.5
) -> LossValues:
    """Binary classification error rate: XGBoost's `error` and `error@t`.

    Formula:
        [p > t] != y, i.e. 1 - y if p > t else y; t = 0.5, or t from error@t (read as a float)
        hamming of the thresholded predictions; p = sigmoid(x) with margin

    Shapes:
        predictions: probabilities (N,) or (N, T); labels: 0 or 1, the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu EvalError (threshold parsed with sscanf "%f").
    """
    check_same_shape(predictions, labels)
    _binary_labels(labels)
    p = _probabilities(predictions, margin)
    predicted = (p > p.dtype.type(_f32(threshold))).astype(p.dtype)
    wrong = hamming(predicted.reshape(-1), labels.reshape(-1), "torch").values
    return LossValues(wrong.reshape(p.shape))


@metric(
    "xgboost",
    "merror",
    loss="hamming",
    link="softmax (multi:softprob)",
    precision="exact: each row is 0 or 1, summed in double",
    class_labels=True,
)
def merror(
    predictions: Array, labels: NDArray[np.intp], convention: Convention, /, *, margin: Margin = False
) -> LossValues:
    """Multi-class error rate: XGBoost's `merror`.

    Formula:
        argmax_c p_c != y (the first of equal maxima, as FindMaxIndex); p = softmax(x) with margin
        hamming of the predicted classes

    Shapes:
        predictions: class probabilities (N, C); labels: class indices (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/multiclass_metric.cu EvalMatchError; src/common/math.h FindMaxIndex.
    """
    p = _class_probabilities(predictions, labels, margin)
    predicted = p.argmax(axis=1).astype(p.dtype)
    return LossValues(hamming(predicted, labels.astype(p.dtype), "torch").values)
