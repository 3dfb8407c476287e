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
        product = np.log(y)
        if product.shape == np.broadcast_shapes(x.shape, y.shape) and product.dtype == np.result_type(x, product):
            np.multiply(x, product, out=product)  # in place: one array of the batch's size, not three
        else:
            product = x * product
        np.copyto(product, 0.0, where=x == 0)
        return product


# Rows are processed in blocks of about this many values (512 KiB in float32), so every
# temporary lives in L2 cache and is allocated once: no 40 MB intermediates, no page faults.
BLOCK_VALUES = 1 << 17
# When a row of logits is at most this many bytes (96 classes in float32, 48 in float64), a block
# is transposed to class-major (C, rows): the max, exp and sum over classes then run down long
# contiguous rows instead of along short ones; the crossover is the same number of bytes in both
# dtypes. Below CLASS_MAJOR_MIN_ROWS rows the transposition costs more than it saves (both
# measured: docs/performance.md).
CLASS_MAJOR_ROW_BYTES = 384
CLASS_MAJOR_MIN_ROWS = 128


def pairwise_class_sum(columns: Array, out: Array) -> Array:
    """Sum over axis 0 of a class-major block, in NumPy's pairwise order for a row of C values.

    `x.sum(axis=-1)` sums each row in NumPy's pairwise order (8 accumulators combined as
    ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the remainder). Repeating that order here keeps
    class-major results bit-identical to the row-major ones (checked for C = 1..128).
    """
    classes = columns.shape[0]
    if classes < 8:
        np.copyto(out, columns[0])
        for k in range(1, classes):
            out += columns[k]
        return out
    full = classes - classes % 8
    lanes = columns[:8]
    if full > 8:
        lanes = lanes.copy()
        for start in range(8, full, 8):
            lanes += columns[start : start + 8]
    pairs = lanes[0::2] + lanes[1::2]  # r0+r1, r2+r3, r4+r5, r6+r7
    quads = pairs[0::2] + pairs[1::2]  # (r0+r1)+(r2+r3), (r4+r5)+(r6+r7)
    np.add(quads[0], quads[1], out=out)
    for k in range(full, classes):
        out += columns[k]
    return out


def nll_of_logits(logits: Array, targets: NDArray[np.intp]) -> Array:
    """-log softmax(x)_t for each row of a (rows, C) array: log(sum(exp(x - max))) - (x_t - max).

    The same value as -log_softmax(x)[t], bit for bit, without building the (rows, C)
    log-probability matrix: only the target's shifted logit and the row's log-sum-exp are needed.
    """
    rows, classes = logits.shape
    if classes * logits.dtype.itemsize <= CLASS_MAJOR_ROW_BYTES and rows >= CLASS_MAJOR_MIN_ROWS:
        return _nll_of_logits_class_major(logits, targets)
    if rows * classes <= BLOCK_VALUES:
        # One block: the same operations without the buffers blocks reuse (a 32 x 10 batch: 9 NumPy
        # calls, not 14), on rows laid out as the blocks' are, so each row sums in the same order.
        # The ufuncs' own reductions, which `max` and `sum` call, without their Python wrappers.
        # Each target read by one flat `take` (row start + class), cheaper than two index arrays.
        shifted = np.subtract(logits, np.maximum.reduce(logits, axis=1, keepdims=True), order="C")
        shifted_target = shifted.ravel().take(np.arange(0, rows * classes, classes) + targets)
        sums: Array = np.add.reduce(np.exp(shifted, out=shifted), axis=1)
        np.subtract(np.log(sums, out=sums), shifted_target, out=sums)
        return sums
    out = np.empty(rows, dtype=logits.dtype)
    block = min(rows, max(1, BLOCK_VALUES // classes))
    positions = np.arange(block)
    total = np.empty(block, dtype=logits.dtype)
    scratch = np.empty((block, classes), dtype=logits.dtype)
    for start in range(0, rows, block):
        n = min(block, rows - start)
        chunk, view = logits[start : start + n], scratch[:n]
        np.subtract(chunk, chunk.max(axis=1, keepdims=True), out=view)
        shifted_target = view[positions[:n], targets[start : start + n]]
        np.exp(view, out=view)
        sums = np.sum(view, axis=1, out=total[:n])
        np.subtract(np.log(sums, out=sums), shifted_target, out=out[start : start + n])
    return out


def _nll_of_logits_class_major(logits: Array, targets: NDArray[np.intp]) -> Array:
    """nll_of_logits with each block transposed to (C, rows), for few classes and many rows."""
    rows, classes = logits.shape
    out = np.empty(rows, dtype=logits.dtype)
    block = min(rows, BLOCK_VALUES // classes)
    columns = np.empty((classes, block), dtype=logits.dtype)
    peak, total, target_shifted = np.empty((3, block), dtype=logits.dtype)
    # Each target logit is read from the row-major chunk by one flat `take` (row start + class):
    # cheaper than indexing the class-major block with two index arrays (docs/performance.md).
    row_starts = np.arange(0, block * classes, classes)
    flat_index = np.empty(block, dtype=np.intp)
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        if stop - start < block:  # the last, shorter block: shrink every buffer once
            n = stop - start
            columns, peak, total, target_shifted = columns[:, :n], peak[:n], total[:n], target_shifted[:n]
            row_starts, flat_index = row_starts[:n], flat_index[:n]
        chunk = logits[start:stop]
        np.copyto(columns, chunk.T)
        np.max(columns, axis=0, out=peak)
        np.subtract(columns, peak, out=columns)
        np.add(row_starts, targets[start:stop], out=flat_index)
        np.take(chunk.ravel(), flat_index, out=target_shifted, mode="clip")
        np.subtract(target_shifted, peak, out=target_shifted)
        np.exp(columns, out=columns)
        sums = pairwise_class_sum(columns, total)
        np.subtract(np.log(sums, out=sums), target_shifted, out=out[start:stop])
    return out
