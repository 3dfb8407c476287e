"""CatBoost's binary and multi-class metrics (catboost/libs/metrics/metric.cpp `TCrossEntropyMetric`,
`TMultiClassMetric`): Logloss, CrossEntropy and MultiClass, from raw values or probabilities."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import check_class_indices, check_in_range
from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.libraries.base import metric
from service.engine.libraries.catboost.common import PER_OBJECT, ROW_SUM_TOLERANCE, TARGET_BORDER, Margin
from service.engine.losses.crossentropy import binary_crossentropy, binary_log_loss, sparse_categorical_crossentropy
from service.engine.reduction import Array, LossValues


def _probability_logs(predictions: Array, n: int) -> tuple[Array, Array]:
    """log p and log(1 - p) of the positive class, from predict_proba's [1 - p, p] columns or the
    positive column p alone (CatBoost's first column is 1 - p, computed from p)."""
    if predictions.shape == (n, 2):
        sums = predictions.sum(axis=1)
        off = np.abs(sums - 1) > ROW_SUM_TOLERANCE
        if off.any():
            i = int(np.argmax(off))
            raise LossInputError(
                "predictions",
                f"two columns are CatBoost's [1 - p, p] probabilities; this row sums to {sums[i].item()!r}",
                (i,),
            )
        p = predictions[:, 1]
    elif predictions.shape == (n,):
        p = predictions
    else:
        raise LossInputError(
            "predictions",
            f"shape {list(predictions.shape)} should be [{n}] (the positive class's probability) or [{n}, 2] "
            "(predict_proba's [1 - p, p])",
        )
    bad = (p <= 0) | (p >= 1)
    if bad.any():
        index = (int(np.argmax(bad)),) + ((1,) if predictions.ndim == 2 else ())
        raise LossInputError(
            "predictions",
            f"must be a probability strictly between 0 and 1 (margin is false), got {predictions[index].item()!r}: "
            "at 0 or 1 the raw value is lost; send RawFormulaVal with margin: true",
            index,
        )
    return np.log(p), np.log1p(-p)


def _binary_labels(labels: Array, n: int, meaning: str) -> None:
    if labels.shape != (n,):
        raise LossInputError("labels", f"shape {list(labels.shape)} should be [{n}]: one target per object")
    check_in_range(labels, "labels", 0.0, 1.0, meaning)


def _cross_entropy(predictions: Array, targets: Array, margin: bool) -> Array:
    """-(y log p + (1 - y) log(1 - p)) = log(1 + e^a) - y a: binary_crossentropy on the raw value."""
    if margin:
        return binary_crossentropy(predictions, targets, "torch", from_logits=True).values
    log_p, log_q = _probability_logs(predictions, targets.shape[0])
    return binary_log_loss(targets, log_p, log_q)


@metric(
    "catboost",
    "Logloss",
    loss="binary_crossentropy",
    link="sigmoid",
    precision=PER_OBJECT,
    float32_targets=True,
)
def logloss(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Negative log-likelihood of targets binarised at 0.5: CatBoost's `Logloss`.

    Formula:
        t = 1 if y > 0.5 else 0 (soft targets become 0 or 1); log(1 + e^a) - t a, no clipping
        binary_crossentropy on the raw value a; from probabilities -(t log p + (1 - t) log(1 - p))

    Shapes:
        predictions: probabilities (N,) or predict_proba's (N, 2) [1 - p, p]; raw values (N,) with margin.
        labels: (N,) in [0, 1]. per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TCrossEntropyMetric (TargetBorder = GetDefaultTargetBorder()).
    """
    _binary_labels(labels, predictions.shape[0], "Logloss targets (0/1, or probabilities binarised at 0.5)")
    positive = (labels > TARGET_BORDER).astype(labels.dtype)
    return LossValues(_cross_entropy(predictions, positive, margin))


@metric(
    "catboost",
    "CrossEntropy",
    loss="binary_crossentropy",
    link="sigmoid",
    precision=PER_OBJECT,
    float32_targets=True,
)
def cross_entropy(
    predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False
) -> LossValues:
    """Cross-entropy with soft targets: CatBoost's `CrossEntropy`.

    Formula:
        log(1 + e^a) - y a with y the target probability as given (Logloss without binarising)
        binary_crossentropy on the raw value a; from probabilities -(y log p + (1 - y) log(1 - p))

    Shapes:
        predictions: probabilities (N,) or predict_proba's (N, 2) [1 - p, p]; raw values (N,) with margin.
        labels: probabilities (N,) in [0, 1]. per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TCrossEntropyMetric.
    """
    _binary_labels(labels, predictions.shape[0], "CrossEntropy targets (probabilities)")
    return LossValues(_cross_entropy(predictions, labels, margin))


@metric(
    "catboost",
    "MultiClass",
    loss="sparse_categorical_crossentropy",
    link="softmax",
    precision=PER_OBJECT,
    class_labels=True,
    float32_targets=True,
)
def multi_class(
    predictions: Array, labels: NDArray[np.intp], convention: Convention, /, *, margin: Margin = False
) -> LossValues:
    """Multi-class negative log-likelihood: CatBoost's `MultiClass`.

    Formula:
        -(a_y - max(a) - log sum_j exp(a_j - max(a))): log-softmax of the raw values, no clipping
        sparse_categorical_crossentropy from logits; from probabilities p the raw values are log p

    Shapes:
        predictions: softmax rows (N, C) (predict_proba), or raw values (N, C) with margin.
        labels: class indices (N,) in [0, C). per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TMultiClassMetric.
    """
    if predictions.ndim != 2 or labels.shape != predictions.shape[:1]:
        raise LossInputError(
            "predictions" if predictions.ndim != 2 else "labels",
            f"predictions {list(predictions.shape)} and labels {list(labels.shape)} should be (N, C) and (N,)",
        )
    check_class_indices(labels, predictions.shape[1], None)
    raw = predictions
    if not margin:
        check_in_range(predictions, "predictions", 0.0, 1.0, "class probabilities (margin is false)")
        picked = predictions[np.arange(labels.shape[0]), labels]
        if (picked == 0).any():
            i = int(np.argmax(picked == 0))
            raise LossInputError(
                "predictions",
                "the labelled class has probability 0, which loses its raw value; send RawFormulaVal with margin: true",
                (i, int(labels[i])),
            )
        raw = np.log(predictions)
    return LossValues(sparse_categorical_crossentropy(raw, labels, "torch", from_logits=True).values)
