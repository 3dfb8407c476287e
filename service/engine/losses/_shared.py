"""Shape rules and evaluation helpers that several losses share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from service.engine.checks import check_class_vector, check_same_shape
from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.numerics import BLOCK_VALUES, pairwise_class_sum
from service.engine.reduction import Array

Formula = Callable[[Array, Array], Array]


def per_sample_mean(elementwise: Array, convention: Convention) -> Array:
    """Keras averages element-wise losses over the last axis; PyTorch keeps every element.

    A 1-D batch (N,) is read as N samples of one output, as Keras reads shape (N, 1), so each
    sample keeps its own loss instead of collapsing the batch to one number.
    """
    if convention == "torch" or elementwise.ndim == 1:
        return elementwise
    if elementwise.shape[-1] == 1:
        return elementwise.reshape(elementwise.shape[:-1])  # the mean of one value is that value
    mean: Array = elementwise.mean(axis=-1)
    return mean


# Row sums transpose a block to class-major only for rows of at most this many bytes (24 values
# in float32, 12 in float64); only a sum runs over the transposed block, so it pays off for
# narrower rows than the cross-entropy kernel's (the crossover measured: docs/performance.md).
ROW_SUM_CLASS_MAJOR_BYTES = 96


def elementwise_loss(predictions: Array, labels: Array, convention: Convention, formula: Formula) -> Array:
    """`per_sample_mean(formula(predictions, labels))`, evaluated in cache-sized row blocks.

    Under keras each block's rows are averaged as soon as they are computed, so no full-size
    temporary is ever built; the row sums repeat NumPy's pairwise order, so the result equals
    `formula(...).mean(axis=-1)` bit for bit.
    """
    check_same_shape(predictions, labels)
    if convention == "torch" or predictions.ndim == 1:
        return formula(predictions, labels)
    width = predictions.shape[-1]
    rows_p = predictions.reshape(-1, width)
    rows_y = labels.reshape(-1, width)
    rows = rows_p.shape[0]
    out = np.empty(rows, dtype=predictions.dtype)
    block = min(rows, max(1, BLOCK_VALUES // max(width, 1)))
    class_major = width * predictions.dtype.itemsize <= ROW_SUM_CLASS_MAJOR_BYTES
    columns = np.empty((width, block), dtype=predictions.dtype) if class_major else None
    for start in range(0, rows, block):
        n = min(block, rows - start)
        values = formula(rows_p[start : start + n], rows_y[start : start + n])
        target = out[start : start + n]
        if columns is not None:
            view = columns[:, :n]
            np.copyto(view, values.T)
            pairwise_class_sum(view, target)
        else:
            np.sum(values, axis=1, out=target)
        target /= width
    return out.reshape(predictions.shape[:-1])


def class_weights(
    values: list[float] | Mapping[Any, float] | None, num_classes: int, option: str, like: Array
) -> Array | None:
    """A per-class weight vector as an array of the working dtype, after its length is checked.

    A mapping {class: weight} is read as Keras's fit() reads `class_weight`: classes left out
    weigh 1; a key that is not a class index of this batch is refused."""
    if values is None:
        return None
    if isinstance(values, Mapping):
        vector = [1.0] * num_classes
        for key, weight in values.items():
            index = int(key) if isinstance(key, int) or (isinstance(key, str) and key.isdigit()) else -1
            if not 0 <= index < num_classes:
                raise LossInputError(
                    f"options.{option}.{key}", f"is not a class index: the predictions have {num_classes} classes"
                )
            vector[index] = weight
        values = vector
    check_class_vector(values, num_classes, option)
    return np.asarray(values, dtype=like.dtype)


def along_axis(vector: Array, axis: int, ndim: int) -> Array:
    """Reshape a per-class vector so it broadcasts along `axis` of an `ndim`-array."""
    shape = [1] * ndim
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)
