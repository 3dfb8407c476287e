"""Regression losses: element-wise errors between predictions and real-valued targets.

Keras source followed: keras/src/losses/losses.py; PyTorch: torch/nn/functional.py; scikit-learn
(pinball): sklearn/metrics/_regression.py, whose mean is np.average under either convention.
Keras averages each sample's errors over the last axis; PyTorch's reduction='none' keeps them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import numpy as np

from service.engine.checks import check_min_rank, check_same_shape
from service.engine.conventions import KERAS_EPSILON, Convention
from service.engine.losses._shared import elementwise_loss
from service.engine.numerics import softplus
from service.engine.options import Doc, NonNegative, Positive, Probability
from service.engine.reduction import Array, LossValues
from service.engine.registry import register


def _squared_error(p: Array, y: Array) -> Array:
    error = y - p
    return np.multiply(error, error, out=error)


@register("mean_squared_error", aliases=("mse",))
def mean_squared_error(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Mean squared error.

    Formula:
        keras: mean_last((y - p)^2); torch: (p - y)^2 per element

    Shapes:
        predictions: (N, ...); labels: the same shape.
        per_sample: keras (N, ...) without the last axis ((N,) stays (N,)); torch as predictions.

    Follows:
        keras/src/losses/losses.py mean_squared_error; torch/nn/functional.py mse_loss.
    """
    return LossValues(elementwise_loss(predictions, labels, convention, _squared_error))


