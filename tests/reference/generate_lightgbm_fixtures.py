"""Regenerate tests/fixtures/lightgbm_reference.json from LightGBM itself.

LightGBM is a test-only reference, never a runtime dependency:

    .venv/bin/pip install lightgbm==4.7.0 && .venv/bin/python -m tests.reference.generate_lightgbm_fixtures

Each model is trained on data made here with NumPy (seeded), with two validation sets on the same
rows: one without weights, one with. The recorded value is LightGBM's own `record_evaluation`
entry for the last iteration. Each (model, metric, validation set) gives two cases: the
predictions as `Booster.predict` returns them (`margin: false`) and the raw scores
(`predict(raw_score=True)`, `margin: true`). `options` are LightGBM's parameter names; the
`objective` is among them because LightGBM evaluates a metric on the *objective's* output
conversion (sigmoid, softmax, exp or identity), whatever the metric is called.

Labels and weights are written as the float64 values handed to LightGBM; LightGBM stores both as
float32 (`label_t`), which the notes and the naive reference account for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "lightgbm_reference.json"
N_TRAIN, N_EVAL, N_FEATURES = 300, 40, 4
BASE = {"verbose": -1, "num_threads": 1, "deterministic": True, "seed": 7, "min_data_in_leaf": 5}


def _features(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(0.0, 1.0, (n, N_FEATURES))


def _linear(x: np.ndarray) -> np.ndarray:
    return 0.8 * x[:, 0] - 0.5 * x[:, 1] + 0.3 * x[:, 2] * x[:, 3]


def _targets(kind: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f = _linear(x)
    if kind == "binary":
        return (f + rng.normal(0, 0.7, len(f)) > 0).astype(float)
    if kind == "separable":
        y = (f > 0).astype(float)
        return y
    if kind == "multiclass":
        return np.digitize(f + rng.normal(0, 0.5, len(f)), [-0.5, 0.4]).astype(float)
    if kind == "probability":
        p = 1.0 / (1.0 + np.exp(-2.0 * f))
        p = np.clip(p + rng.normal(0, 0.05, len(f)), 0.0, 1.0)
        p[:3] = [0.0, 1.0, 0.5]
        return p
    if kind == "regression":
        # float64 labels that float32 cannot hold; some within (-1, 1) so MAPE's max(1, |y|) matters
        return 2.0 * f + rng.normal(0, 0.6, len(f)) + 0.3
    if kind == "counts":
        return rng.poisson(np.exp(0.6 * f)).astype(float)
    if kind == "positive":
        return rng.gamma(2.0, np.exp(0.5 * f) / 2.0)
    if kind == "tweedie":
        counts = rng.poisson(np.exp(0.5 * f))
        return np.array([rng.gamma(2.0, 0.7, c).sum() for c in counts])
    raise ValueError(kind)


# lets leaves keep splitting as the hessian vanishes, so raw scores reach |x| > 30 (LightGBM's default
# 1e-3 stops them near 17, where no probability comes within kEpsilon of 0 or 1)
SATURATE = {"min_sum_hessian_in_leaf": 1e-10}

# (objective params, label kind, metrics, rounds)
MODELS: list[tuple[dict[str, Any], str, list[str], int]] = [
    ({"objective": "binary"}, "binary", ["binary_logloss", "binary_error"], 12),
    ({"objective": "binary", "sigmoid": 0.7}, "binary", ["binary_logloss", "binary_error"], 8),
    # saturated: learning_rate 1 on separable data, so that p rounds to 0 or 1 and kEpsilon clips
    (
        {"objective": "binary", "sigmoid": 4.0, "learning_rate": 1.0, "min_data_in_leaf": 1, **SATURATE},
        "separable",
        ["binary_logloss", "binary_error"],
        60,
    ),
    ({"objective": "multiclass", "num_class": 3}, "multiclass", ["multi_logloss", "multi_error"], 10),
    ({"objective": "multiclass", "num_class": 3, "multi_error_top_k": 2}, "multiclass", ["multi_error"], 10),
    (
        {"objective": "multiclass", "num_class": 3, "learning_rate": 1.0, "min_data_in_leaf": 1, **SATURATE},
        "multiclass",
        ["multi_logloss"],
        80,
    ),
    ({"objective": "cross_entropy"}, "probability", ["cross_entropy", "kullback_leibler"], 10),
    (
        {"objective": "cross_entropy", "learning_rate": 1.0, "min_data_in_leaf": 1, **SATURATE},
        "separable",
        ["cross_entropy", "kullback_leibler"],
        80,
    ),
    ({"objective": "regression"}, "regression", ["l1", "l2", "rmse", "mape"], 10),
    ({"objective": "quantile", "alpha": 0.3}, "regression", ["quantile"], 10),
    ({"objective": "huber", "alpha": 1.5}, "regression", ["huber"], 10),
    ({"objective": "fair", "fair_c": 0.7}, "regression", ["fair"], 10),
    ({"objective": "poisson"}, "counts", ["poisson"], 10),
    # metric on an identity objective: a low quantile of counts predicts 0.0, where the 1e-10f floor applies
    ({"objective": "quantile", "alpha": 0.05}, "counts", ["poisson", "tweedie"], 10),
    ({"objective": "gamma"}, "positive", ["gamma", "gamma_deviance"], 10),
    ({"objective": "tweedie", "tweedie_variance_power": 1.3}, "tweedie", ["tweedie"], 10),
    ({"objective": "tweedie"}, "tweedie", ["tweedie"], 10),
]


def _floats(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


def build(models: int | None = None) -> list[dict[str, Any]]:
    """The cases of the first `models` models (all by default); the same numbers on every run."""
    rng = np.random.default_rng(20260341)
    cases = []
    for params, kind, metrics, rounds in MODELS[:models]:
        x_train, x_eval = _features(rng, N_TRAIN), _features(rng, N_EVAL)
        y_train, y_eval = _targets(kind, x_train, rng), _targets(kind, x_eval, rng)
        if params.get("learning_rate") == 1.0:  # saturated: mislabelled rows, where the clip decides the loss
            y_eval[::5] = (y_eval[::5] + 1.0) % 3.0 if kind == "multiclass" else 1.0 - y_eval[::5]
        weights = rng.uniform(0.1, 3.0, N_EVAL)
        train = lgb.Dataset(x_train, y_train, params={"verbose": -1})
        plain = lgb.Dataset(x_eval, y_eval, reference=train)
        weighted = lgb.Dataset(x_eval, y_eval, weight=weights, reference=train)
        full = {**BASE, **params, "metric": metrics}
        record: dict = {}
        booster = lgb.train(
            full,
            train,
            num_boost_round=rounds,
            valid_sets=[plain, weighted],
            valid_names=["plain", "weighted"],
            callbacks=[lgb.record_evaluation(record)],
        )
        predicted = booster.predict(x_eval)
        raw = booster.predict(x_eval, raw_score=True)
        training_only = ("learning_rate", "min_data_in_leaf", "min_sum_hessian_in_leaf")
        options = {k: v for k, v in params.items() if k not in training_only}
        for metric in metrics:
            name = metric if metric != "multi_error" or params.get("multi_error_top_k", 1) == 1 else None
            key = name or f"multi_error@{params['multi_error_top_k']}"
            for valid, w in (("plain", None), ("weighted", weights)):
                expected = float(record[valid][key][-1])
                for margin, values in ((False, predicted), (True, raw)):
                    cases.append(
                        {
                            "metric": metric,
                            "options": options,
                            "margin": margin,
                            "predictions": _floats(values),
                            "labels": _floats(y_eval),
                            "sample_weight": None if w is None else _floats(w),
                            "expected": expected,
                        }
                    )
    return cases


def main() -> None:
    cases = build()
    payload = {"library": "lightgbm", "version": lgb.__version__, "cases": cases}
    FIXTURE.write_text(json.dumps(payload, separators=(",", ":")) + "\n")
    print(f"wrote {len(cases)} cases to {FIXTURE} (lightgbm {lgb.__version__})")


if __name__ == "__main__":
    main()
