"""crps_gaussian and crps_ensemble against properscoring (the package whose formulas they follow) and
against the definition itself: the Gaussian integral done numerically, the ensemble's pairwise form
(tests/reference/naive.py). multilabel_margin's semantics beyond the PyTorch fixtures."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from service.engine import LossInputError, compute
from tests.reference import naive
from tests.tolerance import (
    CRPS_GAUSSIAN_FLOAT32_ULPS,
    assert_close,
    assert_close_in_units,
    crps_ensemble_float32_ulps,
)

try:
    import properscoring
except ImportError:  # the naive references below run all the same
    properscoring = None
needs_properscoring = pytest.mark.skipif(
    properscoring is None, reason="the properscoring comparisons need properscoring (pip install properscoring==0.1)"
)
CONVENTIONS = ("keras", "torch")


def gaussian_batch(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Forecasts [mu, sigma] over six decades of scale, observations from 0 to 40 sigma away, and the
    edges: y == mu, a tail beyond 37 sigma, a sigma small enough that (y - mu) / sigma overflows."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-3, 3, n)
    mu = rng.normal(0, 3, n) * scale
    sigma = rng.uniform(0.01, 3, n) * scale
    y = mu + sigma * rng.normal(0, 1, n) * rng.choice([0.1, 1.0, 5.0, 30.0], n)
    y[0] = mu[0]
    y[1] = mu[1] + 40 * sigma[1]
    y[2] = mu[2] - 38 * sigma[2]
    sigma[3], y[3] = 1e-300, mu[3] + 1.0
    return np.stack([mu, sigma], axis=1), y


def ensemble_batch(seed: int, n: int = 40, members: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Ensembles with ties, an observation on a member, below all and above all members."""
    rng = np.random.default_rng(seed)
    forecasts = rng.normal(0, 2, (n, members))
    y = rng.normal(0, 2, n)
    forecasts[0, 1] = forecasts[0, 3]
    forecasts[1] = 0.5  # every member equal: a point forecast
    y[2] = forecasts[2, 4]
    y[3] = forecasts[3].min() - 3.0
    y[4] = forecasts[4].max() + 3.0
    return forecasts, y


@needs_properscoring
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crps_gaussian_matches_properscoring(seed: int) -> None:
    predictions, y = gaussian_batch(seed)
    with np.errstate(over="ignore"):  # properscoring squares z = 1e300 on the way to exp(-inf) = 0
        expected = properscoring.crps_gaussian(y, predictions[:, 0], predictions[:, 1])
    for convention in CONVENTIONS:
        result = compute("crps_gaussian", predictions, y, convention=convention)  # type: ignore[arg-type]
        assert_close(result.per_sample, expected, "float64", what=f"{convention} per_sample")
        assert_close(result.mean, expected.mean(), "float64", what=f"{convention} mean")


def test_crps_gaussian_matches_the_integral_of_its_definition() -> None:
    predictions, y = gaussian_batch(7, n=25)
    predictions[5, 1] = 0.0  # a point forecast: the integral of a step, |y - mu|
    per_sample, mean = naive.crps_gaussian(predictions.tolist(), y.tolist())
    result = compute("crps_gaussian", predictions, y)
    assert_close(result.per_sample, per_sample, "float64", what="per_sample")
    assert_close(result.mean, mean, "float64", what="mean")


@needs_properscoring
@pytest.mark.filterwarnings("error::RuntimeWarning")  # sigma = 0 is never divided by
def test_crps_gaussian_with_sigma_zero_is_the_absolute_error_where_properscoring_gives_nan() -> None:
    predictions = np.array([[1.0, 0.0], [-2.0, 0.0], [3.0, 0.0]])
    y = np.array([1.5, -4.0, 3.0])
    with np.errstate(all="ignore"):
        assert np.isnan(properscoring.crps_gaussian(y, predictions[:, 0], predictions[:, 1])).all()
    result = compute("crps_gaussian", predictions, y)
    assert result.per_sample.tolist() == [0.5, 2.0, 0.0]
    # The limit, approached: properscoring at sigma = 1e-9 agrees.
    near = properscoring.crps_gaussian(y, predictions[:, 0], np.full(3, 1e-9))
    np.testing.assert_allclose(result.per_sample, near, atol=1e-9)


