"""LightGBM's evaluation metrics, as `record_evaluation` records them.

Source followed: microsoft/LightGBM v4.7.0 (the metric files as at bae0b7ba):
src/metric/binary_metric.hpp (`BinaryLoglossMetric`, `BinaryErrorMetric`),
src/metric/multiclass_metric.hpp (`MultiSoftmaxLoglossMetric`, `MultiErrorMetric`),
src/metric/xentropy_metric.hpp (`CrossEntropyMetric`, `KullbackLeiblerDivergence`, `XentLoss`,
`YentLoss`), src/metric/regression_metric.hpp (`RegressionMetric` and its `LossOnPoint`s,
`RMSEMetric`, `GammaDevianceMetric::AverageLoss`), include/LightGBM/meta.h (`label_t`, `kEpsilon`),
include/LightGBM/utils/common.h (`Softmax`, `ObtainMinMaxSum`, `SafeLog`),
src/objective/*.hpp (`ConvertOutput`), src/io/config.cpp (`ParseMetricAlias`).

What LightGBM does, and this table with it:
- Labels and weights are float32 (`typedef float label_t`): they are rounded to float32 first (a
  label 0.1 is 0.10000000149). Scores, each row's loss and the sums are double: the table computes
  in float64 (`dtype: "float64"`, the default, is LightGBM's precision; float32 is an approximation).
- The mean is sum(w l) / sum(w), sum(w) a double sum of the float32 weights (N without weights);
  `rmse` is its square root; `gamma_deviance` is 2 sum(w l) with no division at all (aggregate
  "sum": `mean` is the sum, `denominator` still reports sum(w), chunks add their sums);
  `cross_entropy` and `kullback_leibler` divide by sum(w) summed in float32 pairs
  (`ObtainMinMaxSum<label_t>`).
- Predictions are what `Booster.predict` returns. LightGBM evaluates every metric on the
  *objective's* `ConvertOutput`, whatever the metric: `margin: true` takes
  `predict(raw_score=True)` and applies the link of the option `objective` (LightGBM's objective
  parameter, by default the metric's own objective: binary_logloss -> binary, poisson -> poisson,
  ...): binary and multiclassova 1 / (1 + exp(-sigmoid x)), multiclass softmax, cross_entropy
  1 / (1 + exp(-x)), poisson, gamma and tweedie exp, the regressions and custom the identity.
  `objective` and `sigmoid` take effect only on raw scores and are refused without `margin: true`;
  an objective whose output does not fit the metric (multiclass for l2) is refused.
- Constants are LightGBM's: kEpsilon = 1e-15f and the clipped loss -logf(kEpsilon), a float32 value
  (34.538776397705078); cross_entropy's 1e-12 (double) and its `1.0f - label` in float32;
  1e-10f (Poisson, Tweedie floor); gamma_deviance's 1e-9; gamma's `SafeLog<float>(label)`.
- Without one thread LightGBM sums with OpenMP in another order (a few ulp); with one thread and
  float64 this table agrees with LightGBM 4.7.0 to ~1e-15 relative (tests/engine/test_engine_lightgbm.py).

Not modelled: `reg_sqrt` (predict's sign(x) x^2; give predict()'s output), cross_entropy_lambda
(`xentlambda`) and the ranking and AUC metrics.
"""

# The tables: importing a family's module declares its metrics, and the catalogue lists them in
# the order they are declared (LightGBM's own: classification, probabilistic labels, regression).
# isort: off
from service.engine.libraries.lightgbm import classification  # noqa: F401
from service.engine.libraries.lightgbm import cross_entropy  # noqa: F401
from service.engine.libraries.lightgbm import regression  # noqa: F401
from service.engine.libraries.lightgbm import deviance  # noqa: F401
# isort: on
