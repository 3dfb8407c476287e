"""The expected loss before the labels arrive (`expected_loss`): every eligible loss, convention,
dtype and option against a naive float64 reference written here (each class's loss from its own
plain formula, then the sum over classes); the zero-one loss against scikit-learn; refusals; and
the coverage proof: labels drawn from the predictions' own probabilities land inside the ±3σ band
in at least 99 % of 1,000 cohorts of 1,000 predictions, and a sharpened model's band misses until
the belief is the true distribution."""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import zero_one_loss

from service.engine import LossInputError, catalogue, compute, expected_loss, resolve

N, C = 40, 3
# Keras's clip bounds, as the working dtype holds them (float32: 1 - 1e-7 is 0.99999988).
CLIP = {"float64": (1e-7, 1 - 1e-7), "float32": (float(np.float32(1e-7)), float(np.float32(1 - 1e-7)))}
BOUNDS = CLIP["float64"]


# ---------------------------------------------------------------- naive per-class references


def log_softmax(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        m = max(x[i])
        total = sum(math.exp(v - m) for v in x[i])
        out[i] = [v - m - math.log(total) for v in x[i]]
    return out


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def log_sigmoid(v: float) -> float:
    return min(v, 0.0) - math.log1p(math.exp(-abs(v)))


def clip(v: float) -> float:
    low, high = BOUNDS
    return min(max(v, low), high)


def torch_log(v: float) -> float:
    return max(math.log(v), -100.0) if v > 0 else -100.0


def binary_table(loss: str, x: np.ndarray, convention: str, o: dict[str, Any]) -> np.ndarray:
    """L(p, c) for one binary column, c = 0, 1."""
    table = np.empty((x.shape[0], 2))
    for i, v in enumerate(x.reshape(-1)):
        for c in (0, 1):
            table[i, c] = binary_value(loss, float(v), float(c), convention, o)
    return table


def binary_value(loss: str, v: float, y: float, convention: str, o: dict[str, Any]) -> float:
    logits = o.get("from_logits", False)
    if loss == "binary_crossentropy":
        if convention == "keras":
            ls = o.get("label_smoothing", 0.0)
            y = y * (1 - ls) + ls / 2
            if logits:
                return max(v, 0) - v * y + math.log1p(math.exp(-abs(v)))
            p = clip(v)
            return -(y * math.log(p) + (1 - y) * math.log(1 - p))
        w = o.get("weight") or 1.0
        w = w[0] if isinstance(w, list) else w
        if logits:
            pw = o.get("pos_weight") or 1.0
            return w * ((1 - y) * v - (1 + (pw - 1) * y) * log_sigmoid(v))
        return w * -(y * torch_log(v) + (1 - y) * (torch_log(1 - v) if v < 1 else -100.0))
    if loss == "binary_focal_crossentropy":
        ls = o.get("label_smoothing", 0.0)
        y = y * (1 - ls) + ls / 2
        p = sigmoid(v) if logits else v
        pc = clip(p)
        bce = -(y * math.log(pc) + (1 - y) * math.log(1 - pc))
        p_t = y * p + (1 - y) * (1 - p)
        value = (1 - p_t) ** o.get("gamma", 2.0) * bce
        if o.get("apply_class_balancing"):
            a = o.get("alpha", 0.25)
            value *= y * a + (1 - y) * (1 - a)
        return value
    if loss == "sigmoid_focal":
        p = sigmoid(v)
        ce = (1 - y) * v - log_sigmoid(v)
        p_t = p * y + (1 - p) * (1 - y)
        value = ce * (1 - p_t) ** o.get("gamma", 2.0)
        a = o.get("alpha", 0.25)
        if a is not None:
            value *= a * y + (1 - a) * (1 - y)
        return value
    raise AssertionError(loss)


def class_table(loss: str, x: np.ndarray, convention: str, o: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(s, d): each sample's share of the sum and of the denominator with the label c, (N, C)."""
    n, k = x.shape
    logits = o.get("from_logits", False)
    s, d = np.empty((n, k)), np.ones((n, k))
    ls = o.get("label_smoothing", 0.0)
    cw = o.get("class_weight") or o.get("weight")
    for i in range(n):
        row = [float(v) for v in x[i]]
        if loss == "categorical_focal_crossentropy":  # Keras's: softmax first, then renormalise and clip
            p = list(np.exp(log_softmax(np.array([row]))[0])) if logits else row
            logs = [math.log(clip(v / sum(p))) for v in p]
        elif loss in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
            if logits:
                logs = list(log_softmax(np.array([row]))[0])
            elif convention == "keras":
                total = sum(row)
                logs = [math.log(clip(v / total)) for v in row]
            else:
                logs = [torch_log(v) for v in row]
        for c in range(k):
            if loss == "categorical_crossentropy":
                t = [(1.0 if j == c else 0.0) * (1 - ls) + ls / k for j in range(k)]
                if convention == "keras":
                    s[i, c] = -sum(t[j] * logs[j] for j in range(k)) * (cw[c] if cw else 1.0)
                else:
                    s[i, c] = -sum((cw[j] if cw else 1.0) * t[j] * logs[j] for j in range(k))
            elif loss == "sparse_categorical_crossentropy":
                if c == o.get("ignore_index"):
                    s[i, c], d[i, c] = 0.0, 0.0
                    continue
                if convention == "keras":
                    s[i, c] = ((1 - ls) * -logs[c] + ls / k * sum(-v for v in logs)) * (cw[c] if cw else 1.0)
                else:
                    w = cw or [1.0] * k
                    s[i, c] = (1 - ls) * w[c] * -logs[c] + ls / k * sum(-w[j] * logs[j] for j in range(k))
                    d[i, c] = w[c] if cw else 1.0
            elif loss == "nll":
                if c == o.get("ignore_index"):
                    s[i, c], d[i, c] = 0.0, 0.0
                    continue
                s[i, c] = -(cw[c] if cw else 1.0) * row[c]
                d[i, c] = cw[c] if (cw and convention == "torch") else 1.0
            elif loss == "categorical_focal_crossentropy":
                t = [(1.0 if j == c else 0.0) * (1 - ls) + ls / k for j in range(k)]
                alpha = o.get("alpha", 0.25)
                a = alpha if isinstance(alpha, list) else [alpha] * k
                g = o.get("gamma", 2.0)
                s[i, c] = sum(a[j] * (1 - math.exp(logs[j])) ** g * -t[j] * logs[j] for j in range(k))
            elif loss == "poly1_cross_entropy":
                logs = list(log_softmax(np.array([row]))[0])
                s[i, c] = -logs[c] + o.get("epsilon", 2.0) * (1 - math.exp(logs[c]))
            elif loss == "categorical_generalized_cross_entropy":
                qq = o.get("q", 0.5)
                s[i, c] = (1 - row[c] ** qq) / qq
            else:
                raise AssertionError(loss)
    return s, d


def scoring_table(loss: str, x: np.ndarray, o: dict[str, Any], eps: float) -> np.ndarray:
    """log_loss, brier_score, zero_one: L(p, c) with p's columns the classes."""
    probabilities = np.stack([1 - x.reshape(-1), x.reshape(-1)], axis=1) if x.ndim == 1 or x.shape[1] == 1 else x
    n, k = probabilities.shape
    table = np.empty((n, k))
    for i in range(n):
        p = [float(v) for v in probabilities[i]]
        for c in range(k):
            if loss == "log_loss":
                table[i, c] = -math.log(min(max(p[c], eps), 1 - eps))
            elif loss == "brier_score":
                half = o.get("scale_by_half")
                halve = k < 3 if half is None else half
                table[i, c] = sum(((1.0 if j == c else 0.0) - p[j]) ** 2 for j in range(k)) * (0.5 if halve else 1.0)
            elif loss == "zero_one":
                if x.ndim == 1 or x.shape[1] == 1:
                    v = float(x.reshape(-1)[i])
                    predicted = int(v >= (0.0 if o.get("from_logits") else 0.5))
                else:
                    predicted = max(range(k), key=lambda j: (x[i, j], -j))
                table[i, c] = 0.0 if predicted == c else 1.0
            else:
                raise AssertionError(loss)
    return table


def naive_belief(loss: str, x: np.ndarray, o: dict[str, Any]) -> np.ndarray:
    """The prediction's own distribution, written plainly: (N, C)."""
    logits = o.get("from_logits", False) or loss in ("sigmoid_focal", "poly1_cross_entropy", "nll")
    if x.ndim == 1 or x.shape[1] == 1:
        v = x.reshape(-1)
        p1 = np.array([sigmoid(float(a)) for a in v]) if logits else v.astype(float)
        return np.stack([1 - p1, p1], axis=1)
    if logits:
        return np.exp(log_softmax(x.astype(float)))
    return x / x.sum(axis=1, keepdims=True)


def naive_moments(s: np.ndarray, d: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, ...]:
    """E and Var of s, E and Var of d, Cov(s, d): plain sums over classes (Var = E[s^2] - E[s]^2)."""
    n, k = s.shape
    out = np.zeros((5, n))
    for i in range(n):
        es = sum(q[i, c] * s[i, c] for c in range(k))
        ed = sum(q[i, c] * d[i, c] for c in range(k))
        out[0, i] = es
        out[1, i] = sum(q[i, c] * s[i, c] ** 2 for c in range(k)) - es**2
        out[2, i] = ed
        out[3, i] = sum(q[i, c] * d[i, c] ** 2 for c in range(k)) - ed**2
        out[4, i] = sum(q[i, c] * s[i, c] * d[i, c] for c in range(k)) - es * ed
    return tuple(out)


# ---------------------------------------------------------------- the cases

BINARY = ("binary_crossentropy", "binary_focal_crossentropy", "sigmoid_focal")
SCORING = ("log_loss", "brier_score", "zero_one")

CASES: list[tuple[str, str, dict[str, Any], str]] = []  # (loss, convention, options, shape kind)
for convention in ("keras", "torch"):
    CASES += [
        ("binary_crossentropy", convention, {}, "column"),
        ("binary_crossentropy", convention, {"from_logits": True}, "column1"),
        ("binary_focal_crossentropy", convention, {}, "column"),
        ("binary_focal_crossentropy", convention, {"from_logits": True, "gamma": 1.5}, "column1"),
        (
            "binary_focal_crossentropy",
            convention,
            {"apply_class_balancing": True, "alpha": 0.3, "label_smoothing": 0.1},
            "column",
        ),
        ("sigmoid_focal", convention, {}, "column"),
        ("sigmoid_focal", convention, {"alpha": None, "gamma": 1.0}, "column1"),
        ("categorical_crossentropy", convention, {}, "classes"),
        ("categorical_crossentropy", convention, {}, "unnormalised"),
        ("log_loss", convention, {}, "unnormalised"),
        ("zero_one", convention, {}, "unnormalised"),
        ("categorical_crossentropy", convention, {"from_logits": True}, "classes"),
        ("categorical_crossentropy", convention, {"label_smoothing": 0.1, "class_weight": [0.5, 2.0, 1.0]}, "classes"),
        (
            "categorical_crossentropy",
            convention,
            {"from_logits": True, "label_smoothing": 0.2, "class_weight": [3.0, 1.0, 0.2]},
            "classes",
        ),
        ("sparse_categorical_crossentropy", convention, {}, "classes"),
        ("sparse_categorical_crossentropy", convention, {"from_logits": True}, "classes"),
        ("sparse_categorical_crossentropy", convention, {"class_weight": [0.5, 2.0, 1.0]}, "classes"),
        (
            "sparse_categorical_crossentropy",
            convention,
            {"from_logits": True, "label_smoothing": 0.1, "class_weight": [3.0, 1.0, 0.2]},
            "classes",
        ),
        ("sparse_categorical_crossentropy", convention, {"label_smoothing": 0.15, "ignore_index": 1}, "classes"),
        ("nll", convention, {}, "classes"),
        ("nll", convention, {"weight": [0.5, 2.0, 1.0]}, "classes"),
        ("nll", convention, {"ignore_index": 2}, "classes"),
        ("categorical_focal_crossentropy", convention, {}, "classes"),
        (
            "categorical_focal_crossentropy",
            convention,
            {"from_logits": True, "alpha": [0.2, 0.5, 1.0], "gamma": 1.0},
            "classes",
        ),
        ("categorical_focal_crossentropy", convention, {"label_smoothing": 0.1, "gamma": 0.0}, "classes"),
        ("poly1_cross_entropy", convention, {}, "classes"),
        ("poly1_cross_entropy", convention, {"epsilon": -0.5}, "classes"),
        ("categorical_generalized_cross_entropy", convention, {}, "classes"),
        ("categorical_generalized_cross_entropy", convention, {"q": 0.3}, "classes"),
        ("log_loss", convention, {}, "classes"),
        ("log_loss", convention, {}, "column"),
        ("log_loss", convention, {"classes": [7, 3]}, "column"),
        ("brier_score", convention, {}, "classes"),
        ("brier_score", convention, {}, "column"),
        ("brier_score", convention, {"scale_by_half": True}, "classes"),
        ("zero_one", convention, {}, "classes"),
        ("zero_one", convention, {"from_logits": True}, "classes"),
        ("zero_one", convention, {}, "column"),
        ("zero_one", convention, {"from_logits": True}, "column1"),
    ]
CASES += [
    ("binary_crossentropy", "keras", {"label_smoothing": 0.1}, "column"),
    ("binary_crossentropy", "keras", {"from_logits": True, "label_smoothing": 0.2}, "column"),
    ("binary_crossentropy", "torch", {"weight": 0.7}, "column"),
    ("binary_crossentropy", "torch", {"from_logits": True, "pos_weight": 2.5, "weight": [1.5]}, "column1"),
]


def logits_input(loss: str, options: dict[str, Any]) -> bool:
    return bool(options.get("from_logits")) or loss in ("sigmoid_focal", "poly1_cross_entropy")


def inputs(loss: str, options: dict[str, Any], kind: str, rng: np.random.Generator) -> np.ndarray:
    """Predictions with a few extreme rows (0, 1 or large logits) to reach the clipping and clamping."""
    if kind == "unnormalised":  # rows that do not sum to 1: the own distribution is each row over its sum
        return inputs(loss, options, "classes", rng) * rng.uniform(0.5, 1.0, (N, 1))
    shape = (N,) if kind == "column" else (N, 1) if kind == "column1" else (N, C)
    z = rng.normal(0.0, 2.0, shape)
    z[:3] = 40.0 * np.sign(z[:3])  # saturated rows
    z[3] = 0.0  # on the threshold of one binary column: logit 0, p = 0.5
    if logits_input(loss, options):
        return z
    if loss == "nll":
        return log_softmax(z)
    if kind == "classes":
        p = np.exp(log_softmax(z))
        p[0] = [1.0, 0.0, 0.0]  # an exact 0 and 1
        return p
    p = np.array([sigmoid(float(v)) for v in z.reshape(-1)]).reshape(shape)
    p[0], p[1], p[3] = 0.0, 1.0, 0.5
    return p


def reference(loss: str, x: np.ndarray, convention: str, options: dict[str, Any], dtype: str) -> tuple[np.ndarray, ...]:
    global BOUNDS
    BOUNDS = CLIP[dtype]
    eps = float(np.finfo(dtype).eps)
    d = None
    if loss in BINARY:
        s = binary_table(loss, x, convention, options)
    elif loss in SCORING:
        s = scoring_table(loss, x, options, eps)
    else:
        s, d = class_table(loss, x, convention, options)
    d = np.ones_like(s) if d is None else d
    return s, d


def tolerances(dtype: str, scale: float) -> dict[str, float]:
    return {"rtol": 1e-9, "atol": 1e-9 * scale} if dtype == "float64" else {"rtol": 3e-5, "atol": 3e-5 * scale}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("loss", "convention", "options", "kind"), CASES, ids=lambda v: str(v))
def test_expected_loss_equals_the_naive_sum_over_classes(
    loss: str, convention: str, options: dict[str, Any], kind: str, dtype: str
) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{loss}{convention}{kind}{options}".encode()))
    x = inputs(loss, options, kind, rng).astype(dtype).astype(np.float64)  # what the engine reads, in float64
    s, d = reference(loss, x, convention, options, dtype)
    scale = float(np.abs(s).max()) + 1.0
    # The prediction's own distribution, then a belief that differs from it (a calibrated one).
    own = naive_belief(loss, x, options)
    other = rng.dirichlet(np.ones(own.shape[1]), size=N)
    for q, given in ((own, None), (other, other[:, 1] if kind.startswith("column") else other)):
        got = expected_loss(loss, x, options=options, convention=convention, dtype=dtype, q=given)  # type: ignore[arg-type]
        e, var, ed, vard, cov = naive_moments(s, d, q)
        tol = tolerances(dtype, scale)
        np.testing.assert_allclose(got.mean, e, **tol)
        np.testing.assert_allclose(got.variance, var, rtol=tol["rtol"] * 10, atol=tol["atol"] * scale * 10)
        np.testing.assert_allclose(got.denominator, ed, **tol)
        np.testing.assert_allclose(got.denominator_variance, vard, **tol)
        np.testing.assert_allclose(got.covariance, cov, rtol=tol["rtol"] * 10, atol=tol["atol"] * scale * 10)
        assert got.mean.dtype == np.float64
        assert got.mean.shape == (N,)


@pytest.mark.parametrize(("loss", "convention", "options", "kind"), CASES, ids=lambda v: str(v))
def test_each_class_term_is_what_compute_gives_for_that_label(
    loss: str, convention: str, options: dict[str, Any], kind: str
) -> None:
    """The expectation is of the engine's own per-sample shares: with q a point mass on class c,
    E is the share `compute(..., shares=True)` reports for label c, and Var is 0."""
    rng = np.random.default_rng(7)
    x = inputs(loss, options, kind, rng)
    spec = resolve(loss)
    k = 2 if kind.startswith("column") else C
    for c in range(k):
        if not kind.startswith("column"):
            q = np.zeros((N, k))
            q[:, c] = 1.0
        else:
            q = np.full(N, float(c))
        got = expected_loss(loss, x, options=options, convention=convention, q=q)  # type: ignore[arg-type]
        labels: Any
        if loss in ("categorical_crossentropy", "categorical_focal_crossentropy", "poly1_cross_entropy"):
            labels = np.eye(k)[np.full(N, c)]
        elif loss in BINARY:
            labels = np.full(x.shape, float(c))
        elif loss in ("log_loss", "brier_score") and options.get("classes"):
            labels = np.full(N, sorted(options["classes"])[c])
        else:
            labels = np.full(N, c)
        if loss in ("log_loss", "brier_score") and not options.get("classes"):
            options = {**options, "classes": list(range(k))}  # one class in the batch: name them all
        realized = compute(loss, x, labels, options=options, convention=convention, shares=True, chunk=True)  # type: ignore[arg-type]
        np.testing.assert_array_equal(got.mean, realized.sample_sums)
        np.testing.assert_array_equal(got.denominator, realized.sample_denominators)
        np.testing.assert_array_equal(got.variance, 0.0)
        assert spec.expected is not None


@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sample_weight_scales_the_shares_as_compute_weighs_them(convention: str, dtype: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (N, C))
    w = rng.uniform(0, 3, N)
    options = {"from_logits": True, "class_weight": [0.5, 2.0, 1.0]}
    plain = expected_loss("scce", x, options=options, convention=convention, dtype=dtype)  # type: ignore[arg-type]
    weighted = expected_loss("scce", x, options=options, convention=convention, dtype=dtype, sample_weight=w)  # type: ignore[arg-type]
    wc = w.astype(dtype).astype(np.float64)
    tol = tolerances(dtype, 10.0)
    np.testing.assert_allclose(weighted.mean, plain.mean * wc, **tol)
    np.testing.assert_allclose(weighted.variance, plain.variance * wc**2, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
    if convention == "keras":  # sum_over_batch_size: each value counts once, whatever its weight
        np.testing.assert_array_equal(weighted.denominator, 1.0)
    else:
        np.testing.assert_allclose(weighted.denominator, plain.denominator * wc, **tol)
        np.testing.assert_allclose(weighted.covariance, plain.covariance * wc**2, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- zero_one against scikit-learn


@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["classes", "column", "logit-column", "logit-classes"])
def test_zero_one_is_scikit_learns_zero_one_loss(convention: str, dtype: str, kind: str) -> None:
    rng = np.random.default_rng(11)
    n = 500
    if kind.endswith("classes"):
        z = rng.normal(0, 1.5, (n, 4))
        z[:5] = z[:5].round()  # ties: the first of equal maxima, as np.argmax and sklearn's labels
        x = z if kind.startswith("logit") else np.exp(log_softmax(z))
        x[5] = [0.25, 0.25, 0.25, 0.25] if not kind.startswith("logit") else [1.0, 1.0, 1.0, 1.0]
        predicted = x.astype(dtype).argmax(axis=1)
        labels = rng.integers(0, 4, n)
    else:
        z = rng.normal(0, 1.5, n)
        z[:3] = 0.0  # on the threshold: p = 0.5 or logit 0 predicts class 1
        x = z if kind.startswith("logit") else 1 / (1 + np.exp(-z))
        threshold = 0.0 if kind.startswith("logit") else 0.5
        predicted = (x.astype(dtype) >= threshold).astype(int)
        labels = rng.integers(0, 2, n)
    options = {"from_logits": kind.startswith("logit")}
    w = rng.uniform(0, 2, n)
    plain = compute("zero_one", x, labels, options=options, convention=convention, dtype=dtype)  # type: ignore[arg-type]
    weighted = compute("zero_one", x, labels, options=options, sample_weight=w, convention=convention, dtype=dtype)  # type: ignore[arg-type]
    assert plain.mean == pytest.approx(zero_one_loss(labels, predicted), abs=1e-12 if dtype == "float64" else 1e-7)
    expected_weighted = zero_one_loss(labels, predicted, sample_weight=w.astype(dtype))
    assert weighted.mean == pytest.approx(expected_weighted, rel=1e-5 if dtype == "float32" else 1e-12)
    np.testing.assert_array_equal(plain.per_sample, (predicted != labels).astype(dtype))


def test_zero_one_refuses_what_it_cannot_read() -> None:
    with pytest.raises(LossInputError) as error:
        compute("zero_one", [[0.2, 0.8], [0.5, 0.5]], [1, 2])
    assert error.value.field == "labels"
    assert error.value.index == (1,)
    with pytest.raises(LossInputError) as error:
        compute("zero_one", [0.2, 1.3], [1, 0])
    assert error.value.field == "predictions"
    assert error.value.index == (1,)
    with pytest.raises(LossInputError) as error:
        compute("zero_one", [[[0.2, 0.8]]], [1])
    assert error.value.field == "predictions"
    with pytest.raises(LossInputError) as error:
        compute("zero_one", [0.2, 0.7], [1, 0, 1])
    assert error.value.field == "labels"


# ---------------------------------------------------------------- refusals


ELIGIBLE = {
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "nll",
    "binary_focal_crossentropy",
    "categorical_focal_crossentropy",
    "sigmoid_focal",
    "poly1_cross_entropy",
    "categorical_generalized_cross_entropy",
    "log_loss",
    "brier_score",
    "zero_one",
}


def test_the_catalogue_says_which_losses_have_an_expectation() -> None:
    assert {spec.name for spec in catalogue() if spec.expected is not None} == ELIGIBLE
    for spec in catalogue():
        assert bool(spec.expected_formula) == (spec.name in ELIGIBLE)


@pytest.mark.parametrize("loss", ["mse", "hinge", "categorical_hinge", "kl_divergence", "hamming", "multi_margin"])
def test_a_loss_without_an_expectation_is_refused_by_name(loss: str) -> None:
    with pytest.raises(LossInputError) as error:
        expected_loss(loss, [[0.2, 0.8]])
    assert error.value.field == "loss"
    assert error.value.reason.startswith(f"{resolve(loss).name} has no expected loss")


@pytest.mark.parametrize(
    ("loss", "predictions", "kwargs", "field", "index"),
    [
        ("bce", [[0.2, 0.8]], {}, "predictions", ()),  # two binary outputs: not one column
        ("cce", [0.2, 0.8], {}, "predictions", ()),  # no class axis
        ("scce", [[0.2], [0.8]], {}, "predictions", ()),  # one column is no class distribution
        ("cce", [[0.2, 0.8], [0.2, 1.5]], {}, "predictions", (1, 1)),  # not a probability, by index
        ("cce", [[0.0, 0.0], [0.2, 0.8]], {"convention": "torch"}, "predictions", (0,)),  # own belief undefined
        ("cce", [[0.2, 0.8]], {"q": [[0.5, 0.6]]}, "q", (0,)),
        ("cce", [[0.2, 0.8]], {"q": [[-0.5, 1.5]]}, "q", (0, 0)),
        ("cce", [[0.2, 0.8]], {"q": [0.5]}, "q", ()),
        ("bce", [0.2, 0.8], {"q": [0.5, float("nan")]}, "q", (1,)),
        ("bce", [0.2, 0.8], {"sample_weight": [1.0, -1.0]}, "sample_weight", (1,)),
        ("bce", [0.2, 0.8], {"sample_weight": [1.0]}, "sample_weight", ()),
        ("bce", [0.2, 0.8], {"convention": "xgboost"}, "convention", ()),
        ("bce", [0.2, 0.8], {"dtype": "float16"}, "dtype", ()),
        (
            "bce",
            [0.2, 0.8],
            {"options": {"label_smoothing": 0.1}, "convention": "torch"},
            "options.label_smoothing",
            (),
        ),
        ("bce", [0.2, float("inf")], {}, "predictions", (1,)),
        ("log_loss", [[0.2, 0.8]], {"options": {"classes": [0, 1, 2]}}, "options.classes", ()),
    ],
)
def test_bad_input_is_refused_by_field_and_index(
    loss: str, predictions: Any, kwargs: dict[str, Any], field: str, index: tuple[int, ...]
) -> None:
    with pytest.raises(LossInputError) as error:
        expected_loss(loss, predictions, **kwargs)
    assert (error.value.field, error.value.index) == (field, index)


# ---------------------------------------------------------------- coverage of the ±3σ band

COHORTS, SIZE = 1000, 1000
COVERAGE = [
    ("binary_crossentropy", "keras", {}, "column"),
    ("binary_crossentropy", "torch", {"from_logits": True}, "column"),
    ("binary_focal_crossentropy", "keras", {}, "column"),
    ("sigmoid_focal", "torch", {}, "column"),
    ("categorical_crossentropy", "keras", {}, "classes"),
    ("sparse_categorical_crossentropy", "keras", {"from_logits": True, "label_smoothing": 0.1}, "classes"),
    (
        "sparse_categorical_crossentropy",
        "torch",
        {"from_logits": True, "class_weight": [0.5, 2.0, 1.0, 4.0]},
        "classes",
    ),
    ("nll", "torch", {}, "classes"),
    ("categorical_focal_crossentropy", "keras", {}, "classes"),
    ("poly1_cross_entropy", "torch", {}, "classes"),
    ("categorical_generalized_cross_entropy", "keras", {}, "classes"),
    ("log_loss", "keras", {}, "classes"),
    ("brier_score", "keras", {}, "classes"),
    ("zero_one", "keras", {}, "classes"),
    ("zero_one", "torch", {"from_logits": True}, "column"),
]


def cohort_rates(
    loss: str, convention: str, options: dict[str, Any], x: np.ndarray, labels: np.ndarray, q: Any = None
) -> tuple[float, float]:
    """The shares of cohorts (SIZE consecutive predictions each) whose realized mean, as `compute`
    gives it for the cohort, lies inside the ±3σ and the ±1σ band of its summed expected moments."""
    moments = expected_loss(loss, x, options=options, convention=convention, q=q)  # type: ignore[arg-type]
    realized = compute(loss, x, labels, options=options, convention=convention, shares=True)  # type: ignore[arg-type]
    sums = realized.sample_sums.reshape(COHORTS, SIZE).sum(axis=1)  # type: ignore[union-attr]
    denominators = realized.sample_denominators.reshape(COHORTS, SIZE).sum(axis=1)  # type: ignore[union-attr]
    inside = {3.0: 0, 1.0: 0}
    for k in range(COHORTS):
        totals = moments.totals(slice(k * SIZE, (k + 1) * SIZE))
        for width in inside:
            low, high = totals.band(width)
            inside[width] += low <= sums[k] / denominators[k] <= high
    return inside[3.0] / COHORTS, inside[1.0] / COHORTS


def draw(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One class per row of (M, K) probabilities, by inverse CDF of one uniform each."""
    cumulative = probabilities.cumsum(axis=1)
    u = rng.random((probabilities.shape[0], 1)) * cumulative[:, -1:]
    return np.minimum((u > cumulative).sum(axis=1), probabilities.shape[1] - 1)


@pytest.mark.parametrize(("loss", "convention", "options", "kind"), COVERAGE, ids=lambda v: str(v))
def test_labels_drawn_from_the_predictions_fall_inside_the_band(
    loss: str, convention: str, options: dict[str, Any], kind: str
) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{loss}{convention}{options}".encode()))
    m = COHORTS * SIZE
    classes = 2 if kind == "column" else 4
    z = rng.normal(0.0, 1.5, (m, classes))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = draw(rng, p)
    if kind == "column":
        logit = z[:, 1] - z[:, 0]  # P(class 1) = sigmoid of the logit difference
        x = logit if logits_input(loss, options) else p[:, 1]
        labels: Any = y.astype(float)
    else:
        x = z if logits_input(loss, options) else np.log(p) if loss == "nll" else p
        labels = (
            np.eye(classes)[y]
            if loss in ("categorical_crossentropy", "categorical_focal_crossentropy", "poly1_cross_entropy")
            else y
        )
    rate, one_sigma = cohort_rates(loss, convention, options, x, labels)
    print(f"coverage {loss} {convention} {options}: ±3σ {rate:.3f}, ±1σ {one_sigma:.3f}")
    assert rate >= 0.99
    # Not merely wide: a normal mean lies within ±1σ 68.3 % of the time (±4 binomial SDs of 1,000 cohorts).
    assert 0.62 <= one_sigma <= 0.74


def test_a_sharpened_model_misses_the_band_until_the_belief_is_the_true_distribution() -> None:
    """Probabilities sharpened by temperature 0.5, labels drawn from the unsharpened ones: the
    prediction's own belief puts its band far from the realized log loss; with q the true
    distribution (what recalibration recovers) the band holds again."""
    rng = np.random.default_rng(31)
    m = COHORTS * SIZE
    z = rng.normal(0.0, 1.0, (m, 4))
    true = np.exp(z - z.max(axis=1, keepdims=True))
    true /= true.sum(axis=1, keepdims=True)
    sharp = np.exp(2 * (z - z.max(axis=1, keepdims=True)))
    sharp /= sharp.sum(axis=1, keepdims=True)
    y = draw(rng, true)
    for loss in ("log_loss", "zero_one", "brier_score"):
        miscalibrated, _ = cohort_rates(loss, "keras", {}, sharp, y)
        recalibrated, _ = cohort_rates(loss, "keras", {}, sharp, y, q=true)
        print(f"sharpened {loss}: own belief {miscalibrated:.3f}, true belief {recalibrated:.3f}")
        assert miscalibrated < 0.5
        assert recalibrated >= 0.99


# ---------------------------------------------------------------- the tables against the class-by-class path

TABLED = [
    ("categorical_crossentropy", "one_hot", "from_logits"),
    ("sparse_categorical_crossentropy", "index", "from_logits"),
    ("nll", "index", "log_probabilities"),
    ("log_loss", "value", "probabilities"),
    ("zero_one", "decision", "from_logits"),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize(("loss", "form", "link"), TABLED, ids=lambda v: str(v))
def test_the_all_classes_tables_equal_the_loss_evaluated_class_by_class(
    loss: str, form: Any, link: Any, convention: str, dtype: str
) -> None:
    """The fast path (`Table`) of the commonest losses gives the moments that the loss's own
    function, called once per class, gives; over 300 rows of 12 classes, so the fused logits
    kernel takes its class-major path."""
    from service.engine.expectation import over_classes

    rng = np.random.default_rng(5)
    z = rng.normal(0, 3, (300, 12))
    probabilities = np.exp(log_softmax(z))
    weights = list(rng.uniform(0.1, 3.0, 12))
    variants: list[tuple[dict[str, Any], np.ndarray]] = {
        "categorical_crossentropy": [
            ({}, probabilities),
            ({"from_logits": True}, z),
            ({"class_weight": weights}, probabilities),
        ],
        "sparse_categorical_crossentropy": [
            ({}, probabilities),
            ({"from_logits": True}, z),
            ({"from_logits": True, "class_weight": weights}, z),
        ],
        "nll": [({}, log_softmax(z)), ({"weight": weights}, log_softmax(z))],
        "log_loss": [({}, probabilities), ({}, probabilities[:, 0])],
        "zero_one": [({}, probabilities), ({"from_logits": True}, z[:, 0])],
    }[loss]
    spec = resolve(loss)
    assert spec.expected is not None
    w = rng.uniform(0, 2, 300).astype(dtype)
    for options, x in variants:
        x = x.astype(dtype)
        bound = spec.bind(options, convention)  # type: ignore[arg-type]
        tabled = spec.expected(x, bound, convention, sample_weight=w)  # type: ignore[arg-type]
        one_by_one = over_classes(spec.function, form, link, x, bound, convention, sample_weight=w)  # type: ignore[arg-type]
        for field in ("mean", "variance", "denominator", "denominator_variance", "covariance"):
            np.testing.assert_allclose(
                getattr(tabled, field),
                getattr(one_by_one, field),
                rtol=1e-13 if dtype == "float64" else 2e-6,
                atol=1e-12,
            )


# ---------------------------------------------------------------- extreme logits


def decimal_moments(logits: list[float], q: list[float] | None) -> tuple[float, float]:
    """E and Var of sparse cross-entropy from logits under q (default the row's own softmax), in
    60-digit decimal arithmetic: probabilities that underflow float64 are tiny here, not 0, and
    squares that overflow it are finite."""
    from decimal import Decimal, localcontext

    with localcontext() as context:
        context.prec = 60
        x = [Decimal(v) for v in logits]
        m = max(x)
        total = sum((v - m).exp() for v in x)
        losses = [total.ln() - (v - m) for v in x]
        belief = [(v - m).exp() / total for v in x] if q is None else [Decimal(v) for v in q]
        mean = sum(qc * lc for qc, lc in zip(belief, losses, strict=True))
        variance = sum(qc * (lc - mean) ** 2 for qc, lc in zip(belief, losses, strict=True))
        return float(mean), float(variance)


@pytest.mark.parametrize(
    ("logits", "q"),
    [
        ([1e200, 0.0, 0.0], None),  # certain of class 0: E = 0, Var = 0
        ([1e160, -1e160, 0.0], None),
        ([1e160, 0.0, 0.0], [1 - 2e-300, 1e-300, 1e-300]),  # q_c (1e160)^2 = 1e20, its square alone overflows
        ([5.0, 0.0, -2.0], None),
    ],
)
def test_moments_at_extreme_logits_equal_a_high_precision_sum(logits: list[float], q: list[float] | None) -> None:
    """Where a class's q_c is 0 (or tiny) beside a loss whose square overflows float64, its term
    q_c (L_c - E)^2 is 0 (or its finite value), not 0 * inf = NaN or inf: the moments equal a
    60-digit reference."""
    got = expected_loss(
        "sparse_categorical_crossentropy",
        np.array([logits]),
        options={"from_logits": True},
        convention="torch",
        q=None if q is None else np.array([q]),
    )
    mean, variance = decimal_moments(logits, q)
    assert got.mean[0] == pytest.approx(mean, rel=1e-12)
    assert got.variance[0] == pytest.approx(variance, rel=1e-9)
