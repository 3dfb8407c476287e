"""The fused cross-entropy kernel against the plain formula it replaces, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.engine import compute
from service.engine.numerics import BLOCK_VALUES, log_softmax, nll_of_logits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("rows", "classes"),
    # Row-major below 128 rows, class-major from 128 rows up to 384-byte rows (96 classes in
    # float32, 48 in float64), row-major above; several blocks when rows x classes passes
    # BLOCK_VALUES; every pairwise-sum remainder.
    [(1, 1), (5, 3), (127, 10), (128, 10), (300, 7), (1000, 8), (500, 9), (256, 48), (256, 49),
     (256, 96), (200, 97), (256, 128), (BLOCK_VALUES // 10 + 17, 10), (64, 1000), (3, 17)],
)  # fmt: skip
def test_the_fused_kernel_equals_minus_log_softmax_at_the_target(rows: int, classes: int, dtype: type) -> None:
    rng = np.random.default_rng(rows * 1000 + classes)
    logits = (rng.normal(size=(rows, classes)) * 5).astype(dtype)
    targets = rng.integers(0, classes, rows)
    expected = -log_softmax(logits, axis=1)[np.arange(rows), targets]
    got = nll_of_logits(logits, targets)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("rows", "width"),
    # Class-major row sums up to 96-byte rows (24 values in float32, 12 in float64), row-major
    # above; several blocks when rows x width passes BLOCK_VALUES.
    [(7, 1), (300, 10), (300, 12), (300, 13), (300, 24), (300, 25), (BLOCK_VALUES // 10 + 5, 10), (50, 128)],
)
def test_blocked_row_means_equal_the_plain_mean(rows: int, width: int, dtype: type) -> None:
    rng = np.random.default_rng(rows + width)
    predictions = rng.normal(size=(rows, width)).astype(dtype)
    labels = rng.normal(size=(rows, width)).astype(dtype)
    expected = np.square(predictions - labels).mean(axis=-1)
    got = compute("mse", predictions, labels, dtype=np.dtype(dtype).name, convention="keras").per_sample
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("rows", [64, 300, BLOCK_VALUES // 10 + 17])
def test_the_fused_kernel_reads_any_memory_layout(rows: int) -> None:
    """npz members in Fortran order and OIP tensors arrive as views; the kernel takes them as they are."""
    rng = np.random.default_rng(rows)
    logits = rng.normal(size=(rows, 10)).astype(np.float32)
    targets = rng.integers(0, 10, rows)
    expected = nll_of_logits(logits, targets)
    for layout in (np.asfortranarray(logits), np.repeat(logits, 2, axis=1)[:, ::2]):
        np.testing.assert_array_equal(nll_of_logits(layout, targets), expected)


def test_float16_class_labels_are_checked_without_an_overflow_warning() -> None:
    """No float16 reaches 2^62 (the largest index a label may be), and comparing with 2^62 in
    float16 overflows: the check is skipped there, not paid for with a RuntimeWarning (found by the
    OIP fuzzer's FP16 labels)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compute("scce", np.array([[0.5, 0.5]], np.float16), np.array([1.0], np.float16))
    assert result.mean == pytest.approx(math.log(2), rel=1e-3)
