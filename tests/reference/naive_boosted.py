"""Deliberately naive float64 reimplementations of LightGBM's and CatBoost's evaluation metrics.

Written from docs/boosted-metrics.md (itself from the libraries' C++ source), one plain
loop per metric, so that tests/engine/test_boosted_reference.py can check the notes against what the
libraries record. Nothing here is used by the service.

Each function takes one fixture case (see tests/fixtures/*_reference.json) and returns the value the
library records for it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

F32 = np.float32

# LightGBM: include/LightGBM/meta.h `const score_t kEpsilon = 1e-15f;` (score_t is float)
LGB_K_EPSILON = float(F32(1e-15))
# regression_metric.hpp: `const double eps = 1e-10f;` (Poisson, Tweedie)
LGB_POISSON_EPS = float(F32(1e-10))
# xentropy_metric.hpp: `const double log_arg_epsilon = 1.0e-12;`
LGB_XENT_EPS = 1.0e-12
# regression_metric.hpp GammaDevianceMetric: `const double epsilon = 1.0e-9;`
LGB_GAMMA_DEVIANCE_EPS = 1.0e-9


def _f32(values: Any) -> list[float]:
    """LightGBM's and CatBoost's label_t / weight arrays are float32."""
    return [float(v) for v in np.asarray(values, dtype=np.float64).astype(F32)]


# --------------------------------------------------------------------------------------- LightGBM


def _lgb_link(objective: str, options: dict[str, Any], raw: list[float]) -> list[float]:
    """The objective's ConvertOutput (src/objective/*.hpp), in double."""
    if objective in ("binary",):
        s = float(options.get("sigmoid", 1.0))
        return [1.0 / (1.0 + math.exp(-s * x)) for x in raw]
    if objective in ("cross_entropy", "xentropy"):
        return [1.0 / (1.0 + math.exp(-x)) for x in raw]
    if objective in ("poisson", "gamma", "tweedie"):
        return [math.exp(x) for x in raw]
    return list(raw)  # regression, regression_l1, huber, fair, quantile, mape: identity


def _lgb_softmax(row: list[float]) -> list[float]:
    """Common::Softmax: subtract the max, exp, divide by the double sum."""
    m = row[0]
    for v in row[1:]:
        m = max(v, m)
    e = [math.exp(v - m) for v in row]
    total = 0.0
    for v in e:
        total += v
    return [v / total for v in e]


def _lgb_clipped_logloss() -> float:
    """`return -std::log(kEpsilon);` -- kEpsilon is a float, so this is logf: a float32 result."""
    return -float(F32(math.log(LGB_K_EPSILON)))


def _lgb_point(metric: str, y: float, p: Any, o: dict[str, Any]) -> float:
    if metric == "binary_logloss":
        if y <= 0:
            return -math.log(1.0 - p) if 1.0 - p > LGB_K_EPSILON else _lgb_clipped_logloss()
        return -math.log(p) if p > LGB_K_EPSILON else _lgb_clipped_logloss()
    if metric == "binary_error":
        return float(y > 0) if p <= 0.5 else float(y <= 0)
    if metric == "multi_logloss":
        q = p[int(y)]
        return -math.log(q) if q > LGB_K_EPSILON else _lgb_clipped_logloss()
    if metric == "multi_error":
        k, top_k = int(y), int(o.get("multi_error_top_k", 1))
        larger = sum(1 for v in p if v >= p[k])
        return 1.0 if larger > top_k else 0.0
    if metric in ("cross_entropy", "kullback_leibler"):
        a = y * (math.log(p) if p > LGB_XENT_EPS else math.log(LGB_XENT_EPS))
        # `double b = 1.0f - label;` -- float minus label_t: the difference is rounded to float32
        b = float(F32(1.0) - F32(y))
        b *= math.log(1.0 - p) if 1.0 - p > LGB_XENT_EPS else math.log(LGB_XENT_EPS)
        return -(a + b)
    if metric in ("l2", "rmse"):
        return (p - y) * (p - y)
    if metric == "l1":
        return abs(p - y)
    if metric == "quantile":
        alpha, delta = float(o.get("alpha", 0.9)), y - p
        return (alpha - 1.0) * delta if delta < 0 else alpha * delta
    if metric == "mape":
        return abs(y - p) / max(1.0, abs(y))
    if metric == "huber":
        alpha, diff = float(o.get("alpha", 0.9)), p - y
        return 0.5 * diff * diff if abs(diff) <= alpha else alpha * (abs(diff) - 0.5 * alpha)
    if metric == "fair":
        c, x = float(o.get("fair_c", 1.0)), abs(p - y)
        return c * x - c * c * math.log1p(x / c)
    if metric == "poisson":
        p = max(p, LGB_POISSON_EPS)
        return p - y * math.log(p)
    if metric == "gamma":
        # -((y * theta - b) / psi + c) with psi = 1, theta = -1/mu, b = -log(-theta), c = 0
        theta = -1.0 / p
        b = -math.log(-theta)
        # `SafeLog(label / psi) - SafeLog(label)`: the first is a double log (label / 1.0 is double),
        # the second SafeLog<label_t>, a float32 log; c is the float32 rounding of log(y), not 0
        c = math.log(y) - float(F32(math.log(y)))
        return -((y * theta - b) / 1.0 + c)
    if metric == "gamma_deviance":
        t = y / (p + LGB_GAMMA_DEVIANCE_EPS)
        return t - math.log(t) - 1.0
    if metric == "tweedie":
        rho = float(o.get("tweedie_variance_power", 1.5))
        p = max(p, LGB_POISSON_EPS)
        a = y * math.exp((1.0 - rho) * math.log(p)) / (1.0 - rho)
        b = math.exp((2.0 - rho) * math.log(p)) / (2.0 - rho)
        return -a + b
    raise KeyError(metric)


