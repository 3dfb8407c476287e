"""Small shape rules that several losses share."""

from __future__ import annotations

import numpy as np

from service.engine.checks import check_class_vector
from service.engine.conventions import Convention
from service.engine.reduction import Array


def per_sample_mean(elementwise: Array, convention: Convention) -> Array:
    """Keras averages element-wise losses over the last axis; PyTorch keeps every element.

    A 1-D batch (N,) is read as N samples of one output, as Keras reads shape (N, 1), so each
    sample keeps its own loss instead of collapsing the batch to one number.
    """
    if convention == "torch" or elementwise.ndim == 1:
        return elementwise
    mean: Array = elementwise.mean(axis=-1)
    return mean


def class_weights(values: list[float] | None, num_classes: int, option: str, like: Array) -> Array | None:
    """A per-class weight vector as an array of the working dtype, after its length is checked."""
    check_class_vector(values, num_classes, option)
    return None if values is None else np.asarray(values, dtype=like.dtype)


def along_axis(vector: Array, axis: int, ndim: int) -> Array:
    """Reshape a per-class vector so it broadcasts along `axis` of an `ndim`-array."""
    shape = [1] * ndim
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)