@pytest.mark.parametrize(("dtype", "sigma"), [("float64", 1e-300), ("float32", 1e-30)])
def test_crps_gaussian_stays_finite_where_the_standardised_error_overflows(dtype: str, sigma: float) -> None:
    """(y - mu) / sigma = 1e310 (1e40 in float32) is infinite; the score is |y - mu| - sigma / sqrt(pi)."""
    result = compute("crps_gaussian", [[0.0, sigma], [3.0, sigma]], [1e10, 3.0], dtype=dtype)  # type: ignore[arg-type]
    expected = [1e10, sigma * (2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi))]
    np.testing.assert_allclose(result.per_sample, expected, rtol=1e-15 if dtype == "float64" else 1e-7)


@needs_properscoring
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_crps_ensemble_matches_properscoring(seed: int, weighted: bool) -> None:
    forecasts, y = ensemble_batch(seed)
    rng = np.random.default_rng(seed + 100)
    weights = rng.uniform(0.0, 2.0, forecasts.shape[1]).round(3) if weighted else None
    if weights is not None:
        weights[2] = 0.0  # a member that counts for nothing
    member_weights = None if weights is None else np.broadcast_to(weights, forecasts.shape)
    expected = properscoring.crps_ensemble(y, forecasts, weights=member_weights)
    options = {} if weights is None else {"weights": weights.tolist()}
    for convention in CONVENTIONS:
        result = compute("crps_ensemble", forecasts, y, options=options, convention=convention)  # type: ignore[arg-type]
        assert_close(result.per_sample, expected, "float64", what=f"{convention} per_sample")
        assert_close(result.mean, expected.mean(), "float64", what=f"{convention} mean")


@pytest.mark.parametrize("members", [1, 2, 3, 16])
@pytest.mark.parametrize("weighted", [False, True])
def test_crps_ensemble_matches_the_pairwise_form(members: int, weighted: bool) -> None:
    forecasts, y = ensemble_batch(members, n=30, members=max(members, 5))
    forecasts = forecasts[:, :members]
    weights = np.random.default_rng(members).uniform(0.1, 3.0, members).tolist() if weighted else None
    per_sample, mean = naive.crps_ensemble(forecasts.tolist(), y.tolist(), weights)
    result = compute("crps_ensemble", forecasts, y, options={"weights": weights})
    assert_close(result.per_sample, per_sample, "float64", what="per_sample")
    assert_close(result.mean, mean, "float64", what="mean")
    if members == 1:  # one member is a point forecast
        np.testing.assert_array_equal(result.per_sample, np.abs(forecasts[:, 0] - y))


def test_crps_ensemble_integrates_exactly_on_a_hand_computed_case() -> None:
    # Members 0, 1, 2 and y = 0.5: F steps 1/3, 2/3, 1. The integral: (0.5)(1/3)^2 below y on [0, 0.5],
    # (0.5)(2/3)^2 on [0.5, 1] above y, (1)(1/3)^2 on [1, 2]: 1/18 + 2/9 + 1/9 = 7/18.
    result = compute("crps_ensemble", [[2.0, 0.0, 1.0]], [0.5])
    assert result.per_sample.tolist() == [pytest.approx(7 / 18, rel=1e-15)]


