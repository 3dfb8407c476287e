"""Tolerances stated per dtype.

float64: 1e-12 relative, with an absolute floor of 4 ulp of 1.0 (8.9e-16) for values below 1.
float32: 2 ulp, counted at the value's magnitude, or at 1.0 for values
below 1. Below 1 the floor matters: a float32 log-sum-exp whose sum is close to 1 carries an
absolute error of about 6e-8 in every implementation (PyTorch's included), so a loss of 1e-4
cannot be compared in its own ulps; 2 ulp of 1.0 is 2.4e-7 absolute. Means of float32 batches
get 4 ulp: the frameworks sum in another order (vectorised cascades) than NumPy's pairwise sum,
and PyTorch reduces label smoothing's two terms separately before adding them.

Weighted losses (class weights, pos_weight, element weights up to W) multiply a value that carries
those 2 ulp at the unweighted magnitude: the unit is then W ulp of |value| / W, plus one unit for
each weighting multiplication (BCE with pos_weight and weight has two): both implementations round
the product, each by up to half a unit, possibly in opposite directions. Measured over 4,000 random
BCE batches: 2.42 units with `weight` on probabilities, 1.64 on logits, 1.58 with pos_weight. Measured over 360,000
rows of torch.nn.functional.cross_entropy in float32: unweighted per-sample values at most 2.0 ulp
apart; with class weights in [0.1, 3], at most 5.5 ulp of the weighted value, which is within 2.5
of these weighted units.

Values that are sums over C classes (label smoothing's uniform term) are added in a different
order by each library; reordering C positive terms may move a float32 sum by up to 2(C - 1) ulp,
and the limit for them is 2 + (C - 1) / 2 ulp (`class_sum_ulps`), checked over many seeds.
Formulas whose terms cancel (Poisson NLL's exp(x) - y x) are compared like weighted ones, in
units of the largest term's magnitude: their float32 error is relative to the terms.

These limits hold for the committed fixtures. On fresh random batches (the live Hypothesis test
over every torch case) they do not always: BCE with logits subtracts log_sigmoid(x) from x, focal
loss raises 1 - p to gamma, triplet margin subtracts two distances, and where NumPy's and PyTorch's
exp or log1p differ by an ulp the results land 4-6 ulp apart, each 2-4 ulp from the exact value
on opposite sides. There the float32 comparison is by accuracy (`assert_as_accurate_as_reference`):
the engine may be no further from PyTorch's float64 result on the same float32 inputs than
PyTorch's float32 result is, plus the limits above, plus gamma x 1.5 ulp for focal loss's power
and, for a mean of N values, log2 N ulp. Checked over 7,200 batches (seeds 0-1799, N = 8, 17, 31,
48), every case in both dtypes: one beyond, a label-smoothing case that had not declared its sum
over the classes (fixed); none in the 3,000 batches since.

The CRPS (no framework computes it in float32; the reference is properscoring's float64 formula on
the same float32 inputs) is a difference of terms, so its float32 unit is the ulp of the larger term,
not of the score. Gaussian: 4 ulp of |y - mu| + sigma / sqrt(pi) (|y - mu| erf(.) against
sigma (2 phi - 1/sqrt(pi))); measured at most 3.04 over 120,000 forecasts (seeds 0-299, scales
1e-3 to 1e3, observations 0.1 to 30 sigma away). Ensemble of M members: 4 + log2(M) ulp of
E_w|X - y| (the pieces add M rounded squares of the rounded cumulative weights); measured at most
3.74 unweighted and 6.17 with member weights for M = 40, 5.51 weighted for M = 9, 0.5 for M = 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FLOAT64_RTOL = 1e-12
FLOAT64_ATOL = 4 * float(np.finfo(np.float64).eps)
FLOAT32_ULPS = 2
FLOAT32_MEAN_ULPS = 4


CRPS_GAUSSIAN_FLOAT32_ULPS = 4.0


def crps_ensemble_float32_ulps(members: int) -> float:
    return 4.0 + math.log2(members)


def assert_close_in_units(actual: Any, expected: Any, scale: Any, ulps: float, *, what: str = "") -> None:
    """float32 values within `ulps` float32 ulps of `scale` (the magnitude of the terms that cancel)."""
    unit = np.spacing(np.abs(np.asarray(scale, dtype=np.float64)).astype(np.float32)).astype(np.float64)
    distance = np.abs(np.asarray(actual, dtype=np.float64) - np.asarray(expected, dtype=np.float64)) / unit
    worst = float(distance.max()) if distance.size else 0.0
    assert worst <= ulps, f"{what}: {worst:.2f} ulp of the terms apart (limit {ulps})"


def class_sum_ulps(classes: int) -> float:
    return FLOAT32_ULPS + (classes - 1) / 2


def assert_close(
    actual: Any,
    expected: Any,
    dtype: str,
    *,
    what: str = "",
    ulps: float = FLOAT32_ULPS,
    weight: float = 1.0,
    roundings: int = 0,
) -> None:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    if dtype == "float32":
        a32, e32 = a.astype(np.float32), e.astype(np.float32)
        distance = np.abs(a32.astype(np.float64) - e32.astype(np.float64)) / float32_unit(e, weight)
        ulps += 1.0 * roundings
        worst = float(distance.max()) if distance.size else 0.0
        assert worst <= ulps, f"{what}: {worst:.1f} ulp apart (limit {ulps})\n{a}\n{e}"
    else:
        np.testing.assert_allclose(a, e, rtol=FLOAT64_RTOL, atol=FLOAT64_ATOL, err_msg=what)


def float32_unit(expected: Any, weight: float = 1.0) -> Any:
    """The float32 unit at each expected value: its ulp, at least the ulp of 1.0, scaled by `weight`."""
    e32 = np.asarray(expected, dtype=np.float64).astype(np.float32)
    scale = max(weight, 1.0)
    return np.spacing(np.maximum(np.abs(e32) / np.float32(scale), np.float32(1.0))).astype(np.float64) * scale


def assert_as_accurate_as_reference(
    case: dict[str, Any],
    reference: tuple[Any, float],
    exact: tuple[Any, float],
    *,
    convention: str,
    weight: float = 1.0,
    terms: int = 1,
) -> None:
    """float32 by accuracy: the engine's distance from `exact` (the reference's float64 result on
    the same float32 inputs) exceeds the reference's own float32 distance by at most the limits
    `assert_matches_reference` puts on the distance between the two.

    Where a formula cancels or compounds roundings, the two libraries' exp and log1p, each within
    an ulp but not always the same ulp, put their float32 results several ulps apart, on either
    side of the exact value; what can be promised there is PyTorch's own accuracy.
    """
    result = compute_case({**case, "dtype": "float32"}, convention)
    weight = max(weight, largest_weight(case["options"]))
    extra = class_sum_ulps(terms) - FLOAT32_ULPS + case.get("extra_ulps", 0.0)
    # Summed in another order, a mean of N values may be up to about log2(N) ulp further from the
    # exact sum (pairwise and cascade summation bounds), on top of its values' own errors.
    mean_slack = max(FLOAT32_MEAN_ULPS, FLOAT32_ULPS + math.log2(max(result.count, 2)))
    for what, ours, theirs, truth, slack in (
        ("per_sample", result.per_sample, reference[0], exact[0], FLOAT32_ULPS + extra),
        ("mean", result.mean, reference[1], exact[1], mean_slack + extra),
    ):
        truth = np.asarray(truth, dtype=np.float64)
        own = np.abs(np.asarray(ours, dtype=np.float64) - truth)
        theirs_error = np.abs(np.asarray(theirs, dtype=np.float64) - truth)
        excess = (own - theirs_error) / float32_unit(truth, weight)
        worst = float(excess.max()) if excess.size else 0.0
        assert worst <= slack, f"{case['id']} {what}: {worst:.2f} units less accurate than the reference"


def compute_case(case: dict[str, Any], convention: str) -> Any:
    """The engine's result for a reference case (its loss, inputs, options and dtype)."""
    from service.engine import compute

    return compute(
        case["loss"],
        case["predictions"],
        case["labels"],
        options=case["options"],
        sample_weight=case.get("sample_weight"),
        dtype=case["dtype"],
        convention=convention,  # type: ignore[arg-type]
    )


