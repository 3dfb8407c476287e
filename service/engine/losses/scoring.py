"""Probabilistic scoring rules, the zero-one and the Hamming loss, with scikit-learn's conventions
(sklearn/metrics/_classification.py).

Their mean is scikit-learn's `np.average`: with sample weights, sum(w l) / sum(w) under either
convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import check_class_indices, check_in_range, check_same_shape, check_values_in
from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.expectation import ExpectedLoss, binary_column, over_classes
from service.engine.losses._targets import FromLogits, _check_probabilities
from service.engine.numerics import xlogy
from service.engine.options import Aliases, Doc
from service.engine.reduction import Array, LossValues
from service.engine.registry import expectation, register

ClassValues = Annotated[
    list[float] | None,
    Aliases(("labels",)),
    Doc("the class values (scikit-learn's `labels`), in column order; default: the sorted distinct labels"),
]


def _one_hot(predictions: Array, labels: Array, classes: list[float] | None) -> tuple[Array, Array]:
    """scikit-learn's (targets one-hot, probabilities) pair; a 1-D input is P(the greater class)."""
    check_in_range(predictions, "predictions", 0.0, 1.0, "probabilities")
    if predictions.ndim not in (1, 2):
        raise LossInputError(
            "predictions", f"must be (N,) or (N, C) probabilities, got shape {list(predictions.shape)}"
        )
    if labels.shape != predictions.shape[:1]:
        raise LossInputError("labels", f"shape {list(labels.shape)} should be [{predictions.shape[0]}]")
    values = np.asarray(sorted(set(classes)) if classes is not None else np.unique(labels), dtype=labels.dtype)
    # The one-hot comparison also finds unknown labels: np.isin sorts and would hold ~8 floats
    # per label (log loss over 1-D predictions peaked at 13 arrays of N instead of 8).
    matches = labels[:, None] == values[None, :]
    unknown = ~matches.any(axis=1)
    if unknown.any():
        index = int(np.argwhere(unknown)[0][0])
        shown = labels[index].item()
        raise LossInputError("labels", f"{shown!r} is not one of the classes {values.tolist()}", (index,))
    probabilities = predictions[:, None] if predictions.ndim == 1 else predictions
    if probabilities.shape[1] == 1:
        probabilities = np.concatenate([1 - probabilities, probabilities], axis=1)
    if values.size != probabilities.shape[1]:
        where = "options.classes" if classes is not None else "labels"
        raise LossInputError(
            where,
            f"{values.size} classes {values.tolist()} but predictions have {probabilities.shape[1]} columns; "
            "name every class in options.classes",
        )
    one_hot = matches.astype(predictions.dtype)
    return one_hot, probabilities


@register("log_loss", aliases=("logistic_loss",), whole_batch=True, separable_with=("classes",))
def log_loss(
    predictions: Array, labels: Array, convention: Convention, /, *, classes: ClassValues = None
) -> LossValues:
    """Log loss (cross-entropy) with scikit-learn's conventions.

    Formula:
        -sum_c [y = c] log(clip(p_c, eps, 1 - eps)), eps = the dtype's machine epsilon

    Shapes:
        predictions: (N,) probability of the greater class, or (N, C) probabilities; labels: class values (N,).
        per_sample: (N,).

    Follows:
        sklearn/metrics/_classification.py log_loss.
    """
    one_hot, probabilities = _one_hot(predictions, labels, classes)
    eps = np.finfo(probabilities.dtype).eps
    clipped = np.clip(probabilities, eps, 1 - eps)
    return LossValues(-xlogy(one_hot, clipped).sum(axis=1), weighted_average=True)


@expectation("log_loss")
def log_loss_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected log loss under a belief q over the classes (default: the probabilities, each row over its sum).

    Formula:
        L(p, c) = -log(clip(p_c, eps, 1 - eps)); E = sum_c q_c L(p, c), Var = sum_c q_c (L(p, c) - E)^2
        (with q = p: the entropy of the clipped prediction); the classes are the columns, in the
        order of options.classes
    """
    return over_classes(
        log_loss, "value", "probabilities", predictions, options, convention, q, sample_weight, _log_loss_table
    )


def _log_loss_table(predictions: Array, options: Mapping[str, Any], convention: Convention, /) -> Any:
    """-log(clip(p_c, eps, 1 - eps)) for every class (column) c at once."""
    probabilities = predictions.reshape(-1, 1) if predictions.ndim == 1 else predictions
    if probabilities.shape[1] == 1:
        probabilities = np.concatenate([1 - probabilities, probabilities], axis=1)
    eps = np.finfo(probabilities.dtype).eps
    return -np.log(np.clip(probabilities, eps, 1 - eps)), None


@register("brier_score", aliases=("brier_score_loss", "brier"), whole_batch=True, separable_with=("classes",))
def brier_score(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    classes: ClassValues = None,
    scale_by_half: Annotated[
        bool | None, Doc("halve the score; default (null): halve when there are fewer than 3 classes")
    ] = None,
) -> LossValues:
    """Brier score with scikit-learn's conventions.

    Formula:
        sum_c ([y = c] - p_c)^2, halved for binary problems (scale_by_half)

    Shapes:
        predictions: (N,) probability of the greater class, or (N, C) probabilities; labels: class values (N,).
        per_sample: (N,).

    Follows:
        sklearn/metrics/_classification.py brier_score_loss.
    """
    one_hot, probabilities = _one_hot(predictions, labels, classes)
    values: NDArray[np.floating] = ((one_hot - probabilities) ** 2).sum(axis=1)
    halve = probabilities.shape[1] < 3 if scale_by_half is None else scale_by_half
    return LossValues(values * 0.5 if halve else values, weighted_average=True)


@expectation("brier_score")
def brier_score_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected Brier score under a belief q over the classes (default: the probabilities, each row over its sum).

    Formula:
        L(p, c) = h (sum_k p_k^2 - 2 p_c + 1), h = 1/2 when halved; E = sum_c q_c L(p, c),
        Var = sum_c q_c (L(p, c) - E)^2 = 4 h^2 (sum_c q_c p_c^2 - (sum_c q_c p_c)^2)
    """
    return over_classes(brier_score, "value", "probabilities", predictions, options, convention, q, sample_weight)


