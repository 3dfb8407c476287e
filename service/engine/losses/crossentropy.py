"""The cross-entropy family: binary, categorical and sparse categorical.

Keras source followed: keras/src/losses/losses.py (binary_crossentropy, categorical_crossentropy,
sparse_categorical_crossentropy) and keras/src/backend/*/nn.py. PyTorch source followed:
torch/nn/functional.py (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy)
and aten/src/ATen/native/Loss.cpp, LossNLL.cpp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import (
    check_in_range,
    check_min_rank,
    check_same_shape,
)
from service.engine.conventions import TORCH_LOG_CLAMP, Convention, class_axis
from service.engine.errors import LossInputError
from service.engine.expectation import ExpectedLoss, Table, over_classes
from service.engine.losses._shared import along_axis, class_weights, per_sample_mean
from service.engine.losses._targets import (
    ClassWeight,
    FromLogits,
    IgnoreIndex,
    LabelSmoothing,
    Smoothing,
    _check_probabilities,
    _class_log_probabilities,
    _class_targets,
    _ignores_a_class,
    _target_losses,
)
from service.engine.numerics import (
    keras_clip,
    log_sigmoid,
    nll_of_logits,
)
from service.engine.options import Aliases, Doc, NonNegative, OnlyUnder, Probability
from service.engine.reduction import Array, LossValues
from service.engine.registry import expectation, register


def binary_log_loss(labels: Array, log_p: Array, log_q: Array, complement: Array | None = None) -> Array:
    """-(y log p + (1 - y) log(1 - p)) from the two logs, clipped as each convention clips them:
    Keras from clip(p, 1e-7, 1 - 1e-7); XGBoost's `logloss` from max(p, 1e-16), max(1 - p, 1e-16).
    `complement`: 1 - y as the library computes it (LightGBM's cross_entropy: in float32)."""
    return -(labels * log_p + ((1.0 - labels) if complement is None else complement) * log_q)


@register("binary_crossentropy", aliases=("bce", "binary_cross_entropy"))
def binary_crossentropy(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    from_logits: FromLogits = False,
    label_smoothing: Annotated[
        float, Probability, OnlyUnder("keras"), Doc("squeeze targets towards 0.5: y(1 - ls) + ls/2")
    ] = 0.0,
    pos_weight: Annotated[
        float | list[float] | None,
        NonNegative,
        OnlyUnder("torch"),
        Doc("weight of positive targets per output, or one for all, broadcast over the last axis (BCEWithLogitsLoss)"),
    ] = None,
    weight: Annotated[
        float | list[float] | None,
        NonNegative,
        OnlyUnder("torch"),
        Doc("rescaling weight per output, or one for all, broadcast over the last axis (BCELoss `weight`)"),
    ] = None,
) -> LossValues:
    """Binary cross-entropy between probabilities (or logits) and targets in [0, 1].

    Formula:
        keras, probabilities: mean_last(-(y log p' + (1 - y) log(1 - p'))), p' = clip(p, 1e-7, 1 - 1e-7)
        keras, logits:        mean_last(max(x, 0) - x y + log1p(exp(-|x|)))
        with label_smoothing: y <- y (1 - ls) + ls / 2
        torch, probabilities: w ((y - 1) max(log1p(-p), -100) - y max(log p, -100))
        torch, logits:        w ((1 - y) x - (1 + (pos_weight - 1) y) log_sigmoid(x))

    Shapes:
        predictions: (N,) or (N, ..., L); labels: the same shape.
        per_sample: keras (N, ...) (mean over the last axis; (N,) stays (N,)); torch as predictions.

    Follows:
        keras/src/losses/losses.py binary_crossentropy with the TensorFlow backend's
        sigmoid_cross_entropy_with_logits; torch/nn/functional.py binary_cross_entropy and
        binary_cross_entropy_with_logits (aten/src/ATen/native/Loss.cpp).
    """
    check_same_shape(predictions, labels)
    check_in_range(labels, "labels", 0.0, 1.0, "binary targets")
    _check_probabilities(predictions, from_logits)
    outputs = predictions.shape[-1]
    # One number broadcasts as a one-element vector does (PyTorch takes a 0-d tensor alike).
    pos_weight = [pos_weight] if isinstance(pos_weight, int | float) else pos_weight
    weight = [weight] if isinstance(weight, int | float) else weight
    for option, vector in (("pos_weight", pos_weight), ("weight", weight)):
        if vector is not None and len(vector) not in (1, outputs):
            raise LossInputError(f"options.{option}", f"needs 1 or {outputs} values (the last axis), got {len(vector)}")
    if pos_weight is not None and not from_logits:
        raise LossInputError("options.pos_weight", "applies only with from_logits=true, as in BCEWithLogitsLoss")

    x, y = predictions, labels
    if convention == "keras":
        if label_smoothing:
            y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
        if from_logits:
            elementwise: Array = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
        else:
            p = keras_clip(x)
            elementwise = binary_log_loss(y, np.log(p), np.log(1.0 - p))
        return LossValues(per_sample_mean(elementwise, convention))

    if from_logits:
        log_weight = 1.0 if pos_weight is None else (np.asarray(pos_weight, x.dtype) - 1.0) * y + 1.0
        elementwise = (1.0 - y) * x - log_weight * log_sigmoid(x)
    else:
        with np.errstate(divide="ignore"):
            elementwise = (y - 1.0) * np.maximum(np.log1p(-x), TORCH_LOG_CLAMP) - y * np.maximum(
                np.log(x), TORCH_LOG_CLAMP
            )
    if weight is not None:
        elementwise = elementwise * np.asarray(weight, x.dtype)
    return LossValues(elementwise)


@expectation("binary_crossentropy")
def binary_crossentropy_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected binary cross-entropy of one binary column under a belief q = P(y = 1).

    Formula:
        L(p, c): the loss above with the target y = c (smoothing, clipping or clamping, weights as configured)
        E = q L(p, 1) + (1 - q) L(p, 0), Var = q (1 - q) (L(p, 1) - L(p, 0))^2
        q defaults to p, or sigmoid(x) with from_logits
    """
    return over_classes(
        binary_crossentropy, "binary", "from_logits", predictions, options, convention, q, sample_weight
    )


@register("categorical_crossentropy", aliases=("cce", "categorical_cross_entropy"))
def categorical_crossentropy(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    from_logits: FromLogits = False,
    label_smoothing: LabelSmoothing = 0.0,
    class_weight: ClassWeight = None,
) -> LossValues:
    """Categorical cross-entropy between predicted class distributions and one-hot or soft targets.

    Formula:
        y <- y (1 - ls) + ls / C
        keras: -sum_c y_c log p'_c, p' = clip(p / sum(p), 1e-7, 1 - 1e-7), or log_softmax(x);
               class_weight scales each sample by the weight of its argmax class (fit()'s rule)
        torch: -sum_c w_c y_c log_softmax(x)_c; from probabilities log p is clamped at -100;
               the mean divides by N even with class weights (probability targets)

    Shapes:
        predictions: keras (N, ..., C), torch (N, C, ...); labels: the same shape.
        per_sample: the predictions' shape without the class axis.

    Follows:
        keras/src/losses/losses.py categorical_crossentropy and keras/src/backend/numpy/nn.py;
        torch/nn/functional.py cross_entropy with class-probability targets
        (aten/src/ATen/native/LossNLL.cpp cross_entropy_loss_prob_target).
    """
    check_same_shape(predictions, labels)
    check_min_rank(predictions, 2, "predictions", "a batch axis and a class axis")
    check_in_range(labels, "labels", 0.0, 1.0, "target probabilities")
    _check_probabilities(predictions, from_logits)
    axis = class_axis(convention)
    num_classes = predictions.shape[axis]
    weights = class_weights(class_weight, num_classes, "class_weight", predictions)
    targets = labels * (1.0 - label_smoothing) + label_smoothing / num_classes if label_smoothing else labels
    log_p = _class_log_probabilities(predictions, from_logits, convention, axis)

    if convention == "keras":
        values = -(targets * log_p).sum(axis=axis)
        if weights is not None:
            values = values * weights[labels.argmax(axis=axis)]
        return LossValues(values)
    if weights is not None:
        return LossValues(-(log_p * targets * along_axis(weights, axis, log_p.ndim)).sum(axis=axis))
    return LossValues(-(log_p * targets).sum(axis=axis))


@expectation("categorical_crossentropy")
def categorical_crossentropy_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected categorical cross-entropy under a belief q over the classes, the label one-hot.

    Formula:
        L(p, c): the loss above with the one-hot target e_c (smoothing, class weights as configured)
        E = sum_c q_c L(p, c), Var = sum_c q_c (L(p, c) - E)^2; with q = p and no options, E is the entropy
        of the (clipped) prediction; q defaults to p over its row sum, or softmax(x) with from_logits
    """
    return over_classes(
        categorical_crossentropy,
        "one_hot",
        "from_logits",
        predictions,
        options,
        convention,
        q,
        sample_weight,
        _cross_entropy_table(sparse=False),
    )


def _cross_entropy_table(*, sparse: bool) -> Table:
    """-log p'_c for every class c at once, weighted as each convention weighs the label's class
    (the per-class values the losses give); not with label smoothing or an ignored class."""

    def table(predictions: Array, options: Mapping[str, Any], convention: Convention, /) -> Any:
        num_classes = predictions.shape[1]
        if options.get("label_smoothing") or (sparse and _ignores_a_class(options, convention, num_classes)):
            return None
        weights = class_weights(options.get("class_weight"), num_classes, "class_weight", predictions)
        log_p = _class_log_probabilities(predictions, bool(options.get("from_logits")), convention, 1)
        if weights is None:
            return -log_p, None
        if convention == "keras":
            return -log_p * weights, None
        if sparse:  # CrossEntropyLoss divides by the summed weight of the labels' classes
            return weights * -log_p, np.broadcast_to(weights, log_p.shape)
        return -(log_p * weights), None

    return table


@register(
    "sparse_categorical_crossentropy",
    aliases=("scce", "sparse_categorical_cross_entropy", "cross_entropy"),
    class_labels=True,
)
def sparse_categorical_crossentropy(
    predictions: Array,
    labels: NDArray[np.intp],
    convention: Convention,
    /,
    *,
    from_logits: FromLogits = False,
    ignore_index: Annotated[IgnoreIndex, Aliases(("ignore_class",))] = None,
    label_smoothing: LabelSmoothing = 0.0,
    class_weight: ClassWeight = None,
) -> LossValues:
    """Cross-entropy between predicted class distributions and integer class labels.

    Formula:
        nll = -log p'_y with p' as in categorical_crossentropy (clip / log_softmax / clamped log)
        keras: (1 - ls) nll + (ls / C) sum_c -log p'_c, times class_weight[y]; ignored targets
               are masked out of the mean (Keras's ignore_class mask)
        torch: (1 - ls) w_y nll + (ls / C) sum_c w_c (-log p_c); mean = sum / sum of w_y over
               non-ignored targets (CrossEntropyLoss); an all-ignored batch is an error, not NaN

    Shapes:
        predictions: keras (N, ..., C), torch (N, C, ...); labels: integers, predictions' shape
        without the class axis (keras also takes a trailing axis of 1).
        per_sample: the labels' shape.

    Follows:
        keras/src/losses/losses.py sparse_categorical_crossentropy; torch/nn/functional.py
        cross_entropy (aten/src/ATen/native/LossNLL.cpp cross_entropy_loss_label_smoothing, nll_loss).
    """
    axis, num_classes, targets, mask = _class_targets(predictions, labels, convention, ignore_index)
    _check_probabilities(predictions, from_logits)
    weights = class_weights(class_weight, num_classes, "class_weight", predictions)
    if mask is not None and convention == "keras" and not from_logits:
        # Keras zeroes ignored rows before the log; only their (discarded) values change.
        predictions = np.where(np.expand_dims(mask, axis), predictions, 1.0)

    if from_logits and not label_smoothing:
        # The common case takes the fused kernel; it never builds the log-probability matrix.
        last = predictions if axis % predictions.ndim == predictions.ndim - 1 else np.moveaxis(predictions, axis, -1)
        picked = nll_of_logits(last.reshape(-1, num_classes), targets.reshape(-1)).reshape(targets.shape)
        return _target_losses(picked, targets, mask, weights, convention)
    log_p = _class_log_probabilities(predictions, from_logits, convention, axis)
    picked = -np.take_along_axis(log_p, np.expand_dims(targets, axis), axis=axis).squeeze(axis)
    smooth = None
    if label_smoothing:
        # sum_c -log p_c; PyTorch weights each class's term, Keras weights the sample afterwards.
        weighted = (
            log_p * along_axis(weights, axis, log_p.ndim) if weights is not None and convention == "torch" else log_p
        )
        smooth = Smoothing(label_smoothing, -weighted.sum(axis=axis), num_classes)
    return _target_losses(picked, targets, mask, weights, convention, smooth)


@expectation("sparse_categorical_crossentropy")
def sparse_categorical_crossentropy_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected sparse categorical cross-entropy under a belief q over the classes.

    Formula:
        s_c, d_c: the sample's share of the sum and of the denominator with the label c (torch with
        class weights: s_c = w_c nll_c (smoothed), d_c = w_c; otherwise d_c = 1); a class equal to
        ignore_index gives s_c = d_c = 0
        E[s] = sum_c q_c s_c, Var[s] = sum_c q_c (s_c - E[s])^2, and likewise E[d], Var[d], Cov(s, d)
        q defaults to p over its row sum, or softmax(x) with from_logits
    """
    return over_classes(
        sparse_categorical_crossentropy,
        "index",
        "from_logits",
        predictions,
        options,
        convention,
        q,
        sample_weight,
        _cross_entropy_table(sparse=True),
    )
