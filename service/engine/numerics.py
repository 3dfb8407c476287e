"""Numerically stable building blocks, written once and shared by the losses.

Every function preserves the dtype of its input, so float32 mode stays float32 end to end.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from service.engine.conventions import KERAS_EPSILON, TORCH_LOG_CLAMP

Array = NDArray[np.floating]


def log_softmax(logits: Array, axis: int) -> Array:
    """log softmax(x) = (x - max(x)) - log(sum(exp(x - max(x)))).

    Subtracting the maximum keeps exp() in (0, 1], so logits of +-1e4 neither overflow nor
    lose the winning class. This order (TensorFlow's) also matched torch.log_softmax's float32
    results more closely than ATen's x - (max + log(sum)) in a measurement over 8,000 rows.
    """
    shifted: Array = logits - logits.max(axis=axis, keepdims=True)
    log_probabilities: Array = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return log_probabilities


def log_sigmoid(x: Array) -> Array:
    """log sigmoid(x) = -softplus(-x) = min(x, 0) - log1p(exp(-|x|)), exact for large |x|."""
    return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))


def softplus(x: Array) -> Array:
    """softplus(x) = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), never overflows."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def sigmoid(x: Array) -> Array:
    """1 / (1 + exp(-x)), evaluated from exp(-|x|) so that it cannot overflow."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def keras_clip(probabilities: Array) -> Array:
    """Keras clips probabilities to [eps, 1 - eps] (eps = 1e-7) before taking a log."""
    return np.clip(probabilities, KERAS_EPSILON, 1 - KERAS_EPSILON)


def keras_class_log_probabilities(probabilities: Array, axis: int) -> Array:
    """Keras's categorical path: renormalise each row to sum to 1, clip, then log."""
    return np.log(keras_clip(probabilities / probabilities.sum(axis=axis, keepdims=True)))


def torch_clamped_log(probabilities: Array) -> Array:
    """torch.nn.functional.binary_cross_entropy's log, clamped at -100 so log(0) stays finite."""
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(probabilities), TORCH_LOG_CLAMP)


def xlogy(x: Array, y: Array) -> Array:
    """x * log(y) with 0 * log(0) = 0, as torch.xlogy and scipy.special.xlogy define it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, np.zeros_like(x), x * np.log(y))
