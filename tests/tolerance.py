"""Tolerances stated per dtype.

float64: 1e-12 relative. float32: 2 ulp, counted at the value's magnitude, or at 1.0 for values
below 1. Below 1 the floor matters: a float32 log-sum-exp whose sum is close to 1 carries an
absolute error of about 6e-8 in every implementation (PyTorch's included), so a loss of 1e-4
cannot be compared in its own ulps; 2 ulp of 1.0 is 2.4e-7 absolute. Means of float32 batches
get 4 ulp: the frameworks sum in another order (vectorised cascades) than NumPy's pairwise sum,
and PyTorch reduces label smoothing's two terms separately before adding them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT64_RTOL = 1e-12
FLOAT32_ULPS = 2
FLOAT32_MEAN_ULPS = 4


def assert_close(actual: Any, expected: Any, dtype: str, *, what: str = "", ulps: int = FLOAT32_ULPS) -> None:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    if dtype == "float32":
        a32, e32 = a.astype(np.float32), e.astype(np.float32)
        distance = np.abs(a32.astype(np.float64) - e32.astype(np.float64)) / np.spacing(
            np.maximum(np.abs(e32), np.float32(1.0))
        )
        worst = float(distance.max()) if distance.size else 0.0
        assert worst <= ulps, f"{what}: {worst:.1f} ulp apart (limit {ulps})\n{a}\n{e}"
    else:
        np.testing.assert_allclose(a, e, rtol=FLOAT64_RTOL, atol=1e-300, err_msg=what)
