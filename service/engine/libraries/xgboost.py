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

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import (
    check_class_indices,
    check_in_range,
    check_min_rank,
    check_positive,
    check_same_shape,
    check_values_in,
)
from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.libraries.base import MARGIN_DOC, metric
from service.engine.losses._shared import elementwise_loss
from service.engine.losses.crossentropy import binary_log_loss, nll
from service.engine.losses.deviance import unit_deviance
from service.engine.losses.distribution import gamma_nloglik_terms, poisson_terms, tweedie_nloglik_terms
from service.engine.losses.regression import (
    absolute_percentage_errors,
    mean_absolute_error,
    mean_squared_error,
    pinball,
    squared_log_errors,
)
from service.engine.losses.scoring import hamming
from service.engine.options import Doc, Positive, Probability, Range
from service.engine.reduction import Array, LossValues


def _f32(value: float) -> float:
    """A float literal or parameter as XGBoost holds it: rounded to float32."""
    return float(np.float32(value))


LOG_EPS = _f32(1e-16)  # logloss, mlogloss, poisson-nloglik: `const bst_float eps = 1e-16f`
RT_EPS = _f32(1e-6)  # kRtEps (include/xgboost/base.h): gamma-deviance adds it to y and p
GAMMA_FLOOR = _f32(1e-6)  # gamma-nloglik: `py = std::max(py, 1e-6f)`
SIGMOID_CLAMP = _f32(88.7)  # common::Sigmoid: exp(min(-x, 88.7f)) does not overflow

Margin = Annotated[bool, Doc(MARGIN_DOC)]
PER_ROW = "each row in float, weighted in float, summed in double"
ELEMENTWISE_SHAPES = """predictions: (N,) or (N, T) targets; labels: the same shape.
per_sample: as predictions, each value times its sample's weight."""


def _sigmoid(x: Array) -> Array:
    """common::Sigmoid(float): 1 / (exp(min(-x, 88.7)) + 1) (its + 1e-16f vanishes in float)."""
    one = x.dtype.type(1)
    return one / (np.exp(np.minimum(-x, x.dtype.type(SIGMOID_CLAMP))) + one)


def _softmax(x: Array) -> Array:
    """common::Softmax: exp(x - max) in float, divided by their sum accumulated in double."""
    exps = np.exp(x - x.max(axis=1, keepdims=True))
    total = exps.sum(axis=1, keepdims=True, dtype=np.float64).astype(x.dtype)
    return exps / total  # type: ignore[no-any-return]


def _probabilities(predictions: Array, margin: bool) -> Array:
    if margin:
        return _sigmoid(predictions)
    check_in_range(predictions, "predictions", 0.0, 1.0, "probabilities (margin is false)")
    return predictions


def _class_probabilities(predictions: Array, labels: NDArray[np.intp], margin: bool) -> Array:
    check_min_rank(predictions, 2, "predictions", "a batch axis and a class axis")
    if predictions.ndim != 2 or labels.shape != predictions.shape[:1]:
        raise LossInputError(
            "labels", f"shape {list(labels.shape)} should be [{predictions.shape[0]}] for predictions (N, C)"
        )
    check_class_indices(labels, predictions.shape[1], None)  # XGBoost: label must be in [0, num_class)
    if margin:
        return _softmax(predictions)
    check_in_range(predictions, "predictions", 0.0, 1.0, "class probabilities (margin is false)")
    return predictions


def _binary_labels(labels: Array) -> None:
    check_values_in(labels, (0.0, 1.0), "labels", "binary labels")


def _exp(predictions: Array, margin: bool, meaning: str) -> Array:
    if margin:
        return np.exp(predictions)
    check_positive(predictions, "predictions", meaning, allow_zero=True)
    return predictions