@pytest.mark.parametrize("seed", range(4))
def test_crps_float32_within_the_documented_units(seed: int) -> None:
    """float32 against the float64 formulas on the same float32 inputs, in units of the terms that cancel."""
    predictions, y = gaussian_batch(seed)
    predictions[3, 1] = 1e-30  # tiny but not below float32's range
    p32, y32 = predictions.astype(np.float32), y.astype(np.float32)
    exact, _ = naive.crps_gaussian(p32.astype(np.float64).tolist(), y32.astype(np.float64).tolist())
    result = compute("crps_gaussian", p32, y32, dtype="float32")
    mu, sigma, obs = (a.astype(np.float64) for a in (p32[:, 0], p32[:, 1], y32))
    scale = np.abs(obs - mu) + sigma / math.sqrt(math.pi)
    assert_close_in_units(result.per_sample, exact, scale, CRPS_GAUSSIAN_FLOAT32_ULPS, what="gaussian")
    for members in (1, 9, 40):
        forecasts, obs32 = ensemble_batch(seed, members=max(members, 5))
        f32, o32 = forecasts[:, :members].astype(np.float32), obs32.astype(np.float32)
        weights = np.random.default_rng(seed).uniform(0.1, 2.0, members).astype(np.float32)
        for w in (None, weights):
            f64, o64 = f32.astype(np.float64), o32.astype(np.float64)
            w64 = None if w is None else w.astype(np.float64).tolist()
            exact, _ = naive.crps_ensemble(f64.tolist(), o64.tolist(), w64)
            options = {} if w is None else {"weights": w.tolist()}
            result = compute("crps_ensemble", f32, o32, options=options, dtype="float32")
            p = np.ones(members) if w is None else w.astype(np.float64)
            scale = (np.abs(f64 - o64[:, None]) * (p / p.sum())).sum(axis=1)
            ulps = crps_ensemble_float32_ulps(members)
            assert_close_in_units(result.per_sample, exact, scale, ulps, what=f"ensemble M={members} w={w is not None}")


@pytest.mark.parametrize("loss", ["crps_gaussian", "crps_ensemble"])
def test_crps_mean_is_the_weighted_average_under_both_conventions(loss: str) -> None:
    predictions, y = gaussian_batch(4, n=12) if loss == "crps_gaussian" else ensemble_batch(4, n=12)
    sample_weight = np.random.default_rng(9).uniform(0.0, 3.0, 12)
    plain = compute(loss, predictions, y).per_sample
    for convention in CONVENTIONS:
        result = compute(loss, predictions, y, sample_weight=sample_weight, convention=convention)  # type: ignore[arg-type]
        assert_close(result.per_sample, plain * sample_weight, "float64", what="per_sample")
        assert_close(result.mean, np.average(plain, weights=sample_weight), "float64", what="mean")
        assert result.denominator == pytest.approx(sample_weight.sum(), rel=1e-15)


@pytest.mark.parametrize(
    ("loss", "predictions", "labels", "options", "field", "index", "message"),
    [
        ("crps_gaussian", [[0.0, 1.0], [1.0, -0.5]], [0.0, 1.0], {}, "predictions", (1, 1), "standard deviation"),
        ("crps_gaussian", [[0.0, 1.0, 2.0]], [0.0], {}, "predictions", (), "(N, 2) = [mean, std]"),
        ("crps_gaussian", [0.0, 1.0], [0.0], {}, "predictions", (), "(N, 2) = [mean, std]"),
        ("crps_gaussian", [[[0.0, 1.0]]], [0.0], {}, "predictions", (), "(N, 2) = [mean, std]"),
        ("crps_gaussian", [[0.0, 1.0]], [0.0, 1.0], {}, "labels", (), "should be [1]"),
        ("crps_gaussian", [[0.0, 1.0]], [[0.0]], {}, "labels", (), "should be [1]"),
        ("crps_ensemble", [0.0, 1.0], [0.0, 1.0], {}, "predictions", (), "(N, M) ensemble members"),
        ("crps_ensemble", [[0.0, 1.0]], [0.0, 1.0], {}, "labels", (), "should be [1]"),
        ("crps_ensemble", [[0.0, 1.0]], [0.0], {"weights": [1.0]}, "options.weights", (), "one weight per member"),
        ("crps_ensemble", [[0.0, 1.0]], [0.0], {"weights": [0.0, 0.0]}, "options.weights", (), "sum to 0"),
        ("crps_ensemble", [[0.0, 1.0]], [0.0], {"weights": [1.0, -1.0]}, "options.weights", (), "must be >= 0"),
    ],
)
def test_crps_refuses_bad_input_naming_field_and_index(
    loss: str, predictions: Any, labels: Any, options: dict[str, Any], field: str, index: tuple[int, ...], message: str
) -> None:
    with pytest.raises(LossInputError) as caught:
        compute(loss, predictions, labels, options=options)
    assert (caught.value.field, caught.value.index) == (field, index)
    assert message in caught.value.reason


