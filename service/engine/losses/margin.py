"""Margin (hinge-type) losses.

Keras source followed: keras/src/losses/losses.py (hinge, squared_hinge, categorical_hinge).
PyTorch: torch/nn/functional.py and aten/src/ATen/native/Loss.cpp, LossMultiMargin.cpp.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import check_class_indices, check_min_rank, check_same_shape, check_values_in
from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.losses._shared import class_weights, elementwise_loss, per_sample_mean
from service.engine.numerics import log_sigmoid
from service.engine.options import Doc, NonNegative, Positive
from service.engine.reduction import Array, LossValues
from service.engine.registry import register

Margin = Annotated[float, Doc("the margin")]
SIGNS = (-1.0, 1.0)


def _hinge_labels(labels: Array) -> Array:
    """Keras: labels that are all 0/1 become -1/+1; otherwise they are used as given (-1/+1)."""
    check_values_in(labels, (-1.0, 0.0, 1.0), "labels", "hinge targets")
    return 2.0 * labels - 1.0 if np.isin(labels, (0.0, 1.0)).all() else labels


@register("hinge")
def hinge(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Hinge loss for -1/+1 targets (0/1 targets are converted, as Keras does).

    Formula:
        mean_last(max(1 - y p, 0)); torch: per element

    Shapes:
        predictions: (N, ...); labels: -1/+1 or 0/1, the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        keras/src/losses/losses.py hinge.
    """
    check_same_shape(predictions, labels)
    y = _hinge_labels(labels)
    return LossValues(elementwise_loss(predictions, y, convention, lambda p, t: np.maximum(1.0 - t * p, 0.0)))


