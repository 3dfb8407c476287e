"""The focal family: binary, categorical and sigmoid focal cross-entropy, and Poly-1 cross-entropy.

Sources followed: keras/src/losses/losses.py (binary_focal_crossentropy,
categorical_focal_crossentropy), torchvision/ops/focal_loss.py (sigmoid_focal_loss) and
optax/losses/_classification.py (sigmoid_focal_loss, poly_loss_cross_entropy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np

from service.engine.checks import check_class_vector, check_in_range, check_min_rank, check_same_shape
from service.engine.conventions import Convention, class_axis
from service.engine.expectation import ExpectedLoss, over_classes
from service.engine.losses._shared import along_axis, per_sample_mean
from service.engine.losses._targets import FromLogits, LabelSmoothing, _check_probabilities
from service.engine.numerics import keras_clip, log_sigmoid, log_softmax, sigmoid
from service.engine.options import Doc, NonNegative, Probability
from service.engine.reduction import Array, LossValues
from service.engine.registry import expectation, register

Gamma = Annotated[float, NonNegative, Doc("focusing parameter: 0 gives the plain cross-entropy")]


@register("binary_focal_crossentropy", aliases=("binary_focal",))
def binary_focal_crossentropy(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    gamma: Gamma = 2.0,
    alpha: Annotated[float, Probability, Doc("weight of class 1 when apply_class_balancing")] = 0.25,
    apply_class_balancing: Annotated[bool, Doc("weight targets by alpha (class 1) and 1 - alpha (class 0)")] = False,
    from_logits: FromLogits = False,
    label_smoothing: Annotated[float, Probability, Doc("squeeze targets towards 0.5: y(1 - ls) + ls/2")] = 0.0,
) -> LossValues:
    """Binary focal cross-entropy (Lin et al. 2017) in Keras's form.

    Formula:
        y <- y (1 - ls) + ls / 2; p = sigmoid(x) if from_logits
        bce = -(y log p' + (1 - y) log(1 - p')), p' = clip(p, 1e-7, 1 - 1e-7)
        p_t = y p + (1 - y)(1 - p); loss = mean_last((1 - p_t)^gamma bce [* (y alpha + (1 - y)(1 - alpha))])

    Shapes:
        predictions: (N,) or (N, ..., L); labels: the same shape.
        per_sample: keras (N, ...) without the last axis ((N,) stays (N,)); torch as predictions.

    Follows:
        keras/src/losses/losses.py binary_focal_crossentropy.
    """
    check_same_shape(predictions, labels)
    check_in_range(labels, "labels", 0.0, 1.0, "binary targets")
    _check_probabilities(predictions, from_logits)
    y = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing if label_smoothing else labels
    p = sigmoid(predictions) if from_logits else predictions
    clipped = keras_clip(p)
    bce = -(y * np.log(clipped) + (1.0 - y) * np.log(1.0 - clipped))
    p_t = y * p + (1 - y) * (1 - p)
    focal = np.power(1.0 - p_t, gamma) * bce
    if apply_class_balancing:
        focal = (y * alpha + (1 - y) * (1 - alpha)) * focal
    return LossValues(per_sample_mean(focal, convention))


@expectation("binary_focal_crossentropy")
def binary_focal_crossentropy_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected binary focal cross-entropy of one binary column under a belief q = P(y = 1).

    Formula:
        L(p, c): the loss above with the target y = c; E = q L(p, 1) + (1 - q) L(p, 0),
        Var = q (1 - q) (L(p, 1) - L(p, 0))^2; q defaults to p, or sigmoid(x) with from_logits
    """
    return over_classes(
        binary_focal_crossentropy, "binary", "from_logits", predictions, options, convention, q, sample_weight
    )


@register("categorical_focal_crossentropy", aliases=("categorical_focal",))
def categorical_focal_crossentropy(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    alpha: Annotated[float | list[float], NonNegative, Doc("balancing weight: one number, or one per class")] = 0.25,
    gamma: Gamma = 2.0,
    from_logits: FromLogits = False,
    label_smoothing: LabelSmoothing = 0.0,
) -> LossValues:
    """Categorical focal cross-entropy (Keras) for one-hot or soft targets.

    Formula:
        y <- y (1 - ls) + ls / C; p = softmax(x) if from_logits; p' = clip(p / sum(p), 1e-7, 1 - 1e-7)
        sum_c alpha_c (1 - p'_c)^gamma (-y_c log p'_c)

    Shapes:
        predictions: keras (N, ..., C), torch (N, C, ...); labels: the same shape.
        per_sample: the predictions' shape without the class axis.

    Follows:
        keras/src/losses/losses.py categorical_focal_crossentropy.
    """
    check_same_shape(predictions, labels)
    check_min_rank(predictions, 2, "predictions", "a batch axis and a class axis")
    check_in_range(labels, "labels", 0.0, 1.0, "target probabilities")
    _check_probabilities(predictions, from_logits)
    axis = class_axis(convention)
    num_classes = predictions.shape[axis]
    y = labels * (1.0 - label_smoothing) + label_smoothing / num_classes if label_smoothing else labels
    p = np.exp(log_softmax(predictions, axis)) if from_logits else predictions
    output = keras_clip(p / p.sum(axis=axis, keepdims=True))
    if isinstance(alpha, list):
        check_class_vector(alpha, num_classes, "alpha")
        weight: Array | float = along_axis(np.asarray(alpha, dtype=predictions.dtype), axis, predictions.ndim)
    else:
        weight = alpha
    focal = np.power(1.0 - output, gamma) * weight * (-y * np.log(output))
    return LossValues(focal.sum(axis=axis))


