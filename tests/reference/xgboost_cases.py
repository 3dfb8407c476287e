"""Small seeded XGBoost models, one per metric and setting, with the evaluation XGBoost recorded.

Each case trains on data the function makes, evaluates on a held-out set (weighted or not) with
`evals_result()`, and keeps the held-out predictions as `predict` returns them (or the raw
margins, `predict(output_margin=True)`) with the value XGBoost recorded for the last iteration.
Used live by tests/engine/test_engine_xgboost.py and, for machines without xgboost, written to
tests/fixtures/xgboost_reference.json by tests/reference/generate_xgboost_fixtures.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xgboost as xgb

ROUNDS = 6
TRAIN, EVAL = 300, 120


def _data(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(TRAIN + EVAL, 6))
    signal = x[:, 0] - 0.5 * x[:, 1] + 0.3 * x[:, 2] * x[:, 3]
    noise = rng.normal(size=TRAIN + EVAL)
    if kind == "binary":
        return x, (signal + noise > 0).astype(np.float64)
    if kind == "multiclass":
        return x, np.digitize(signal + 0.5 * noise, [-0.8, 0.0, 0.8]).astype(np.float64)  # 4 classes
    if kind == "counts":
        return x, rng.poisson(np.exp(0.4 * signal)).astype(np.float64)
    if kind == "positive":
        return x, rng.gamma(2.0, np.exp(0.3 * signal) / 2.0)
    if kind == "tweedie":  # compound Poisson: zeros and positive amounts
        counts = rng.poisson(np.exp(0.4 * signal - 0.3))
        return x, np.array([rng.gamma(2.0, 1.0, c).sum() for c in counts])
    return x, 8.0 + signal + noise  # "real": away from 0 (mape) and -1 (rmsle)


# metric as XGBoost writes it, objective, data, extra training parameters, loss-service options
SETTINGS: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    ("logloss", "binary:logistic", "binary", {}, {}),
    ("error", "binary:logistic", "binary", {}, {}),
    ("error@0.7", "binary:logistic", "binary", {}, {}),
    ("mlogloss", "multi:softprob", "multiclass", {"num_class": 4}, {}),
    ("merror", "multi:softprob", "multiclass", {"num_class": 4}, {}),
    ("rmse", "reg:squarederror", "real", {}, {}),
    ("rmsle", "reg:squaredlogerror", "real", {}, {}),
    ("mae", "reg:absoluteerror", "real", {}, {}),
    ("mape", "reg:squarederror", "real", {}, {}),
    ("mphe", "reg:pseudohubererror", "real", {"huber_slope": 2.0}, {"huber_slope": 2.0}),
    ("poisson-nloglik", "count:poisson", "counts", {}, {}),
    ("gamma-nloglik", "reg:gamma", "positive", {}, {}),
    ("gamma-deviance", "reg:gamma", "positive", {}, {}),
    ("tweedie-nloglik@1.3", "reg:tweedie", "tweedie", {"tweedie_variance_power": 1.3}, {}),
    ("quantile", "reg:quantileerror", "real", {"quantile_alpha": 0.3}, {"quantile_alpha": 0.3}),
    (
        "quantile",
        "reg:quantileerror",
        "real",
        {"quantile_alpha": [0.1, 0.5, 0.9]},
        {"quantile_alpha": [0.1, 0.5, 0.9]},
    ),
]


def cases() -> list[dict[str, Any]]:
    """Every setting, unweighted and weighted, on probabilities (means) and on margins."""
    records = []
    for position, (name, objective, kind, params, options) in enumerate(SETTINGS):
        for weighted in (False, True):
            rng = np.random.default_rng(1000 + 2 * position + weighted)
            x, y = _data(kind, rng)
            weights = rng.uniform(0.2, 3.0, EVAL) if weighted else None
            train = xgb.DMatrix(x[:TRAIN], label=y[:TRAIN])
            held_out = xgb.DMatrix(x[TRAIN:], label=y[TRAIN:], weight=weights)
            result: dict[str, Any] = {}
            booster = xgb.train(
                {"objective": objective, "eval_metric": name, "seed": 0, "max_depth": 3, "nthread": 1, **params},
                train,
                ROUNDS,
                evals=[(held_out, "eval")],
                evals_result=result,
                verbose_eval=False,
            )
            expected = result["eval"][name][-1]
            for margin in (False, True):
                predictions = booster.predict(held_out, output_margin=margin)
                records.append(
                    {
                        "metric": name,
                        "options": {**options, **({"margin": True} if margin else {})},
                        "margin": margin,
                        "predictions": predictions.tolist(),
                        # As XGBoost holds them (a DMatrix keeps float32 labels and weights).
                        "labels": y[TRAIN:].astype(np.float32).tolist(),
                        "sample_weight": None if weights is None else weights.astype(np.float32).tolist(),
                        "expected": expected,
                    }
                )
    return records