def largest_weight(options: dict[str, Any]) -> float:
    """The largest factor a weighting option can multiply a loss by (see the module docstring)."""
    factor = 1.0
    for name in ("class_weight", "weight", "pos_weight"):
        if options.get(name):
            factor *= max(1.0, *options[name])
    return factor


def assert_matches_reference(
    case: dict[str, Any],
    per_sample: Any,
    mean: float,
    *,
    convention: str,
    weight: float = 1.0,
    terms: int = 1,
    total: float | None = None,
) -> None:
    """Compute `case` with the engine and compare it with a reference's per-sample values and mean,
    and with its sum (`total`) where given: then the engine's denominator must be what the
    reference's mean divides by, sum / mean."""
    result = compute_case(case, convention)
    option_weight = largest_weight(case["options"])
    # One unit per weighting multiplication: each weight option given, and the caller's
    # weight (sample weights, or the scale of terms that cancel) when it exceeds theirs.
    roundings = sum(1 for name in ("class_weight", "weight", "pos_weight") if case["options"].get(name))
    roundings += int(weight > option_weight)
    weight = max(weight, option_weight)
    extra = class_sum_ulps(terms) - FLOAT32_ULPS + case.get("extra_ulps", 0.0)
    common = {"weight": weight, "roundings": roundings}
    assert_close(result.per_sample, per_sample, case["dtype"], what="per_sample", ulps=FLOAT32_ULPS + extra, **common)
    assert_close(result.mean, mean, case["dtype"], what="mean", ulps=FLOAT32_MEAN_ULPS + extra, **common)
    if total is not None:
        summed = {"weight": weight * max(1.0, abs(total) / max(abs(mean), 1e-300)), "roundings": roundings}
        assert_close(result.sum, total, case["dtype"], what="sum", ulps=FLOAT32_MEAN_ULPS + extra, **summed)
        if mean:
            rtol = 1e-5 if case["dtype"] == "float32" else 1e-9
            assert math.isclose(result.denominator, total / mean, rel_tol=rtol), (
                f"denominator {result.denominator} != the reference's sum / mean = {total / mean}"
            )
