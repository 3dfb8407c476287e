"""Recalibration (`service.engine.recalibration`): temperature scaling against scipy's bounded
Brent on a plainly written float64 NLL and against PyTorch's LBFGS fit of a temperature parameter
(Guo et al.'s reference code), and its recovery of a known temperature; isotonic recalibration
against scikit-learn's IsotonicRegression (thresholds and predictions, ties, weights, clipping);
the fits' JSON round trip and refusals; and the purpose: a model sharpened by temperature 0.5
whose ±3σ band of the expected log loss misses the realized one, until q is a fit on a separate
window of 10,000 pairs."""

from __future__ import annotations

import doctest
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import expit, logsumexp
from sklearn.isotonic import IsotonicRegression

from service.engine import LossInputError, compute, expected_loss
from service.engine import recalibration as module
from service.engine.recalibration import (
    MAX_THRESHOLDS,
    T_MAX,
    T_MIN,
    Isotonic,
    Temperature,
    fit_isotonic,
    fit_temperature,
    recalibration_from_dict,
)

# ---------------------------------------------------------------- references


def reference_logits(x: np.ndarray, from_logits: bool, convention: str) -> np.ndarray:
    """(N, C) logits, one binary column as (0, z), from the conventions' clipping written plainly."""
    if x.ndim == 1 or x.shape[1] == 1:
        v = x.reshape(-1)
        if not from_logits:
            if convention == "keras":
                c = np.minimum(np.maximum(v, 1e-7), 1 - 1e-7)
                v = np.log(c / (1 - c))
            else:
                with np.errstate(divide="ignore"):
                    v = np.maximum(np.log(v), -100.0) - np.maximum(np.log(1 - v), -100.0)
        return np.stack([np.zeros_like(v), v], axis=1)
    if from_logits:
        return x
    if convention == "keras":
        return np.log(np.minimum(np.maximum(x / x.sum(axis=1, keepdims=True), 1e-7), 1 - 1e-7))
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(x), -100.0)


