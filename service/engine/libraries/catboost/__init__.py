"""CatBoost's evaluation metrics, as `get_evals_result()` records them.

Source followed: catboost/catboost, catboost/libs/metrics/metric.cpp (`TCrossEntropyMetric` for
Logloss and CrossEntropy, `TMultiClassMetric`, `TRMSEMetric`, `TQuantileMetric` for MAE and
Quantile, `TPoissonMetric`, `TTweedieMetric`, `TMetric::GetFinalError`), checked against CatBoost
1.2.10 (tests/fixtures/catboost_reference.json).

What CatBoost does, and this table with it:
- Every metric is computed on the raw formula values `a` (`approx`, double), the link inside the
  formula. `margin: true` takes `predict(prediction_type="RawFormulaVal")`. Without it the
  predictions are what `predict` returns for the metric's objective: `predict_proba()` /
  `prediction_type="Probability"` for Logloss, CrossEntropy (the (N, 2) columns [1 - p, p], or the
  positive column (N,)) and MultiClass (softmax rows); `CatBoostRegressor.predict()`'s default
  `Exponent` (exp(a)) for Poisson and Tweedie; `RawFormulaVal` (the identity) for RMSE, MAE and
  Quantile. (`CatBoostClassifier.predict()` answers classes, from which no metric here follows.)
  From probabilities the raw value is log p - log(1 - p) (binary) or log p (softmax rows, which
  log-softmax does not shift); from exp(a), log.
- Labels (`target`) and weights are float arrays: they are rounded to float32 first, then every
  value is computed in double: `Stats[0] += w * err; Stats[1] += w` in double, and the metric is
  Stats[0] / Stats[1] (RMSE: sqrt(Stats[0] / (Stats[1] + 1e-38)); the 1e-38 vanishes beside any
  weight sum above 1e-22). `Tweedie`'s variance_power is read as a float (`FromString<float>`);
  `Quantile`'s alpha and delta as double. Weights summing to 0 are refused (CatBoost answers 0).
- Parameters are written into the name as CatBoost writes them: `Quantile:alpha=0.3`,
  `Quantile:alpha=0.3;delta=1e-5`, `Tweedie:variance_power=1.5`; the answer's `loss` is CatBoost's
  description of the metric, the key of `get_evals_result()` (`Quantile:alpha=0.5` for `Quantile`).

Precision: with `dtype: "float64"` (default) each value is the double CatBoost computes, from the
same float32 labels and weights: measured at most 3.7e-16 relative on raw values, 2.4e-12 on
probabilities (whose rounding moves the raw value by up to ulp(p) / (p (1 - p))).
"""

# The tables: importing a family's module declares its metrics, and the catalogue lists them in
# the order they are declared (CatBoost's own: classification, regression, counts).
# isort: off
from service.engine.libraries.catboost import classification  # noqa: F401
from service.engine.libraries.catboost import regression  # noqa: F401
from service.engine.libraries.catboost import deviance  # noqa: F401
# isort: on