def _lgb_float32_pair_sum(w: list[float]) -> float:
    """Common::ObtainMinMaxSum: the sum of weights in label_t (float32), pairs at a time."""
    n = len(w)
    if n & 1:
        s, i = F32(w[0]), 2
    else:
        s, i = F32(w[0]) + F32(w[1]), 3
    while i < n:
        s = F32(s + (F32(w[i - 1]) + F32(w[i])))
        i += 2
    return float(s)


def lightgbm(case: dict[str, Any]) -> float:
    metric, o = case["metric"], case["options"]
    objective = o["objective"]
    labels = _f32(case["labels"])
    weights = None if case["sample_weight"] is None else _f32(case["sample_weight"])
    if objective == "multiclass":
        rows = [list(map(float, r)) for r in case["predictions"]]
        preds: list[Any] = [_lgb_softmax(r) for r in rows] if case["margin"] else rows
    else:
        values = [float(v) for v in case["predictions"]]
        preds = _lgb_link(objective, o, values) if case["margin"] else values
    total = 0.0
    for i, (y, p) in enumerate(zip(labels, preds, strict=True)):
        loss = _lgb_point(metric, y, p, o)
        total += loss if weights is None else loss * weights[i]
    n = len(labels)
    if weights is None:
        sum_w = float(n)
    elif metric in ("cross_entropy", "kullback_leibler"):
        sum_w = _lgb_float32_pair_sum(weights)
    else:
        sum_w = 0.0
        for w in weights:
            sum_w += w
    if metric == "rmse":
        return math.sqrt(total / sum_w)
    if metric == "gamma_deviance":
        return total * 2.0  # AverageLoss: `return sum_loss * 2;` -- no division at all
    if metric == "kullback_leibler":
        entropy = 0.0
        for i, y in enumerate(labels):
            h = (y * math.log(y) if y > 0 else 0.0) + ((1.0 - y) * math.log(1.0 - y) if 1.0 - y > 0 else 0.0)
            entropy += h if weights is None else h * weights[i]
        return entropy / sum_w + total / sum_w
    return total / sum_w


# --------------------------------------------------------------------------------------- CatBoost

# catboost/libs/metrics/metric.cpp TQuantileMetric: `MaeDelta = 1e-6`, default `delta` 1e-6
CB_QUANTILE_DELTA = 1e-6
# GetDefaultTargetBorder(): Logloss counts a target as positive when `target > 0.5`
CB_TARGET_BORDER = 0.5


def _cb_float_param(value: float) -> float:
    """TTweedieMetric::Create parses variance_power with FromString<float>: a float32 power."""
    return float(F32(value))


def _cb_point(metric: str, y: float, a: Any, o: dict[str, Any]) -> float:
    """One object's error, on the raw formula value `a` (CatBoost evaluates on raw approxes)."""
    if metric in ("Logloss", "CrossEntropy"):
        prob = float(y > CB_TARGET_BORDER) if metric == "Logloss" else y
        e = math.exp(a) if a < 709.0 else math.inf
        return math.log(1.0 + e) - prob * a if math.isfinite(e) else (1.0 - prob) * a
    if metric == "MultiClass":
        m = max(a)
        total = 0.0
        for v in a:
            total += math.exp(v - m)
        return -(a[int(y)] - m - math.log(total))
    if metric == "RMSE":
        return (a - y) ** 2
    if metric in ("MAE", "Quantile"):
        alpha = 0.5 if metric == "MAE" else float(o.get("alpha", 0.5))
        delta = CB_QUANTILE_DELTA
        val = y - a
        multiplier = 0.0 if abs(val) < delta else (alpha if val > 0 else -(1.0 - alpha))
        if val < -delta:
            val += delta
        elif val > delta:
            val -= delta
        return multiplier * val * (2.0 if metric == "MAE" else 1.0)
    if metric == "Poisson":
        return math.exp(a) - y * a
    if metric == "Tweedie":
        rho = _cb_float_param(o["variance_power"])
        return -y * math.exp((1.0 - rho) * a) / (1.0 - rho) + math.exp((2.0 - rho) * a) / (2.0 - rho)
    raise KeyError(metric)


def _cb_raw(metric: str, case: dict[str, Any]) -> list[Any]:
    """Back to raw formula values from what `predict` returned (the inverse of each link)."""
    if case["margin"]:
        return [list(map(float, r)) if isinstance(r, list) else float(r) for r in case["predictions"]]
    if metric in ("Logloss", "CrossEntropy"):
        return [math.log(p) - math.log1p(-p) for p in case["predictions"]]
    if metric == "MultiClass":
        return [[math.log(v) for v in r] for r in case["predictions"]]  # softmax is shift-invariant
    if metric in ("Poisson", "Tweedie"):
        return [math.log(v) for v in case["predictions"]]
    return [float(v) for v in case["predictions"]]


def catboost(case: dict[str, Any]) -> float:
    metric, o = case["metric"], case["options"]
    labels = _f32(case["labels"])
    weights = None if case["sample_weight"] is None else _f32(case["sample_weight"])
    raw = _cb_raw(metric, case)
    error, weight_sum = 0.0, 0.0
    for i, (y, a) in enumerate(zip(labels, raw, strict=True)):
        w = 1.0 if weights is None else weights[i]
        error += _cb_point(metric, y, a, o) * w
        weight_sum += w
    if metric == "RMSE":
        return math.sqrt(error / (weight_sum + 1e-38))
    return error / weight_sum if weight_sum != 0 else 0.0
