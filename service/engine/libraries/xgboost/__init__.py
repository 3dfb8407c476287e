"""XGBoost's evaluation metrics, as `evals_result()` records them.

Source followed: dmlc/xgboost v3.2.0, src/metric/elementwise_metric.cu (`Reduce`, `EvalRowRMSE`,
`EvalRowRMSLE`, `EvalRowMAE`, `EvalRowMAPE`, `LogLoss`, `PseudoErrorLoss`, `EvalError`,
`EvalPoissonNegLogLik`, `EvalGammaDeviance`, `EvalGammaNLogLik`, `EvalTweedieNLogLik`,
`QuantileError`), src/metric/multiclass_metric.cu (`EvalMultiLogLoss`, `EvalMatchError`,
`MultiClassMetricsReduction`) and src/common/math.h (`Sigmoid`, `Softmax`, `FindMaxIndex`,
`LogGamma`, `kRtEps`).

What XGBoost does, and this table with it:
- Predictions are what `Booster.predict` returns: XGBoost evaluates after the objective's
  transform (`PredTransform`): probabilities for binary:logistic and multi:softprob, exp(margin)
  for count:poisson, reg:gamma and reg:tweedie. `margin: true` takes `predict(output_margin=True)`
  and applies the link of the objective the metric belongs to (sigmoid as `common::Sigmoid`,
  softmax as `common::Softmax`, exp, or none); each metric's `link` names it.
- Each row's value is computed in float (`bst_float`) and multiplied by the row's float weight;
  the sums of weighted values and of weights accumulate in double; the metric is
  `GetFinal(sum, weights)`: sum / weights, its square root for rmse and rmsle. A weight counts
  once per value of its sample (several targets, several quantiles). Without weights each
  weighs 1.
- Constants are XGBoost's float literals, kept as float32 values: 1e-16f (log clamp), 1e-6f
  (`kRtEps`, gamma's floor), the parameters XGBoost stores as float (error's threshold,
  huber_slope, rho, quantile_alpha) are rounded to float32 as XGBoost reads them.

Precision: with `dtype: "float64"` each row is computed in float64 from the same inputs, which
differs from XGBoost's float rows by float32 rounding (measured: at most ~1e-8 relative on the
mean; tests/engine/test_engine_xgboost.py allows 1e-6). With `dtype: "float32"` each row is computed in
float32 and the sums in float64, as XGBoost does: the metrics made of + - * / and abs (rmse,
mae, mape, error, merror, quantile, mphe with sqrt) then equal XGBoost's to 1e-12; those with
log, exp or lgamma differ by NumPy's float32 log/exp against the C library's logf/expf (an ulp
per row; ~1e-8 relative on the mean).
"""

# The tables: importing a family's module declares its metrics, and the catalogue lists them in
# the order they are declared (XGBoost's own: classification, regression, counts and positive
# targets, quantiles).
# isort: off
from service.engine.libraries.xgboost import classification  # noqa: F401
from service.engine.libraries.xgboost import regression  # noqa: F401
from service.engine.libraries.xgboost import deviance  # noqa: F401
from service.engine.libraries.xgboost import quantile  # noqa: F401
# isort: on