def nll(temperature: float, z: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """sum_i w_i (logsumexp(z_i / T) - z_{i, y_i} / T) / sum_i w_i, row by row."""
    rows = [logsumexp(z[i] / temperature) - z[i, y[i]] / temperature for i in range(z.shape[0])]
    return float(np.dot(w, rows) / w.sum())


def scipy_temperature(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """The minimiser over log T in [log T_MIN, log T_MAX], bounded Brent to 1e-12."""
    found = minimize_scalar(
        lambda s: nll(math.exp(s), z, y, w),
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-12, "maxiter": 2000},
    )
    return math.exp(found.x)


def torch_temperature(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Guo et al.'s temperature_scaling.py: a temperature parameter fitted by LBFGS on
    CrossEntropyLoss of logits / T, here in float64, weighted, run to convergence."""
    torch = pytest.importorskip("torch")
    logits = torch.tensor(z, dtype=torch.float64)
    labels = torch.tensor(y, dtype=torch.long)
    weights = torch.tensor(w / w.sum(), dtype=torch.float64)
    temperature = torch.nn.Parameter(torch.ones(1, dtype=torch.float64) * 1.5)
    optimizer = torch.optim.LBFGS(
        [temperature],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Any:
        optimizer.zero_grad()
        per_sample = torch.nn.functional.cross_entropy(logits / temperature, labels, reduction="none")
        loss = (weights * per_sample).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(temperature.item())


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def draw(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One class per row of (M, K) probabilities, by inverse CDF of one uniform each."""
    cumulative = probabilities.cumsum(axis=1)
    u = rng.random((probabilities.shape[0], 1)) * cumulative[:, -1:]
    return np.minimum((u > cumulative).sum(axis=1), probabilities.shape[1] - 1)


# ---------------------------------------------------------------- temperature scaling

CASES = [
    # (classes (1: one binary column), from_logits, convention, weighted, true temperature of the labels)
    (5, True, "keras", False, 1.7),
    (5, True, "torch", True, 0.6),
    (4, False, "keras", True, 1.3),
    (4, False, "torch", False, 2.5),
    (1, True, "torch", True, 0.8),
    (1, False, "keras", False, 1.9),
    (1, False, "torch", True, 3.0),
]


def temperature_case(
    classes: int, from_logits: bool, weighted: bool, truth: float, seed: int, n: int = 600
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Predictions as the case gives them, labels drawn from softmax(z / truth), optional weights."""
    rng = np.random.default_rng(seed)
    k = max(classes, 2)
    z = rng.normal(0.0, 2.5, (n, k))
    if classes == 1:
        z[:, 0] = 0.0
    y = draw(rng, softmax(z / truth))
    if classes == 1:
        x = z[:, 1] if from_logits else expit(z[:, 1])
        x[:3] = [0.0, 1.0, 1e-9] if not from_logits else x[:3]  # the clip and the clamp at work
    else:
        x = z if from_logits else softmax(z)
        if not from_logits:
            x[0] = [0.0, 1.0] + [0.0] * (k - 2)
    weights = rng.uniform(0.0, 3.0, n) if weighted else None
    return x, y, weights


@pytest.mark.parametrize(("classes", "from_logits", "convention", "weighted", "truth"), CASES, ids=str)
def test_the_temperature_is_scipys_and_pytorchs_minimiser_of_the_log_loss(
    classes: int, from_logits: bool, convention: Any, weighted: bool, truth: float
) -> None:
    x, y, weights = temperature_case(classes, from_logits, weighted, truth, seed=int(truth * 10) + classes)
    fit = fit_temperature(x, y, from_logits=from_logits, convention=convention, sample_weight=weights)
    z = reference_logits(x, from_logits, convention)
    w = np.ones(len(y)) if weights is None else weights
    expected = scipy_temperature(z, y, w)
    assert not fit.at_bound
    assert fit.temperature == pytest.approx(expected, rel=1e-6)
    assert fit.temperature == pytest.approx(torch_temperature(z, y, w), rel=1e-6)
    # The minimum itself: no temperature nearby does better.
    best = nll(fit.temperature, z, y, w)
    assert best <= nll(fit.temperature * (1 + 1e-5), z, y, w)
    assert best <= nll(fit.temperature * (1 - 1e-5), z, y, w)


def test_the_temperature_is_the_root_of_the_log_losss_slope_to_float64s_last_digits() -> None:
    """The root of NLL'(1/T) found by mpmath at 40 digits (findroot from the fit): the fit is that
    temperature to 1e-12 relative, for logits of 4 classes and for one binary column."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    for classes in (4, 1):
        x, y, weights = temperature_case(classes, True, True, 1.4, seed=12, n=200)
        fit = fit_temperature(x, y, from_logits=True, convention="torch", sample_weight=weights)
        rows = [[mp.mpf(float(v)) for v in row] for row in reference_logits(x, True, "torch")]
        assert weights is not None
        w = [mp.mpf(float(v)) for v in weights]

        def slope(b: Any, rows: list[list[Any]] = rows, w: list[Any] = w, y: np.ndarray = y) -> Any:
            total = mp.mpf(0)
            for i, row in enumerate(rows):
                e = [mp.exp(b * v) for v in row]
                total += w[i] * (mp.fsum(a * v for a, v in zip(e, row, strict=True)) / mp.fsum(e) - row[y[i]])
            return total

        root = mp.findroot(slope, mp.mpf(1.0 / fit.temperature))
        assert abs(float(1 / root) / fit.temperature - 1) < 1e-12


def test_labels_drawn_at_temperature_two_give_a_fit_of_two() -> None:
    """200,000 rows of 5 classes, labels from softmax(z / 2): the fitted 1/T lies within 4 standard
    errors of 1/2, the error being 1 / sqrt(sum_i Var_{q_i}[z_i]), the Fisher information of 1/T."""
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 2.0, (200_000, 5))
    q = softmax(z / 2.0)
    y = draw(rng, q)
    fit = fit_temperature(z, y, from_logits=True, convention="keras")
    mean = (q * z).sum(axis=1, keepdims=True)
    standard_error = 1.0 / math.sqrt(float((q * (z - mean) ** 2).sum()))
    print(f"fitted T {fit.temperature:.5f} (1/T {1 / fit.temperature:.5f} ± {standard_error:.5f})")
    assert abs(1.0 / fit.temperature - 0.5) < 4 * standard_error
    assert abs(1.0 / fit.temperature - 0.5) < 0.01


def test_an_optimum_beyond_the_interval_is_its_bound() -> None:
    """Every label the top class: the NLL falls as T does, the fit is T_MIN; every label the bottom
    class: it falls as T grows, the fit is T_MAX; every row's logits equal: q is uniform for any T."""
    rng = np.random.default_rng(4)
    z = rng.normal(0.0, 1.0, (300, 3))
    top = fit_temperature(z, z.argmax(axis=1), from_logits=True, convention="torch")
    bottom = fit_temperature(z, z.argmin(axis=1), from_logits=True, convention="torch")
    assert (top.temperature, top.at_bound) == (T_MIN, True)
    assert (bottom.temperature, bottom.at_bound) == (T_MAX, True)
    w = np.ones(300)
    assert scipy_temperature(z, z.argmax(axis=1), w) == pytest.approx(T_MIN, rel=1e-6)
    assert scipy_temperature(z, z.argmin(axis=1), w) == pytest.approx(T_MAX, rel=1e-6)
    flat = fit_temperature(np.full((5, 3), 0.7), [0, 1, 2, 0, 1], from_logits=True, convention="keras")
    assert flat == Temperature(1.0)


def test_the_calibrated_belief_is_softmax_of_the_scaled_logits_and_expected_loss_takes_it() -> None:
    rng = np.random.default_rng(6)
    z = rng.normal(0.0, 2.0, (50, 4))
    fit = Temperature(1.6)
    q = fit.apply(z, from_logits=True, convention="torch")
    np.testing.assert_allclose(q, softmax(z / 1.6), rtol=1e-13, atol=0)
    column = fit.apply(z[:, :1], from_logits=True, convention="torch")
    assert column.shape == (50,)
    np.testing.assert_allclose(column, expit(z[:, 0] / 1.6), rtol=1e-13, atol=0)
    p = expit(z[:, 0])
    p[0] = 1.0
    np.testing.assert_allclose(
        fit.apply(p, from_logits=False, convention="keras"),
        expit(reference_logits(p, False, "keras")[:, 1] / 1.6),
        rtol=1e-13,
    )
    for predictions, loss, calibrated in ((z, "categorical_crossentropy", q), (z[:, 0], "binary_crossentropy", column)):
        moments = expected_loss(loss, predictions, options={"from_logits": True}, convention="torch", q=calibrated)
        assert np.isfinite(moments.mean).all()


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(module).failed == 0


# ---------------------------------------------------------------- isotonic regression


def sklearn_isotonic(p: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> IsotonicRegression:
    return IsotonicRegression(y_min=0, y_max=1, increasing=True, out_of_bounds="clip").fit(p, y, sample_weight=w)


ISOTONIC_CASES = {
    "continuous": lambda rng, n: rng.beta(2.0, 2.0, n),
    "ties": lambda rng, n: np.round(rng.beta(2.0, 2.0, n), 2),
    "near ties": lambda rng, n: (
        np.repeat(rng.uniform(0.2, 0.8, n // 4), 4) + np.tile([0.0, 2e-16, 5e-16, 9e-16], n // 4)
    ),
    "one value": lambda rng, n: np.full(n, 0.3),
}


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("case", list(ISOTONIC_CASES))
def test_isotonic_is_scikit_learns_isotonic_regression(case: str, weighted: bool) -> None:
    rng = np.random.default_rng(len(case) + 10 * weighted)
    n = 2000
    p = ISOTONIC_CASES[case](rng, n)
    y = (rng.random(n) < p**1.5).astype(float)  # miscalibrated: the truth is p^1.5
    w = None
    if weighted:
        w = rng.uniform(0.0, 2.0, n)
        w[rng.random(n) < 0.1] = 0.0  # weight 0: left out, as scikit-learn drops it
    fit = fit_isotonic(p, y, sample_weight=w)
    reference = sklearn_isotonic(p, y, w)
    assert not fit.thinned
    np.testing.assert_array_equal(fit.x, reference.X_thresholds_)
    np.testing.assert_allclose(fit.y, reference.y_thresholds_, rtol=0, atol=1e-12)
    grid = np.r_[np.linspace(0.0, 1.0, 1001), p, p.min() - 0.01, p.max() + 0.01]  # out of range: clipped
    grid = np.clip(grid, 0.0, 1.0)
    np.testing.assert_allclose(fit.apply(grid), reference.predict(grid), rtol=0, atol=1e-12)


def test_isotonic_of_logits_is_fitted_on_their_sigmoid() -> None:
    rng = np.random.default_rng(8)
    z = rng.normal(0.0, 3.0, 1500)
    y = (rng.random(1500) < expit(z / 2)).astype(float)
    fit = fit_isotonic(z.reshape(-1, 1), y.reshape(-1, 1), from_logits=True)
    reference = sklearn_isotonic(expit(z), y, None)
    np.testing.assert_allclose(fit.x, reference.X_thresholds_, rtol=1e-15, atol=0)
    np.testing.assert_allclose(fit.apply(z, from_logits=True), reference.predict(expit(z)), rtol=0, atol=1e-12)


def test_more_thresholds_than_the_cap_are_thinned_to_a_monotone_subset() -> None:
    """2,500 distinct probabilities whose weighted label means rise strictly: every one is a
    threshold for scikit-learn. The fit keeps MAX_THRESHOLDS of them, evenly by rank, first and
    last included; between kept thresholds q stays within the rise of scikit-learn's fit."""
    k = 2500
    levels = np.linspace(0.01, 0.99, k)
    p = np.repeat(np.linspace(0.0, 1.0, k), 2)
    y = np.tile([0.0, 1.0], k)
    w = np.stack([1 - levels, levels], axis=1).reshape(-1)
    reference = sklearn_isotonic(p, y, w)
    assert reference.X_thresholds_.size == k
    fit = fit_isotonic(p, y, sample_weight=w)
    assert fit.thinned
    assert len(fit.x) == MAX_THRESHOLDS
    assert (fit.x[0], fit.x[-1]) == (0.0, 1.0)
    kept = np.searchsorted(reference.X_thresholds_, fit.x)
    np.testing.assert_array_equal(reference.X_thresholds_[kept], fit.x)
    np.testing.assert_allclose(fit.y, reference.y_thresholds_[kept], rtol=0, atol=1e-12)
    grid = np.linspace(0.0, 1.0, 20001)
    q = fit.apply(grid)
    assert (np.diff(q) >= 0).all()
    gap = np.max(np.diff(np.asarray(fit.y)))
    assert np.abs(q - reference.predict(grid)).max() <= gap


# ---------------------------------------------------------------- serialisation and refusals


def test_a_fit_round_trips_through_json() -> None:
    rng = np.random.default_rng(9)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(float)
    for fit in (
        fit_isotonic(p, y),
        fit_temperature(p, y, from_logits=False, convention="keras"),
        fit_temperature(np.c_[p, 1 - p], y.astype(int), from_logits=False, convention="torch"),
        Temperature(T_MAX, at_bound=True),
        Isotonic((0.1, 0.5), (0.2, 0.7), thinned=True),
    ):
        again = recalibration_from_dict(json.loads(json.dumps(fit.as_dict())))
        assert again == fit
    assert Temperature(2.0).as_dict() == {"method": "temperature", "temperature": 2.0, "at_bound": False}
    assert Isotonic((0.1, 0.5), (0.0, 1.0)).as_dict() == {
        "method": "isotonic",
        "x": [0.1, 0.5],
        "y": [0.0, 1.0],
        "thinned": False,
    }


REFUSED: list[tuple[str, Callable[[], Any], str, tuple[int, ...]]] = [
    (
        "empty window",
        lambda: fit_temperature(np.zeros((0, 3)), [], from_logits=True, convention="keras"),
        "predictions",
        (),
    ),
    (
        "3-d",
        lambda: fit_temperature(np.zeros((2, 2, 2)), [0, 1], from_logits=True, convention="keras"),
        "predictions",
        (),
    ),
    (
        "nan",
        lambda: fit_temperature([[0.0, 1.0], [np.nan, 0.0]], [0, 1], from_logits=True, convention="keras"),
        "predictions",
        (1, 0),
    ),
    (
        "label range",
        lambda: fit_temperature([[0.0, 1.0], [1.0, 0.0]], [0, 2], from_logits=True, convention="keras"),
        "labels",
        (1,),
    ),
    (
        "fractional label",
        lambda: fit_temperature([[0.0, 1.0], [1.0, 0.0]], [0.5, 1], from_logits=True, convention="torch"),
        "labels",
        (0,),
    ),
    (
        "not one-hot",
        lambda: fit_temperature([[0.0, 1.0], [1.0, 0.0]], [[1, 0], [1, 1]], from_logits=True, convention="torch"),
        "labels",
        (1,),
    ),
    (
        "label shape",
        lambda: fit_temperature([[0.0, 1.0], [1.0, 0.0]], [0, 1, 1], from_logits=True, convention="torch"),
        "labels",
        (),
    ),
    (
        "binary label",
        lambda: fit_temperature([0.2, 0.7], [0, 2], from_logits=False, convention="keras"),
        "labels",
        (1,),
    ),
    (
        "probability",
        lambda: fit_temperature([0.2, 1.5], [0, 1], from_logits=False, convention="keras"),
        "predictions",
        (1,),
    ),
    (
        "zero row",
        lambda: fit_temperature([[0.0, 0.0], [1.0, 0.0]], [0, 1], from_logits=False, convention="keras"),
        "predictions",
        (0,),
    ),
    (
        "convention",
        lambda: fit_temperature([0.2, 0.7], [0, 1], from_logits=False, convention="xgboost"),
        "convention",
        (),
    ),  # type: ignore[arg-type]
    (
        "negative weight",
        lambda: fit_temperature([0.2, 0.7], [0, 1], from_logits=False, convention="keras", sample_weight=[1.0, -1.0]),
        "sample_weight",
        (1,),
    ),
    ("zero weights", lambda: fit_isotonic([0.2, 0.7], [0, 1], sample_weight=[0.0, 0.0]), "sample_weight", ()),
    ("weight shape", lambda: fit_isotonic([0.2, 0.7], [0, 1], sample_weight=[1.0]), "sample_weight", ()),
    ("isotonic classes", lambda: fit_isotonic([[0.2, 0.8], [0.7, 0.3]], [0, 1]), "predictions", ()),
    ("isotonic empty", lambda: fit_isotonic([], []), "predictions", ()),
    ("isotonic label", lambda: fit_isotonic([0.2, 0.7, 0.4], [0, 1, -1]), "labels", (2,)),
    ("isotonic inf", lambda: fit_isotonic([0.2, np.inf], [0, 1], from_logits=True), "predictions", (1,)),
    ("isotonic probability", lambda: fit_isotonic([0.2, -0.1], [0, 1]), "predictions", (1,)),
    ("apply shape", lambda: Isotonic((0.1,), (0.5,)).apply([[0.1, 0.9]]), "predictions", ()),
    ("method", lambda: recalibration_from_dict({"method": "platt"}), "method", ()),
    ("temperature", lambda: recalibration_from_dict({"method": "temperature", "temperature": 0.0}), "temperature", ()),
    ("x order", lambda: recalibration_from_dict({"method": "isotonic", "x": [0.1, 0.1], "y": [0, 1]}), "x", (1,)),
    ("y order", lambda: recalibration_from_dict({"method": "isotonic", "x": [0.1, 0.2], "y": [1, 0]}), "y", (1,)),
    ("y range", lambda: recalibration_from_dict({"method": "isotonic", "x": [0.1, 0.2], "y": [0, 2]}), "y", (1,)),
    ("lengths", lambda: recalibration_from_dict({"method": "isotonic", "x": [0.1, 0.2], "y": [0]}), "x", ()),
]


@pytest.mark.parametrize(("name", "call", "field", "index"), REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_input_is_refused_by_field_and_index(
    name: str, call: Callable[[], Any], field: str, index: tuple[int, ...]
) -> None:
    with pytest.raises(LossInputError) as caught:
        call()
    assert (caught.value.field, caught.value.index) == (field, index)


# ---------------------------------------------------------------- recalibration restores the band

WINDOW, COHORTS, SIZE = 10_000, 200, 1000


def band_rate(loss: str, x: np.ndarray, labels: np.ndarray, options: dict[str, Any], q: Any) -> float:
    """The share of cohorts (SIZE consecutive pairs each) whose realized mean loss, as `compute`
    gives it, lies inside the ±3σ band of its expected moments under q."""
    moments = expected_loss(loss, x, options=options, convention="keras", q=q)
    realized = compute(loss, x, labels, options=options, convention="keras", shares=True)
    sums = realized.sample_sums.reshape(COHORTS, SIZE).sum(axis=1)  # type: ignore[union-attr]
    inside = 0
    for k in range(COHORTS):
        low, high = moments.totals(slice(k * SIZE, (k + 1) * SIZE)).band(3.0)
        inside += low <= sums[k] / SIZE <= high
    return inside / COHORTS


def test_temperature_scaling_restores_the_band_of_a_sharpened_model() -> None:
    """Logits z of 5 classes, labels from softmax(z), the model logging 2 z (temperature 0.5): the
    band of the expected log loss under the model's own belief misses; under the temperature
    fitted on a separate window of 10,000 pairs it holds."""
    rng = np.random.default_rng(31)
    z = rng.normal(0.0, 1.0, (WINDOW + COHORTS * SIZE, 5))
    y = draw(rng, softmax(z))
    logged = 2.0 * z
    fit = fit_temperature(logged[:WINDOW], y[:WINDOW], from_logits=True, convention="keras")
    x, labels = logged[WINDOW:], y[WINDOW:]
    options = {"from_logits": True}
    own = band_rate("sparse_categorical_crossentropy", x, labels, options, None)
    q = fit.apply(x, from_logits=True, convention="keras")
    recalibrated = band_rate("sparse_categorical_crossentropy", x, labels, options, q)
    print(f"temperature: fitted T {fit.temperature:.4f}; band holds {own:.3f} (own belief), {recalibrated:.3f} (fit)")
    assert fit.temperature == pytest.approx(2.0, rel=0.05)
    assert own < 0.10
    assert recalibrated >= 0.95


def test_isotonic_recalibration_restores_the_band_of_a_sharpened_model() -> None:
    """One binary column, P(class 1) = sigmoid(z), the model logging sigmoid(2 z): as above, with
    the isotonic fit of a separate window of 10,000 pairs."""
    rng = np.random.default_rng(32)
    z = rng.normal(0.0, 1.0, WINDOW + COHORTS * SIZE)
    y = (rng.random(z.size) < expit(z)).astype(float)
    logged = expit(2.0 * z)
    fit = fit_isotonic(logged[:WINDOW], y[:WINDOW])
    x, labels = logged[WINDOW:], y[WINDOW:]
    own = band_rate("binary_crossentropy", x, labels, {}, None)
    recalibrated = band_rate("binary_crossentropy", x, labels, {}, fit.apply(x))
    print(f"isotonic: {len(fit.x)} thresholds; band holds {own:.3f} (own belief), {recalibrated:.3f} (fit)")
    assert own < 0.10
    assert recalibrated >= 0.95