@expectation("categorical_focal_crossentropy")
def categorical_focal_crossentropy_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected categorical focal cross-entropy under a belief q over the classes, the label one-hot.

    Formula:
        L(p, c): the loss above with the target e_c; E = sum_c q_c L(p, c), Var = sum_c q_c (L(p, c) - E)^2;
        q defaults to p over its row sum, or softmax(x) with from_logits
    """
    return over_classes(
        categorical_focal_crossentropy, "one_hot", "from_logits", predictions, options, convention, q, sample_weight
    )


@register("sigmoid_focal", aliases=("sigmoid_focal_loss",), reads_logits=True)
def sigmoid_focal(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    alpha: Annotated[float | None, Probability, Doc("weight of positives; null disables balancing")] = 0.25,
    gamma: Gamma = 2.0,
) -> LossValues:
    """Sigmoid focal loss on logits (RetinaNet), as torchvision.ops.sigmoid_focal_loss and Optax.

    Formula:
        p = sigmoid(x); ce = BCEWithLogits(x, y); p_t = p y + (1 - p)(1 - y)
        ce (1 - p_t)^gamma [* (alpha y + (1 - alpha)(1 - y))]

    Shapes:
        predictions: logits (N, ...); labels: targets in [0, 1], the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        torchvision/ops/focal_loss.py sigmoid_focal_loss; optax/losses/_classification.py sigmoid_focal_loss.
    """
    check_same_shape(predictions, labels)
    check_in_range(labels, "labels", 0.0, 1.0, "binary targets")
    p = sigmoid(predictions)
    ce = (1.0 - labels) * predictions - log_sigmoid(predictions)
    p_t = p * labels + (1 - p) * (1 - labels)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * labels + (1 - alpha) * (1 - labels)) * loss
    return LossValues(per_sample_mean(loss, convention))


@expectation("sigmoid_focal")
def sigmoid_focal_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected sigmoid focal loss of one binary column of logits under a belief q = P(y = 1).

    Formula:
        L(x, c): the loss above with the target y = c; E = q L(x, 1) + (1 - q) L(x, 0),
        Var = q (1 - q) (L(x, 1) - L(x, 0))^2; q defaults to sigmoid(x)
    """
    return over_classes(sigmoid_focal, "binary", "logits", predictions, options, convention, q, sample_weight)


@register("poly1_cross_entropy", aliases=("poly1",), reads_logits=True)
def poly1_cross_entropy(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    epsilon: Annotated[float, Doc("coefficient of the first polynomial term (1 - p_t)")] = 2.0,
) -> LossValues:
    """Poly-1 cross-entropy (Leng et al. 2022) on logits with one-hot or soft targets.

    Formula:
        -sum_c y_c log_softmax(x)_c + epsilon sum_c y_c (1 - softmax(x)_c)

    Shapes:
        predictions: logits, keras (N, ..., C), torch (N, C, ...); labels: the same shape.
        per_sample: the predictions' shape without the class axis.

    Follows:
        optax/losses/_classification.py poly_loss_cross_entropy; arXiv:2204.12511.
    """
    check_same_shape(predictions, labels)
    check_min_rank(predictions, 2, "predictions", "a batch axis and a class axis")
    check_in_range(labels, "labels", 0.0, 1.0, "target probabilities")
    axis = class_axis(convention)
    log_p = log_softmax(predictions, axis)
    cross_entropy = -(labels * log_p).sum(axis=axis)
    one_minus_pt = (labels * (1.0 - np.exp(log_p))).sum(axis=axis)
    return LossValues(cross_entropy + epsilon * one_minus_pt)


@expectation("poly1_cross_entropy")
def poly1_cross_entropy_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected Poly-1 cross-entropy under a belief q over the classes, the label one-hot.

    Formula:
        L(x, c) = -log_softmax(x)_c + epsilon (1 - softmax(x)_c); E = sum_c q_c L(x, c),
        Var = sum_c q_c (L(x, c) - E)^2; q defaults to softmax(x)
    """
    return over_classes(poly1_cross_entropy, "one_hot", "logits", predictions, options, convention, q, sample_weight)
