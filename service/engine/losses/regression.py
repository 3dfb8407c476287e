"""Regression losses: element-wise errors between predictions and real-valued targets.

Keras source followed: keras/src/losses/losses.py; PyTorch: torch/nn/functional.py.
Keras averages each sample's errors over the last axis; PyTorch's reduction='none' keeps them.
"""

from __future__ import annotations

import numpy as np

from service.engine.conventions import Convention
from service.engine.losses._shared import elementwise_loss
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