@register("zero_one", aliases=("zero_one_loss",), class_labels=True)
def zero_one(
    predictions: Array, labels: NDArray[np.intp], convention: Convention, /, *, from_logits: FromLogits = False
) -> LossValues:
    """Zero-one loss: 1 where the predicted class is not the label, else 0; 1 - mean is the accuracy.

    Formula:
        1 - [argmax_c p_c = y] over (N, C) scores (the first of equal maxima); one binary column:
        1 - [(p >= 0.5, or x >= 0 with from_logits) = y]
        mean: sum(w l) / sum(w) (np.average) under both conventions

    Shapes:
        predictions: probabilities (logits with from_logits), (N,) or (N, 1) for one binary column, or (N, C);
        labels: class indices (N,) (0 or 1 for one column; (N, 1) also).
        per_sample: (N,).

    Follows:
        sklearn/metrics/_classification.py zero_one_loss (normalize=True) of the predicted classes.
    """
    if predictions.ndim not in (1, 2):
        raise LossInputError(
            "predictions", f"must be (N,), (N, 1) or (N, C) class scores, got shape {list(predictions.shape)}"
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != predictions.shape[:1]:
        raise LossInputError("labels", f"shape {list(labels.shape)} should be [{predictions.shape[0]}]")
    _check_probabilities(predictions, from_logits)
    column = binary_column(predictions)
    check_class_indices(labels, 2 if column else predictions.shape[1], None)
    if column:
        scores = predictions.reshape(-1)
        predicted = (scores >= (0.0 if from_logits else 0.5)).astype(np.intp)
    else:
        predicted = predictions.argmax(axis=1)
    return LossValues((predicted != labels).astype(predictions.dtype), weighted_average=True)


@expectation("zero_one")
def zero_one_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected zero-one loss: the probability, under a belief q, that the predicted class is wrong.

    Formula:
        k = the predicted class (argmax, or the threshold for one column); L(p, c) = 1 - [k = c]
        E = 1 - q_k, Var = q_k (1 - q_k); q defaults to p (each row over its sum), softmax or sigmoid of logits
    """
    return over_classes(
        zero_one, "decision", "from_logits", predictions, options, convention, q, sample_weight, _zero_one_table
    )


def _zero_one_table(predictions: Array, options: Mapping[str, Any], convention: Convention, /) -> Any:
    """1 - [k = c] for every class c at once, k the predicted class."""
    if binary_column(predictions):
        k = (predictions.reshape(-1) >= (0.0 if options.get("from_logits") else 0.5)).astype(np.intp)
        classes = 2
    else:
        k, classes = predictions.argmax(axis=1), predictions.shape[1]
    return (k[:, None] != np.arange(classes)[None, :]).astype(predictions.dtype), None


def _check_class_values(values: Array, field: str) -> None:
    """scikit-learn's type_of_target refuses non-integral values ("continuous"); beyond the
    integers the dtype holds exactly, two different labels could compare equal."""
    fractional = values != np.floor(values)
    if fractional.any():
        index = tuple(int(i) for i in np.argwhere(fractional)[0])
        raise LossInputError(field, f"class labels must be integers, got {values[index].item()!r}", index)
    bits = np.finfo(values.dtype).nmant + 1  # 2^bits + 1 rounds to 2^bits: from there on, ambiguous
    huge = np.abs(values) >= 2.0**bits
    if huge.any():
        index = tuple(int(i) for i in np.argwhere(huge)[0])
        raise LossInputError(
            field, f"{values[index].item()!r} is beyond the integers {values.dtype} tells apart (below 2^{bits})", index
        )


@register("hamming", aliases=("hamming_loss",))
def hamming(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Hamming loss with scikit-learn's conventions: the fraction of labels predicted wrong.

    Formula:
        single labels (N,) or (N, 1): [p != y];  0/1 indicator arrays (N, K), K >= 2: mean_k [p_k != y_k]
        mean: sum(w l) / sum(w) (np.average) under both conventions

    Shapes:
        predictions: predicted class values (N,) or (N, 1), or 0/1 label indicators (N, K); labels: the same shape.
        per_sample: (N,).

    Follows:
        sklearn/metrics/_classification.py hamming_loss (targets typed by _check_targets).
    """
    check_same_shape(predictions, labels)
    if predictions.ndim not in (1, 2):
        raise LossInputError(
            "predictions", f"must be (N,) class values or (N, K) indicators, got shape {list(predictions.shape)}"
        )
    for field, values in (("labels", labels), ("predictions", predictions)):
        _check_class_values(values, field)
        if values.ndim == 2 and values.shape[1] > 1:
            check_values_in(values, (0.0, 1.0), field, "multilabel indicators")
    wrong = predictions != labels
    if wrong.ndim == 1:
        return LossValues(wrong.astype(predictions.dtype), weighted_average=True)
    fraction = np.count_nonzero(wrong, axis=1).astype(predictions.dtype) / predictions.dtype.type(wrong.shape[1])
    return LossValues(fraction, weighted_average=True)
