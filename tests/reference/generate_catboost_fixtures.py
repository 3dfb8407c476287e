"""Regenerate tests/fixtures/catboost_reference.json from CatBoost itself.

CatBoost is a test-only reference, never a runtime dependency:

    .venv/bin/pip install catboost==1.2.10 && .venv/bin/python -m tests.reference.generate_catboost_fixtures

Each model is trained (CPU, one thread, seeded) on data made here with NumPy, with two eval sets on
the same rows, one without weights and one with (`Pool(weight=...)`). The recorded value is
`get_evals_result()[eval set][metric][-1]`, the last iteration. Each (model, metric, eval set) gives
two cases: the predictions as `predict(prediction_type=...)` returns them (`margin: false`;
'Probability' for Logloss/CrossEntropy -- the positive column -- and MultiClass, 'Exponent' for
Poisson/Tweedie, 'RawFormulaVal' for the regressions, whose link is the identity) and the raw
formula values (`margin: true`). `options` holds the metric's parameters as CatBoost writes them
(`alpha`, `variance_power`) and the `loss_function` the model was trained with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import catboost
import numpy as np

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "catboost_reference.json"
N_TRAIN, N_EVAL, N_FEATURES = 300, 40, 4
BASE = {
    "thread_count": 1,
    "random_seed": 11,
    "depth": 3,
    "allow_writing_files": False,
    "verbose": False,
    # with an eval set CatBoost defaults to use_best_model=True: predict would then use the best
    # iteration, not the last one the recorded value belongs to
    "use_best_model": False,
}

# (loss_function, label kind, metrics as CatBoost writes them, prediction type, iterations, extra)
MODELS: list[tuple[str, str, list[str], str, int, dict[str, Any]]] = [
    ("Logloss", "binary", ["Logloss", "CrossEntropy"], "Probability", 20, {}),
    ("Logloss", "separable", ["Logloss"], "Probability", 200, {"learning_rate": 1.0}),
    ("CrossEntropy", "probability", ["CrossEntropy", "Logloss"], "Probability", 20, {}),
    ("MultiClass", "multiclass", ["MultiClass"], "Probability", 20, {}),
    ("RMSE", "regression", ["RMSE", "MAE", "Quantile:alpha=0.3"], "RawFormulaVal", 20, {}),
    ("MAE", "regression", ["MAE", "Quantile"], "RawFormulaVal", 20, {}),
    ("Quantile:alpha=0.3", "regression", ["Quantile:alpha=0.3"], "RawFormulaVal", 20, {}),
    ("Poisson", "counts", ["Poisson"], "Exponent", 20, {}),
    ("Tweedie:variance_power=1.5", "tweedie", ["Tweedie:variance_power=1.5"], "Exponent", 20, {}),
    ("Tweedie:variance_power=1.3", "tweedie", ["Tweedie:variance_power=1.3"], "Exponent", 20, {}),
]


def _linear(x: np.ndarray) -> np.ndarray:
    return 0.8 * x[:, 0] - 0.5 * x[:, 1] + 0.3 * x[:, 2] * x[:, 3]


def _targets(kind: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f = _linear(x)
    if kind == "binary":
        return (f + rng.normal(0, 0.7, len(f)) > 0).astype(float)
    if kind == "separable":
        return (f > 0).astype(float)
    if kind == "multiclass":
        return np.digitize(f + rng.normal(0, 0.5, len(f)), [-0.5, 0.4]).astype(float)
    if kind == "probability":
        p = np.clip(1.0 / (1.0 + np.exp(-2.0 * f)) + rng.normal(0, 0.05, len(f)), 0.0, 1.0)
        p[:3] = [0.0, 1.0, 0.5]
        return p
    if kind == "regression":
        return 2.0 * f + rng.normal(0, 0.6, len(f)) + 0.3
    if kind == "counts":
        return rng.poisson(np.exp(0.6 * f)).astype(float)
    if kind == "tweedie":
        counts = rng.poisson(np.exp(0.5 * f))
        return np.array([rng.gamma(2.0, 0.7, c).sum() for c in counts])
    raise ValueError(kind)


def _options(description: str) -> dict[str, Any]:
    if ":" not in description:
        return {}
    return {k: float(v) for k, v in (part.split("=") for part in description.split(":", 1)[1].split(";"))}


def _described(name: str, recorded: dict) -> str:
    (key,) = [k for k in recorded if k.startswith(name + ":")]
    return key


def _floats(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


def build(models: int | None = None) -> list[dict[str, Any]]:
    """The cases of the first `models` models (all by default); the same numbers on every run."""
    rng = np.random.default_rng(20260342)
    cases = []
    for loss, kind, metrics, prediction_type, iterations, extra in MODELS[:models]:
        x_train, x_eval = rng.normal(0, 1, (N_TRAIN, N_FEATURES)), rng.normal(0, 1, (N_EVAL, N_FEATURES))
        y_train, y_eval = _targets(kind, x_train, rng), _targets(kind, x_eval, rng)
        if kind == "separable":
            y_eval[::7] = 1.0 - y_eval[::7]
        weights = rng.uniform(0.1, 3.0, N_EVAL)
        eval_metric, custom = metrics[0], metrics[1:]
        model = catboost.CatBoost(
            {
                **BASE,
                **extra,
                "loss_function": loss,
                "iterations": iterations,
                "eval_metric": eval_metric,
                **({"custom_metric": custom} if custom else {}),
            }
        )
        plain = catboost.Pool(x_eval, y_eval)
        weighted = catboost.Pool(x_eval, y_eval, weight=weights)
        model.fit(catboost.Pool(x_train, y_train), eval_set=[plain, weighted])
        results = model.get_evals_result()
        predicted = model.predict(x_eval, prediction_type=prediction_type)
        if prediction_type == "Probability" and loss != "MultiClass":
            predicted = predicted[:, 1]
        raw = model.predict(x_eval, prediction_type="RawFormulaVal")
        for asked in metrics:
            # CatBoost records a metric under its full description ("Quantile" as "Quantile:alpha=0.5")
            metric = asked if asked in results["validation_0"] else _described(asked, results["validation_0"])
            for valid, w in (("validation_0", None), ("validation_1", weights)):
                expected = float(results[valid][metric][-1])
                for margin, values in ((False, predicted), (True, raw)):
                    cases.append(
                        {
                            "metric": metric.split(":")[0],
                            "options": {"loss_function": loss, **_options(metric)},
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
    payload = {"library": "catboost", "version": catboost.__version__, "cases": cases}
    FIXTURE.write_text(json.dumps(payload, separators=(",", ":")) + "\n")
    print(f"wrote {len(cases)} cases to {FIXTURE} (catboost {catboost.__version__})")


if __name__ == "__main__":
    main()