@register("squared_hinge")
def squared_hinge(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Squared hinge loss for -1/+1 targets (0/1 targets are converted, as Keras does).

    Formula:
        mean_last(max(1 - y p, 0)^2); torch: per element

    Shapes:
        predictions: (N, ...); labels: -1/+1 or 0/1, the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        keras/src/losses/losses.py squared_hinge.
    """
    check_same_shape(predictions, labels)
    y = _hinge_labels(labels)
    return LossValues(
        elementwise_loss(predictions, y, convention, lambda p, t: np.square(np.maximum(1.0 - t * p, 0.0)))
    )


@register("categorical_hinge")
def categorical_hinge(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Categorical hinge loss (Keras) for one-hot targets.

    Formula:
        max(max_last((1 - y) p) - sum_last(y p) + 1, 0)

    Shapes:
        predictions: (N, ..., C); labels: one-hot, the same shape.
        per_sample: (N, ...).

    Follows:
        keras/src/losses/losses.py categorical_hinge.
    """
    check_same_shape(predictions, labels)
    check_min_rank(predictions, 2, "predictions", "a batch axis and a class axis")
    positive = (labels * predictions).sum(axis=-1)
    negative = ((1.0 - labels) * predictions).max(axis=-1)
    return LossValues(np.maximum(negative - positive + 1.0, 0.0))


@register("multi_margin", aliases=("multi_margin_loss", "multiclass_hinge"), class_labels=True)
def multi_margin(
    predictions: Array,
    labels: NDArray[np.intp],
    convention: Convention,
    /,
    *,
    p: Annotated[Literal[1, 2], Doc("1 for the hinge, 2 for the squared hinge")] = 1,
    margin: Margin = 1.0,
    weight: Annotated[list[float] | None, NonNegative, Doc("one weight per class, applied by target")] = None,
    form: Annotated[
        Literal["weston_watkins", "crammer_singer"],
        Doc("weston_watkins: PyTorch's sum over wrong classes / C; crammer_singer: the largest violation"),
    ] = "weston_watkins",
) -> LossValues:
    """Multi-class margin loss with integer targets.

    Formula:
        z_i = margin - x_y + x_i for i != y
        weston_watkins (PyTorch MultiMarginLoss): sum_{i != y} w_y max(z_i, 0)^p / C
        crammer_singer: w_y max(max_{i != y} z_i, 0)^p

    Shapes:
        predictions: scores (N, C); labels: integer classes (N,).
        per_sample: (N,).

    Follows:
        torch/nn/functional.py multi_margin_loss (aten/src/ATen/native/LossMultiMargin.cpp);
        Crammer and Singer (2001), as optax.multiclass_hinge_loss.
    """
    if predictions.ndim != 2:
        raise LossInputError("predictions", f"must be (N, C) scores, got shape {list(predictions.shape)}")
    rows, classes = predictions.shape
    if labels.shape != (rows,):
        raise LossInputError("labels", f"shape {list(labels.shape)} should be [{rows}]")
    targets = check_class_indices(labels, classes, None)
    weights = class_weights(weight, classes, "weight", predictions)
    target_scores = predictions[np.arange(rows), targets]
    violations = margin - target_scores[:, None] + predictions
    violations[np.arange(rows), targets] = -np.inf  # the target class never counts against itself
    if form == "crammer_singer":
        worst = np.maximum(violations.max(axis=1), 0.0)
        values = worst if p == 1 else worst * worst
        return LossValues(values if weights is None else values * weights[targets])
    hinged = np.maximum(violations, 0.0)
    terms = hinged if p == 1 else hinged * hinged
    if weights is not None:
        terms = terms * weights[targets][:, None]
    total = np.zeros(rows, dtype=predictions.dtype)
    for column in range(classes):  # ATen adds the classes one after another
        total += terms[:, column]
    return LossValues(total / classes)


def _signs(labels: Array, shape: tuple[int, ...]) -> None:
    if labels.shape != shape:
        raise LossInputError("labels", f"shape {list(labels.shape)} should be {list(shape)}")
    check_values_in(labels, SIGNS, "labels", "targets")


@register("margin_ranking", aliases=("margin_ranking_loss",))
def margin_ranking(
    predictions: Array, labels: Array, convention: Convention, /, *, margin: Annotated[float, Doc("the margin")] = 0.0
) -> LossValues:
    """Margin ranking loss: should the first score rank above the second (y = 1) or below (y = -1)?

    Formula:
        max(0, -y (x1 - x2) + margin)

    Shapes:
        predictions: score pairs (N, ..., 2) = [x1, x2] on the last axis; labels: -1/+1, (N, ...).
        per_sample: (N, ...).

    Follows:
        torch/nn/functional.py margin_ranking_loss (element-wise over x1, x2 and y of any one shape).
    """
    if predictions.ndim < 2 or predictions.shape[-1] != 2:
        raise LossInputError("predictions", f"must be (N, ..., 2) score pairs, got shape {list(predictions.shape)}")
    _signs(labels, predictions.shape[:-1])
    return LossValues(np.maximum(-labels * (predictions[..., 0] - predictions[..., 1]) + margin, 0.0))


@register("hinge_embedding", aliases=("hinge_embedding_loss",))
def hinge_embedding(
    predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = 1.0
) -> LossValues:
    """Hinge embedding loss on distances: similar pairs (y = 1) pay x, dissimilar (y = -1) max(0, margin - x).

    Formula:
        (x if y == 1) + (max(0, margin - x) if y == -1)

    Shapes:
        predictions: distances (N, ...); labels: -1/+1, the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        torch/nn/functional.py hinge_embedding_loss (aten/src/ATen/native/Loss.cpp).
    """
    _signs(labels, predictions.shape)
    zero = predictions.dtype.type(0)
    values = np.where(labels != 1, np.maximum(margin - predictions, 0.0), zero) + np.where(
        labels != -1, predictions, zero
    )
    return LossValues(per_sample_mean(values, convention))


@register("cosine_embedding", aliases=("cosine_embedding_loss",))
def cosine_embedding(
    predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = 0.0
) -> LossValues:
    """Cosine embedding loss: pull similar pairs (y = 1) together, push dissimilar (y = -1) below `margin`.

    Formula:
        cos = <a, b> / sqrt((|a|^2 + 1e-12)(|b|^2 + 1e-12)); 1 - cos if y == 1, max(0, cos - margin) if y == -1

    Shapes:
        predictions: vector pairs (N, 2, D); labels: -1/+1, (N,).
        per_sample: (N,).

    Follows:
        torch/nn/functional.py cosine_embedding_loss (aten/src/ATen/native/Loss.cpp, EPSILON = 1e-12).
    """
    if predictions.ndim != 3 or predictions.shape[1] != 2:
        raise LossInputError("predictions", f"must be (N, 2, D) vector pairs, got shape {list(predictions.shape)}")
    _signs(labels, predictions.shape[:1])
    a, b = predictions[:, 0], predictions[:, 1]
    epsilon = 1e-12
    cos = (a * b).sum(axis=-1) / np.sqrt(((a * a).sum(axis=-1) + epsilon) * ((b * b).sum(axis=-1) + epsilon))
    zero = predictions.dtype.type(0)
    return LossValues(
        np.where(labels == 1, 1.0 - cos, zero) + np.where(labels == -1, np.maximum(cos - margin, 0.0), zero)
    )


def _distance(x: Array, y: Array, p: float, eps: float) -> Array:
    """torch.nn.functional.pairwise_distance: ||x - y + eps||_p over the last axis."""
    difference = np.abs(x - y + eps)
    if p == 2:
        distance: Array = np.sqrt((difference * difference).sum(axis=-1))
        return distance
    if p == 1:
        return difference.sum(axis=-1)  # type: ignore[no-any-return]
    return (difference**p).sum(axis=-1) ** (1.0 / p)  # type: ignore[no-any-return]


@register("triplet_margin", aliases=("triplet_margin_loss",))
def triplet_margin(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = 1.0,
    p: Annotated[float, Positive, Doc("the norm of the distance")] = 2.0,
    eps: Annotated[float, NonNegative, Doc("added to differences before the norm")] = 1e-6,
    swap: Annotated[bool, Doc("use the positive-negative distance when it is smaller (distance swap)")] = False,
) -> LossValues:
    """Triplet margin loss: the anchor should be nearer its positive than its negative by `margin`.

    Formula:
        d(a, b) = ||a - b + eps||_p; max(d(anchor, pos) - d(anchor, neg) + margin, 0)
        swap: d(anchor, neg) <- min(d(anchor, neg), d(pos, neg))

    Shapes:
        predictions: anchors (N, ..., D); labels: (N, 2, ..., D) = [positive, negative] per anchor.
        per_sample: (N, ...), distances taken over the last axis.

    Follows:
        torch/nn/functional.py triplet_margin_loss and pairwise_distance.
    """
    if predictions.ndim < 2:
        raise LossInputError("predictions", f"must be (N, ..., D) anchors, got shape {list(predictions.shape)}")
    expected = (predictions.shape[0], 2, *predictions.shape[1:])
    if labels.shape != expected:
        raise LossInputError("labels", f"shape {list(labels.shape)} should be {list(expected)} ([positive, negative])")
    positive, negative = labels[:, 0], labels[:, 1]
    to_positive = _distance(predictions, positive, p, eps)
    to_negative = _distance(predictions, negative, p, eps)
    if swap:
        to_negative = np.minimum(to_negative, _distance(positive, negative, p, eps))
    return LossValues(np.maximum(margin + to_positive - to_negative, 0.0))


@register("multilabel_soft_margin", aliases=("multilabel_soft_margin_loss",))
def multilabel_soft_margin(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    weight: Annotated[
        float | list[float] | None, NonNegative, Doc("one weight per label, or one for all (PyTorch broadcasts it)")
    ] = None,
) -> LossValues:
    """Multi-label one-versus-all logistic loss, averaged over the labels.

    Formula:
        -sum_c w_c (y_c log_sigmoid(x_c) + (1 - y_c) log_sigmoid(-x_c)) / C

    Shapes:
        predictions: logits (N, ..., C); labels: 0/1, the same shape.
        per_sample: (N, ...), averaged over the last axis.

    Follows:
        torch/nn/functional.py multilabel_soft_margin_loss.
    """
    check_same_shape(predictions, labels)
    check_min_rank(predictions, 2, "predictions", "a batch axis and a label axis")
    classes = predictions.shape[-1]
    loss = -(labels * log_sigmoid(predictions) + (1.0 - labels) * log_sigmoid(-predictions))
    # One number scales every label, as PyTorch's `loss * weight` broadcasts a 0-d tensor.
    weights: Array | None
    if isinstance(weight, int | float):
        weights = np.asarray(weight, predictions.dtype)
    else:
        weights = class_weights(weight, classes, "weight", predictions)
    if weights is not None:
        loss = loss * weights
    return LossValues(loss.sum(axis=-1) / classes)


@register("soft_margin", aliases=("soft_margin_loss",))
def soft_margin(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Two-class logistic loss for -1/+1 targets.

    Formula:
        log(1 + exp(-y x)), evaluated as PyTorch does (log1p(exp(z))) and as z where exp(z) overflows

    Shapes:
        predictions: (N, ...); labels: -1/+1, the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        torch/nn/functional.py soft_margin_loss (aten/src/ATen/native/Loss.cpp).
    """
    _signs(labels, predictions.shape)
    z = -predictions * labels
    with np.errstate(over="ignore"):
        values = np.where(z > np.log(np.finfo(z.dtype).max), z, np.log1p(np.exp(z)))
    return LossValues(per_sample_mean(values, convention))


def _multilabel_targets(labels: NDArray[np.intp], shape: tuple[int, ...]) -> NDArray[np.bool_]:
    """PyTorch's target rows: class indices, then -1 padding to the end. Returns which entries count.

    PyTorch stops reading a row at its first -1 and ignores what follows; a class index after the
    padding is refused here instead of being dropped without a word.
    """
    if labels.shape != shape:
        raise LossInputError("labels", f"shape {list(labels.shape)} should be {list(shape)} (targets padded with -1)")
    classes = shape[1]
    bad = (labels < -1) | (labels >= classes)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise LossInputError(
            "labels", f"target {int(labels[index])} is neither a class in [0, {classes - 1}] nor the padding -1", index
        )
    counted = np.cumprod(labels >= 0, axis=1).astype(bool)  # True up to the first -1 of each row
    after_padding = (labels >= 0) & ~counted
    if after_padding.any():
        index = tuple(int(i) for i in np.argwhere(after_padding)[0])
        raise LossInputError(
            "labels", f"target {int(labels[index])} follows the -1 padding; -1 may only fill the end of a row", index
        )
    return counted


@register("multilabel_margin", aliases=("multilabel_margin_loss",), class_labels=True)
def multilabel_margin(predictions: Array, labels: NDArray[np.intp], convention: Convention, /) -> LossValues:
    """Multi-label hinge loss: every target class should score 1 above every non-target class.

    Formula:
        sum_{j in targets} sum_{i not in targets} max(0, 1 - (x_{y_j} - x_i)) / C
        targets: a row's class indices up to its first -1; a repeated index counts each time (as PyTorch)

    Shapes:
        predictions: scores (N, C); labels: class indices padded with -1 at the end, (N, C).
        per_sample: (N,).

    Follows:
        torch/nn/functional.py multilabel_margin_loss (aten/src/ATen/native/LossMultiLabelMargin.cpp).
    """
    if predictions.ndim != 2:
        raise LossInputError("predictions", f"must be (N, C) scores, got shape {list(predictions.shape)}")
    rows, classes = predictions.shape
    counted = _multilabel_targets(labels, predictions.shape)
    # Padding points at an extra column, dropped after the targets are marked.
    is_target = np.zeros((rows, classes + 1), dtype=bool)
    np.put_along_axis(is_target, np.where(counted, labels, classes), True, axis=1)
    is_target = is_target[:, :classes]
    targets = np.where(counted, labels, 0)
    total = np.zeros(rows, dtype=predictions.dtype)
    zero = predictions.dtype.type(0)
    for slot in range(int(counted.sum(axis=1).max())):  # ATen adds the targets one after another
        target_scores = np.take_along_axis(predictions, targets[:, slot : slot + 1], axis=1)
        hinged = np.where(is_target, zero, np.maximum(1 - target_scores + predictions, zero))
        total += np.where(counted[:, slot], hinged.sum(axis=1), zero)
    return LossValues(total / classes)