def test_multilabel_margin_matches_the_naive_reference_under_both_conventions() -> None:
    rng = np.random.default_rng(4)
    scores = rng.normal(0, 1.5, (9, 6))
    targets = np.full((9, 6), -1)
    for row in range(9):
        count = row % 7
        targets[row, :count] = rng.choice(6, count, replace=row % 2 == 0)  # even rows may repeat a class
    per_sample, mean = naive.multilabel_margin(scores.tolist(), targets.tolist())
    for convention in CONVENTIONS:
        result = compute("multilabel_margin", scores, targets, convention=convention)  # type: ignore[arg-type]
        assert_close(result.per_sample, per_sample, "float64", what=f"{convention} per_sample")
        assert_close(result.mean, mean, "float64", what=f"{convention} mean")


def test_multilabel_margin_counts_a_repeated_target_twice_and_an_empty_row_as_zero() -> None:
    scores = [[0.1, 0.2, 0.4, 0.8]]
    once = compute("multilabel_margin", scores, [[3, -1, -1, -1]], convention="torch").per_sample[0]
    twice = compute("multilabel_margin", scores, [[3, 3, -1, -1]], convention="torch").per_sample[0]
    assert once == pytest.approx((0.3 + 0.4 + 0.6) / 4, rel=1e-15)  # PyTorch: 0.325
    assert twice == pytest.approx(2 * once, rel=1e-15)  # PyTorch: 0.65
    assert compute("multilabel_margin", scores, [[-1, -1, -1, -1]]).per_sample.tolist() == [0.0]


def test_multilabel_margin_keras_divides_a_weighted_sum_by_the_batch_and_torch_by_the_weights() -> None:
    scores, targets, weight = [[0.5, 0.0], [0.0, 2.0]], [[0, -1], [0, -1]], [1.0, 3.0]
    per = compute("multilabel_margin", scores, targets).per_sample  # [(1 - 0.5 + 0) / 2, (1 - 0 + 2) / 2]
    assert per.tolist() == [0.25, 1.5]
    keras = compute("multilabel_margin", scores, targets, sample_weight=weight, convention="keras")
    torch = compute("multilabel_margin", scores, targets, sample_weight=weight, convention="torch")
    assert keras.mean == pytest.approx((0.25 + 4.5) / 2, rel=1e-15)
    assert torch.mean == pytest.approx((0.25 + 4.5) / 4, rel=1e-15)


@pytest.mark.parametrize(
    ("predictions", "labels", "field", "index", "message"),
    [
        ([[0.0, 1.0, 2.0]], [[0, -1, 2]], "labels", (0, 2), "follows the -1 padding"),
        ([[0.0, 1.0, 2.0]], [[-1, 1, -1]], "labels", (0, 1), "follows the -1 padding"),
        ([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], [[0, -1, -1], [1, 3, -1]], "labels", (1, 1), "neither a class in [0, 2]"),
        ([[0.0, 1.0, 2.0]], [[0, -2, -1]], "labels", (0, 1), "nor the padding -1"),
        ([[0.0, 1.0, 2.0]], [[0, -1]], "labels", (), "should be [1, 3]"),
        ([[0.0, 1.0, 2.0]], [0], "labels", (), "should be [1, 3]"),
        ([0.0, 1.0, 2.0], [0, -1, -1], "predictions", (), "(N, C) scores"),
        ([[0.0, 1.0, 2.0]], [[0.5, -1, -1]], "labels", (0, 0), "must be integers"),
    ],
)
def test_multilabel_margin_refuses_bad_targets_naming_the_index(
    predictions: Any, labels: Any, field: str, index: tuple[int, ...], message: str
) -> None:
    for convention in CONVENTIONS:
        with pytest.raises(LossInputError) as caught:
            compute("multilabel_margin", predictions, labels, convention=convention)  # type: ignore[arg-type]
        assert (caught.value.field, caught.value.index) == (field, index)
        assert message in caught.value.reason
