"""The fused cross-entropy kernel against the plain formula it replaces, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.numerics import BLOCK_VALUES, log_softmax, nll_of_logits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("rows", "classes"),
    # Row-major below 128 rows, class-major from 128 rows up to 128 classes, row-major above;
    # several blocks when rows x classes passes BLOCK_VALUES; every pairwise-sum remainder.
    [(1, 1), (5, 3), (127, 10), (128, 10), (300, 7), (1000, 8), (500, 9), (256, 128), (200, 129),
     (BLOCK_VALUES // 10 + 17, 10), (64, 1000), (3, 17)],
)  # fmt: skip
def test_the_fused_kernel_equals_minus_log_softmax_at_the_target(rows: int, classes: int, dtype: type) -> None:
    rng = np.random.default_rng(rows * 1000 + classes)
    logits = (rng.normal(size=(rows, classes)) * 5).astype(dtype)
    targets = rng.integers(0, classes, rows)
    expected = -log_softmax(logits, axis=1)[np.arange(rows), targets]
    got = nll_of_logits(logits, targets)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)