@register("mean_absolute_error", aliases=("mae", "l1"))
def mean_absolute_error(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Mean absolute error.

    Formula:
        keras: mean_last(|y - p|); torch: |p - y| per element

    Shapes:
        predictions: (N, ...); labels: the same shape.
        per_sample: keras (N, ...) without the last axis ((N,) stays (N,)); torch as predictions.

    Follows:
        keras/src/losses/losses.py mean_absolute_error; torch/nn/functional.py l1_loss.
    """
    return LossValues(elementwise_loss(predictions, labels, convention, lambda p, y: np.abs(y - p)))


@register("mean_absolute_percentage_error", aliases=("mape",))
def mean_absolute_percentage_error(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Mean absolute percentage error.

    Formula:
        100 * mean_last(|y - p| / max(|y|, 1e-7)); torch: per element (PyTorch has no MAPE)

    Shapes:
        predictions: (N, ...); labels: the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        keras/src/losses/losses.py mean_absolute_percentage_error.
    """
    return LossValues(100.0 * absolute_percentage_errors(predictions, labels, convention, KERAS_EPSILON))


def absolute_percentage_errors(predictions: Array, labels: Array, convention: Convention, floor: float | None) -> Array:
    """|y - p| / max(|y|, floor) (Keras, floor 1e-7), or |(y - p) / y| without a floor (XGBoost)."""
    if floor is None:
        return elementwise_loss(predictions, labels, convention, lambda p, y: np.abs((y - p) / y))
    return elementwise_loss(
        predictions, labels, convention, lambda p, y: np.abs((y - p) / np.maximum(np.abs(y), floor))
    )


@register("mean_squared_logarithmic_error", aliases=("msle",))
def mean_squared_logarithmic_error(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Mean squared logarithmic error; values below 1e-7 are raised to 1e-7, as Keras does.

    Formula:
        mean_last((log(max(p, 1e-7) + 1) - log(max(y, 1e-7) + 1))^2); torch: per element

    Shapes:
        predictions: (N, ...); labels: the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        keras/src/losses/losses.py mean_squared_logarithmic_error.
    """
    return LossValues(squared_log_errors(predictions, labels, convention, _keras_log_plus_one))


def _keras_log_plus_one(x: Array) -> Array:
    return np.log(np.maximum(x, KERAS_EPSILON) + 1.0)


def squared_log_errors(
    predictions: Array, labels: Array, convention: Convention, log_plus_one: Callable[[Array], Array]
) -> Array:
    """(log(p + 1) - log(y + 1))^2 with each convention's log(x + 1): Keras raises x to 1e-7 and
    adds 1 before the log; XGBoost's `rmsle` takes log1p as is."""

    def formula(p: Array, y: Array) -> Array:
        return np.square(log_plus_one(p) - log_plus_one(y))

    return elementwise_loss(predictions, labels, convention, formula)


@register("huber", aliases=("huber_loss",))
def huber(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    delta: Annotated[float, Positive, Doc("where the loss turns from quadratic to linear")] = 1.0,
) -> LossValues:
    """Huber loss: quadratic for small errors, linear beyond `delta`.

    Formula:
        e = p - y
        keras: mean_last(0.5 e^2 if |e| <= delta else delta |e| - 0.5 delta^2)
        torch: 0.5 e^2 if |e| < delta else delta (|e| - 0.5 delta), per element

    Shapes:
        predictions: (N, ...); labels: the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        keras/src/losses/losses.py huber; torch/nn/functional.py huber_loss.
    """

    def keras_form(p: Array, y: Array) -> Array:
        error = np.abs(p - y)
        return np.where(error <= delta, 0.5 * np.square(error), delta * error - 0.5 * delta**2)

    def torch_form(p: Array, y: Array) -> Array:
        error = np.abs(p - y)
        return np.where(error < delta, 0.5 * error * error, delta * (error - 0.5 * delta))

    formula = keras_form if convention == "keras" else torch_form
    return LossValues(elementwise_loss(predictions, labels, convention, formula))


@register("smooth_l1", aliases=("smooth_l1_loss",))
def smooth_l1(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    beta: Annotated[float, NonNegative, Doc("width of the quadratic zone; 0 gives the L1 loss")] = 1.0,
) -> LossValues:
    """Smooth L1 loss (PyTorch): Huber divided by beta.

    Formula:
        z = |p - y|; 0.5 z^2 / beta if z < beta else z - 0.5 beta (per element; keras: mean_last)

    Shapes:
        predictions: (N, ...); labels: the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        torch/nn/functional.py smooth_l1_loss (aten/src/ATen/native/cpu/BinaryOpsKernel.cpp).
    """

    def formula(p: Array, y: Array) -> Array:
        z = np.abs(p - y)
        if beta == 0:
            return z
        return np.where(z < beta, 0.5 * z * z / beta, z - 0.5 * beta)

    return LossValues(elementwise_loss(predictions, labels, convention, formula))


@register("log_cosh", aliases=("logcosh",))
def log_cosh(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Logarithm of the hyperbolic cosine of the error, computed without overflow.

    Formula:
        x = p - y; log(cosh(x)) = x + softplus(-2x) - log(2); keras: mean_last; torch: per element

    Shapes:
        predictions: (N, ...); labels: the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        keras/src/losses/losses.py log_cosh (the softplus form keeps cosh from overflowing).
    """

    def formula(p: Array, y: Array) -> Array:
        x = p - y
        log_cosh_x: Array = x + softplus(x * -2.0) - p.dtype.type(np.log(2.0))
        return log_cosh_x

    return LossValues(elementwise_loss(predictions, labels, convention, formula))


@register("cosine_similarity", aliases=("cosine",))
def cosine_similarity(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Negative cosine similarity between each prediction and its target vector.

    Formula:
        keras: -sum_last(l2n(y) l2n(p)), l2n(x) = x / sqrt(max(sum(x^2), 1e-14)) (a zero vector gives 0)
        torch: -sum_last((p / max(||p||, 1e-8)) (y / max(||y||, 1e-8))), i.e. -F.cosine_similarity

    Shapes:
        predictions: (N, ..., D); labels: the same shape.
        per_sample: (N, ...).

    Follows:
        keras/src/losses/losses.py cosine_similarity with keras/src/ops/nn.py normalize;
        torch/nn/functional.py cosine_similarity (aten/src/ATen/native/Distance.cpp).
    """
    check_same_shape(predictions, labels)
    check_min_rank(predictions, 2, "predictions", "a batch axis and a vector axis")
    if convention == "keras":

        def normalise(x: Array) -> Array:
            inverse_norm: Array = 1.0 / np.sqrt(np.maximum(np.square(x).sum(axis=-1, keepdims=True), KERAS_EPSILON**2))
            return x * inverse_norm

        return LossValues(-(normalise(labels) * normalise(predictions)).sum(axis=-1))

    def unit(x: Array) -> Array:
        norm: Array = np.maximum(np.sqrt(np.square(x).sum(axis=-1, keepdims=True)), 1e-8)
        return x / norm

    return LossValues(-(unit(predictions) * unit(labels)).sum(axis=-1))


@register("pinball", aliases=("mean_pinball_loss", "pinball_loss"))
def pinball(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    alpha: Annotated[float, Probability, Doc("the quantile the predictions estimate (scikit-learn's `alpha`)")] = 0.5,
) -> LossValues:
    """Pinball (quantile) loss with scikit-learn's conventions; alpha = 0.5 gives half the absolute error.

    Formula:
        e = y - p; alpha e if e >= 0 else (alpha - 1) e
        keras: mean_last; torch: per element; mean: sum(w l) / sum(w) (np.average) under both

    Shapes:
        predictions: (N, ...); labels: the same shape.
        per_sample: keras (N, ...) without the last axis ((N,) stays (N,)); torch as predictions.

    Follows:
        sklearn/metrics/_regression.py mean_pinball_loss (outputs averaged uniformly, as its
        multioutput='uniform_average').
    """
    # (alpha - 1) e is -((1 - alpha) e) exactly: scikit-learn's two-term form, one term at a time.
    negative_slope = -(1.0 - alpha)

    def formula(p: Array, y: Array) -> Array:
        error = y - p
        slope = np.where(error >= 0, p.dtype.type(alpha), p.dtype.type(negative_slope))
        return np.multiply(error, slope, out=error)

    return LossValues(elementwise_loss(predictions, labels, convention, formula), weighted_average=True)