@metric("xgboost", "logloss", loss="binary_crossentropy", link="sigmoid (binary:logistic)", precision=PER_ROW)
def logloss(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Negative log-likelihood of binary labels: XGBoost's `logloss`.

    Formula:
        -(y log max(p, 1e-16) + (1 - y) log max(1 - p, 1e-16)); p = sigmoid(x) with margin
        binary_crossentropy's formula with XGBoost's clamp (Keras clips p to [1e-7, 1 - 1e-7])

    Shapes:
        predictions: probabilities (N,) or (N, T); labels: 0 or 1, the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu LogLoss / EvalRowLogLoss.
    """
    check_same_shape(predictions, labels)
    _binary_labels(labels)
    p = _probabilities(predictions, margin)
    eps = p.dtype.type(LOG_EPS)
    return LossValues(binary_log_loss(labels, np.log(np.maximum(p, eps)), np.log(np.maximum(1 - p, eps))))


@metric("xgboost", "mlogloss", loss="nll", link="softmax (multi:softprob)", precision=PER_ROW, class_labels=True)
def mlogloss(
    predictions: Array, labels: NDArray[np.intp], convention: Convention, /, *, margin: Margin = False
) -> LossValues:
    """Multi-class negative log-likelihood: XGBoost's `mlogloss`.

    Formula:
        -log max(p_y, 1e-16); p = softmax(x) with margin
        nll of the clamped log-probabilities (no renormalisation, unlike Keras's crossentropy)

    Shapes:
        predictions: class probabilities (N, C); labels: class indices (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/multiclass_metric.cu EvalMultiLogLoss.
    """
    p = _class_probabilities(predictions, labels, margin)
    return LossValues(nll(np.log(np.maximum(p, p.dtype.type(LOG_EPS))), labels, "torch").values)


Threshold = Annotated[float, Probability, Doc("predictions above it count as class 1 (error@t sets it)")]


@metric(
    "xgboost",
    "error",
    loss="hamming",
    link="sigmoid (binary:logistic)",
    precision="exact: each row is 0 or 1, summed in double",
    parameter="threshold",
)
def error(
    predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False, threshold: Threshold = 0.5
) -> LossValues:
    """Binary classification error rate: XGBoost's `error` and `error@t`.

    Formula:
        [p > t] != y, i.e. 1 - y if p > t else y; t = 0.5, or t from error@t (read as a float)
        hamming of the thresholded predictions; p = sigmoid(x) with margin

    Shapes:
        predictions: probabilities (N,) or (N, T); labels: 0 or 1, the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu EvalError (threshold parsed with sscanf "%f").
    """
    check_same_shape(predictions, labels)
    _binary_labels(labels)
    p = _probabilities(predictions, margin)
    predicted = (p > p.dtype.type(_f32(threshold))).astype(p.dtype)
    wrong = hamming(predicted.reshape(-1), labels.reshape(-1), "torch").values
    return LossValues(wrong.reshape(p.shape))


@metric(
    "xgboost",
    "merror",
    loss="hamming",
    link="softmax (multi:softprob)",
    precision="exact: each row is 0 or 1, summed in double",
    class_labels=True,
)
def merror(
    predictions: Array, labels: NDArray[np.intp], convention: Convention, /, *, margin: Margin = False
) -> LossValues:
    """Multi-class error rate: XGBoost's `merror`.

    Formula:
        argmax_c p_c != y (the first of equal maxima, as FindMaxIndex); p = softmax(x) with margin
        hamming of the predicted classes

    Shapes:
        predictions: class probabilities (N, C); labels: class indices (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/multiclass_metric.cu EvalMatchError; src/common/math.h FindMaxIndex.
    """
    p = _class_probabilities(predictions, labels, margin)
    predicted = p.argmax(axis=1).astype(p.dtype)
    return LossValues(hamming(predicted, labels.astype(p.dtype), "torch").values)


@metric(
    "xgboost",
    "rmse",
    loss="mean_squared_error",
    link="none (reg:squarederror)",
    precision=PER_ROW,
    aggregate="root_mean",
)
def rmse(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Root mean squared error: XGBoost's `rmse`.

    Formula:
        per value (y - p)^2; mean: sqrt(sum(w (y - p)^2) / sum(w))

    Shapes:
        predictions: (N,) or (N, T); labels: the same shape.
        per_sample: w (y - p)^2 per value; `sum` their sum, `mean` the root of sum / denominator.

    Follows:
        src/metric/elementwise_metric.cu EvalRowRMSE (GetFinal: sqrt(esum / wsum)).
    """
    return LossValues(mean_squared_error(predictions, labels, "torch").values)


@metric(
    "xgboost",
    "rmsle",
    loss="mean_squared_logarithmic_error",
    link="none (reg:squaredlogerror)",
    precision=PER_ROW,
    aggregate="root_mean",
)
def rmsle(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Root mean squared logarithmic error: XGBoost's `rmsle`.

    Formula:
        per value (log1p(y) - log1p(p))^2 (no floor, unlike Keras's msle); mean: sqrt(sum(w v) / sum(w))
        domain: y > -1 and p > -1

    Shapes:
        predictions: (N,) or (N, T); labels: the same shape.
        per_sample: w (log1p(y) - log1p(p))^2 per value; `mean` the root of sum / denominator.

    Follows:
        src/metric/elementwise_metric.cu EvalRowRMSLE.
    """
    check_same_shape(predictions, labels)
    for field, values in (("labels", labels), ("predictions", predictions)):
        below = values <= -1
        if below.any():
            index = tuple(int(i) for i in np.argwhere(below)[0])
            raise LossInputError(field, f"must be > -1 (log1p), got {values[index].item()!r}", index)
    return LossValues(squared_log_errors(predictions, labels, "torch", np.log1p))


@metric("xgboost", "mae", loss="mean_absolute_error", link="none (reg:absoluteerror)", precision=PER_ROW)
def mae(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Mean absolute error: XGBoost's `mae`.

    Formula:
        |y - p|

    Shapes:
        predictions: (N,) or (N, T); labels: the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu EvalRowMAE.
    """
    return LossValues(mean_absolute_error(predictions, labels, "torch").values)


@metric("xgboost", "mape", loss="mean_absolute_percentage_error", link="none", precision=PER_ROW)
def mape(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Mean absolute percentage error as a fraction: XGBoost's `mape`.

    Formula:
        |(y - p) / y| (no factor 100 and no floor on |y|, unlike Keras's mape); labels y != 0

    Shapes:
        predictions: (N,) or (N, T); labels: the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu EvalRowMAPE.
    """
    check_same_shape(predictions, labels)
    zero = labels == 0
    if zero.any():
        index = tuple(int(i) for i in np.argwhere(zero)[0])
        raise LossInputError("labels", "must not be 0: XGBoost's mape divides by the label (inf)", index)
    return LossValues(absolute_percentage_errors(predictions, labels, "torch", None))


HuberSlope = Annotated[float, Positive, Doc("XGBoost's huber_slope: where the loss turns from quadratic to linear")]


@metric("xgboost", "mphe", loss=None, link="none (reg:pseudohubererror)", precision=PER_ROW)
def mphe(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    huber_slope: HuberSlope = 1.0,
) -> LossValues:
    """Mean pseudo-Huber error: XGBoost's `mphe` (no catalogue loss is the pseudo-Huber loss).

    Formula:
        a = y - p; s = huber_slope; s^2 (sqrt(1 + (a / s)^2) - 1)

    Shapes:
        predictions: (N,) or (N, T); labels: the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu PseudoErrorLoss (pseudo_huber_param.huber_slope).
    """
    slope = predictions.dtype.type(_f32(huber_slope))

    def formula(p: Array, y: Array) -> Array:
        a = y - p
        return slope * slope * (np.sqrt(1 + np.square(a / slope)) - 1)  # type: ignore[no-any-return]

    return LossValues(elementwise_loss(predictions, labels, "torch", formula))


def _lgamma(values: Array) -> Array:
    """lgamma element-wise (NumPy has none): math.lgamma once per distinct value (counts repeat)."""
    distinct, inverse = np.unique(values, return_inverse=True)
    table = np.array([math.lgamma(v) for v in distinct.tolist()], dtype=values.dtype)
    return table[inverse].reshape(values.shape)


@metric("xgboost", "poisson-nloglik", loss="poisson", link="exp (count:poisson)", precision=PER_ROW)
def poisson_nloglik(
    predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False
) -> LossValues:
    """Poisson negative log-likelihood: XGBoost's `poisson-nloglik`.

    Formula:
        p' = max(p, 1e-16); lgamma(y + 1) + p' - y log p'  (poisson's p - y log p, with log y!)
        p = exp(x) with margin; labels y >= 0

    Shapes:
        predictions: rates (N,) or (N, T); labels: counts, the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu EvalPoissonNegLogLik; src/common/math.h LogGamma.
    """
    check_same_shape(predictions, labels)
    check_positive(labels, "labels", "Poisson counts", allow_zero=True)
    p = _exp(predictions, margin, "Poisson rates")
    p = np.maximum(p, p.dtype.type(LOG_EPS))
    return LossValues(_lgamma(labels + 1) + poisson_terms(p, labels, np.log(p)))


@metric("xgboost", "gamma-nloglik", loss=None, link="exp (reg:gamma)", precision=PER_ROW)
def gamma_nloglik(
    predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False
) -> LossValues:
    """Gamma negative log-likelihood with dispersion 1: XGBoost's `gamma-nloglik`.

    Formula:
        p' = max(p, 1e-6); theta = -1 / p'; -(y theta + log(-theta)) = y / p' + log p'
        p = exp(x) with margin; labels y > 0 (no catalogue loss is this likelihood)

    Shapes:
        predictions: means (N,) or (N, T); labels: the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu EvalGammaNLogLik (kPsi = 1, c = 0).
    """
    check_same_shape(predictions, labels)
    check_positive(labels, "labels", "gamma labels")
    p = _exp(predictions, margin, "gamma means")
    floor = p.dtype.type(GAMMA_FLOOR)
    return LossValues(elementwise_loss(p, labels, "torch", lambda p, y: gamma_nloglik_terms(np.maximum(p, floor), y)))


@metric("xgboost", "gamma-deviance", loss="gamma_deviance", link="exp (reg:gamma)", precision=PER_ROW)
def gamma_deviance(
    predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False
) -> LossValues:
    """Gamma deviance: XGBoost's `gamma-deviance`.

    Formula:
        gamma_deviance at (p + 1e-6, y + 1e-6): 2 (log(p' / y') + y' / p' - 1)
        (XGBoost sums the half deviance and doubles the mean); p = exp(x) with margin; y >= 0, p >= 0

    Shapes:
        predictions: means (N,) or (N, T); labels: the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu EvalGammaDeviance (kRtEps = 1e-6f).
    """
    check_same_shape(predictions, labels)
    check_positive(labels, "labels", "gamma labels", allow_zero=True)
    p = _exp(predictions, margin, "gamma means")
    eps = p.dtype.type(RT_EPS)
    return LossValues(elementwise_loss(p, labels, "torch", lambda p, y: unit_deviance(p + eps, y + eps, 2.0)))


TweediePower = Annotated[
    float,
    Range(gt=1.0, lt=2.0),
    Doc("rho, the Tweedie variance power (tweedie_variance_power); tweedie-nloglik@rho sets it"),
]


@metric(
    "xgboost",
    "tweedie-nloglik",
    loss=None,
    link="exp (reg:tweedie)",
    precision=PER_ROW,
    parameter="tweedie_variance_power",
    always_suffixed=True,
)
def tweedie_nloglik(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    tweedie_variance_power: TweediePower = 1.5,
) -> LossValues:
    """Tweedie negative log-likelihood without its label-only terms: XGBoost's `tweedie-nloglik@rho`.

    Formula:
        -y exp((1 - rho) log p) / (1 - rho) + exp((2 - rho) log p) / (2 - rho)
        p = exp(x) with margin; 1 < rho < 2 (XGBoost allows 1, where it divides by 0); y >= 0, p > 0

    Shapes:
        predictions: means (N,) or (N, T); labels: the same shape.
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu EvalTweedieNLogLik (rho read with atof, held as float).
    """
    check_same_shape(predictions, labels)
    check_positive(labels, "labels", "Tweedie labels", allow_zero=True)
    p = np.exp(predictions) if margin else predictions
    check_positive(p, "predictions", "Tweedie means" + (" (exp of the margins)" if margin else ""))
    rho = p.dtype.type(_f32(tweedie_variance_power))
    return LossValues(elementwise_loss(p, labels, "torch", lambda p, y: tweedie_nloglik_terms(np.log(p), y, rho)))


QuantileAlpha = Annotated[
    float | list[float],
    Probability,
    Doc("XGBoost's quantile_alpha: one quantile, or several with one prediction column each"),
]


@metric("xgboost", "quantile", loss="pinball", link="none (reg:quantileerror)", precision=PER_ROW)
def quantile(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    quantile_alpha: QuantileAlpha = 0.5,
) -> LossValues:
    """Quantile (pinball) loss: XGBoost's `quantile`.

    Formula:
        e = y - p; alpha e if e >= 0 else (alpha - 1) e (pinball, with XGBoost's alpha)
        several alphas: one prediction column per alpha, all values averaged together

    Shapes:
        predictions: (N,) for one alpha, (N, K) for K alphas; labels: (N,).
        per_sample: as predictions, each value times its sample's weight.

    Follows:
        src/metric/elementwise_metric.cu QuantileError (quantile_loss_param.quantile_alpha).
    """
    alphas = quantile_alpha if isinstance(quantile_alpha, list) else [quantile_alpha]
    if len(alphas) == 1 and predictions.ndim == 1:
        return LossValues(pinball(predictions, labels, "torch", alpha=_f32(alphas[0])).values)
    expected = [labels.shape[0], len(alphas)] if labels.ndim == 1 else None
    if expected is None or list(predictions.shape) != expected:
        raise LossInputError(
            "predictions",
            f"shape {list(predictions.shape)} should be {expected or '(N, K)'}: one column per quantile_alpha "
            f"({len(alphas)}), labels (N,)",
        )
    columns = [pinball(predictions[:, k], labels, "torch", alpha=_f32(alpha)).values for k, alpha in enumerate(alphas)]
    return LossValues(np.stack(columns, axis=1))
