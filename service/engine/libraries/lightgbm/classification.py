"""LightGBM's binary and multi-class metrics (src/metric/binary_metric.hpp, multiclass_metric.hpp)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import check_values_in
from service.engine.conventions import Convention
from service.engine.libraries.base import metric
from service.engine.libraries.lightgbm.objectives import (
    CLIPPED_LOG,
    F32_INPUTS,
    K_EPSILON,
    Margin,
    Objective,
    Sigmoid,
    _class_scores,
    _clipped_log,
    _objective_doc,
    _probabilities,
    _scores,
)
from service.engine.losses.class_targets import nll
from service.engine.losses.crossentropy import binary_log_loss
from service.engine.losses.scoring import hamming
from service.engine.options import Doc, Range
from service.engine.reduction import Array, LossValues


@metric(
    "lightgbm",
    "binary_logloss",
    loss="binary_crossentropy",
    link="objective's: binary, 1 / (1 + exp(-sigmoid x))",
    precision=F32_INPUTS,
    aliases=("binary",),
    float32_targets=True,
)
def binary_logloss(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: Annotated[Objective, Doc(_objective_doc("binary"))] = "binary",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Negative log-likelihood of binary labels: LightGBM's `binary_logloss`.

    Formula:
        y = 1: -log p if p > 1e-15f else -logf(1e-15f); y = 0: the same of 1 - p
        binary_crossentropy's formula, clipped by branch (Keras clips p to [1e-7, 1 - 1e-7])

    Shapes:
        predictions: probabilities (N,); labels: 0 or 1, (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/binary_metric.hpp BinaryLoglossMetric::LossOnPoint; include/LightGBM/meta.h kEpsilon.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "binary")
    check_values_in(labels, (0.0, 1.0), "labels", "binary labels")
    if not margin:
        _probabilities(p)
    return LossValues(
        binary_log_loss(labels, _clipped_log(p, K_EPSILON, CLIPPED_LOG), _clipped_log(1.0 - p, K_EPSILON, CLIPPED_LOG))
    )


@metric(
    "lightgbm",
    "binary_error",
    loss="hamming",
    link="objective's: binary, 1 / (1 + exp(-sigmoid x))",
    precision="exact: each row is 0 or 1, summed in double",
    float32_targets=True,
)
def binary_error(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: Annotated[Objective, Doc(_objective_doc("binary"))] = "binary",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Binary classification error rate: LightGBM's `binary_error`.

    Formula:
        [p > 0.5] != y: p <= 0.5 predicts 0 (p = 0.5 counts as 0), hamming of the thresholded predictions

    Shapes:
        predictions: probabilities (N,); labels: 0 or 1, (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/binary_metric.hpp BinaryErrorMetric::LossOnPoint.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "binary")
    check_values_in(labels, (0.0, 1.0), "labels", "binary labels")
    if not margin:
        _probabilities(p)
    return LossValues(hamming((p > 0.5).astype(p.dtype), labels, "torch").values)


TopK = Annotated[
    int,
    Range(ge=1),
    Doc("LightGBM's multi_error_top_k: a sample is right when its class is among the k best (multi_error@k)"),
]


@metric(
    "lightgbm",
    "multi_logloss",
    loss="nll",
    link="objective's: multiclass softmax, multiclassova 1 / (1 + exp(-sigmoid x)) per class",
    precision="float64 rows, float32 weights, summed in double",
    aliases=("multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr"),
    class_labels=True,
    float32_targets=True,
)
def multi_logloss(
    predictions: Array,
    labels: NDArray[np.intp],
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: Annotated[Objective, Doc(_objective_doc("multiclass"))] = "multiclass",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Multi-class negative log-likelihood: LightGBM's `multi_logloss`.

    Formula:
        -log p_y if p_y > 1e-15f else -logf(1e-15f); nll of the clipped log-probabilities

    Shapes:
        predictions: class probabilities (N, C); labels: class indices (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/multiclass_metric.hpp MultiSoftmaxLoglossMetric; include/LightGBM/utils/common.h Softmax.
    """
    p = _class_scores(predictions, labels, margin, objective, sigmoid)
    return LossValues(nll(_clipped_log(p, K_EPSILON, CLIPPED_LOG), labels, "torch").values)


@metric(
    "lightgbm",
    "multi_error",
    loss=None,
    link="objective's: multiclass softmax, multiclassova 1 / (1 + exp(-sigmoid x)) per class",
    precision="exact: each row is 0 or 1, summed in double",
    parameter="multi_error_top_k",
    class_labels=True,
    float32_targets=True,
)
def multi_error(
    predictions: Array,
    labels: NDArray[np.intp],
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: Annotated[Objective, Doc(_objective_doc("multiclass"))] = "multiclass",
    sigmoid: Sigmoid = 1.0,
    multi_error_top_k: TopK = 1,
) -> LossValues:
    """Multi-class top-k error rate: LightGBM's `multi_error` and `multi_error@k`.

    Formula:
        1 if #{c : p_c >= p_y} > k else 0 (the true class counts itself; a tie with it is an error)
        no catalogue loss: hamming of the argmax only where k = 1 and nothing ties

    Shapes:
        predictions: class probabilities (N, C); labels: class indices (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/multiclass_metric.hpp MultiErrorMetric::LossOnPoint (multi_error_top_k).
    """
    p = _class_scores(predictions, labels, margin, objective, sigmoid)
    truth = np.take_along_axis(p, labels[:, None], axis=1)
    at_least = np.count_nonzero(p >= truth, axis=1)
    return LossValues((at_least > multi_error_top_k).astype(p.dtype))
