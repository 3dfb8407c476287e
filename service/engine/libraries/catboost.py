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

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import check_class_indices, check_in_range, check_positive, check_same_shape
from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.libraries.base import metric
from service.engine.losses._shared import elementwise_loss
from service.engine.losses.crossentropy import binary_crossentropy, binary_log_loss, sparse_categorical_crossentropy
from service.engine.losses.distribution import poisson_nll, poisson_terms, tweedie_nloglik_terms
from service.engine.losses.regression import mean_absolute_error, mean_squared_error, pinball
from service.engine.options import Doc, Probability, Range
from service.engine.reduction import Array, LossValues

TARGET_BORDER = 0.5  # GetDefaultTargetBorder(): Logloss counts a target as positive when target > 0.5
MAE_DELTA = 1e-6  # TQuantileMetric::MaeDelta, and Quantile's default delta
MAX_DELTA = 1e-2  # "Parameter delta for quantile metric should be in interval [0, 0.01]"
# Two-column probabilities are CatBoost's [1 - p, p]: their rows sum to 1 within this.
ROW_SUM_TOLERANCE = 1e-9

Margin = Annotated[
    bool, Doc('predictions are raw formula values (predict(prediction_type="RawFormulaVal")), not predict\'s output')
]
PER_OBJECT = "double per object, from float32 labels and weights; summed in double"
SHAPES = """predictions: (N,); labels: (N,).
per_sample: (N,), each value times its sample's float32 weight."""


def _probability_logs(predictions: Array, n: int) -> tuple[Array, Array]:
    """log p and log(1 - p) of the positive class, from predict_proba's [1 - p, p] columns or the
    positive column p alone (CatBoost's first column is 1 - p, computed from p)."""
    if predictions.shape == (n, 2):
        sums = predictions.sum(axis=1)
        off = np.abs(sums - 1) > ROW_SUM_TOLERANCE
        if off.any():
            i = int(np.argmax(off))
            raise LossInputError(
                "predictions",
                f"two columns are CatBoost's [1 - p, p] probabilities; this row sums to {sums[i].item()!r}",
                (i,),
            )
        p = predictions[:, 1]
    elif predictions.shape == (n,):
        p = predictions
    else:
        raise LossInputError(
            "predictions",
            f"shape {list(predictions.shape)} should be [{n}] (the positive class's probability) or [{n}, 2] "
            "(predict_proba's [1 - p, p])",
        )
    bad = (p <= 0) | (p >= 1)
    if bad.any():
        index = (int(np.argmax(bad)),) + ((1,) if predictions.ndim == 2 else ())
        raise LossInputError(
            "predictions",
            f"must be a probability strictly between 0 and 1 (margin is false), got {predictions[index].item()!r}: "
            "at 0 or 1 the raw value is lost; send RawFormulaVal with margin: true",
            index,
        )
    return np.log(p), np.log1p(-p)


def _binary_labels(labels: Array, n: int, meaning: str) -> None:
    if labels.shape != (n,):
        raise LossInputError("labels", f"shape {list(labels.shape)} should be [{n}]: one target per object")
    check_in_range(labels, "labels", 0.0, 1.0, meaning)


def _cross_entropy(predictions: Array, targets: Array, margin: bool) -> Array:
    """-(y log p + (1 - y) log(1 - p)) = log(1 + e^a) - y a: binary_crossentropy on the raw value."""
    if margin:
        return binary_crossentropy(predictions, targets, "torch", from_logits=True).values
    log_p, log_q = _probability_logs(predictions, targets.shape[0])
    return binary_log_loss(targets, log_p, log_q)


@metric(
    "catboost",
    "Logloss",
    loss="binary_crossentropy",
    link="sigmoid",
    precision=PER_OBJECT,
    float32_targets=True,
)
def logloss(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Negative log-likelihood of targets binarised at 0.5: CatBoost's `Logloss`.

    Formula:
        t = 1 if y > 0.5 else 0 (soft targets become 0 or 1); log(1 + e^a) - t a, no clipping
        binary_crossentropy on the raw value a; from probabilities -(t log p + (1 - t) log(1 - p))

    Shapes:
        predictions: probabilities (N,) or predict_proba's (N, 2) [1 - p, p]; raw values (N,) with margin.
        labels: (N,) in [0, 1]. per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TCrossEntropyMetric (TargetBorder = GetDefaultTargetBorder()).
    """
    _binary_labels(labels, predictions.shape[0], "Logloss targets (0/1, or probabilities binarised at 0.5)")
    positive = (labels > TARGET_BORDER).astype(labels.dtype)
    return LossValues(_cross_entropy(predictions, positive, margin))


@metric(
    "catboost",
    "CrossEntropy",
    loss="binary_crossentropy",
    link="sigmoid",
    precision=PER_OBJECT,
    float32_targets=True,
)
def cross_entropy(
    predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False
) -> LossValues:
    """Cross-entropy with soft targets: CatBoost's `CrossEntropy`.

    Formula:
        log(1 + e^a) - y a with y the target probability as given (Logloss without binarising)
        binary_crossentropy on the raw value a; from probabilities -(y log p + (1 - y) log(1 - p))

    Shapes:
        predictions: probabilities (N,) or predict_proba's (N, 2) [1 - p, p]; raw values (N,) with margin.
        labels: probabilities (N,) in [0, 1]. per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TCrossEntropyMetric.
    """
    _binary_labels(labels, predictions.shape[0], "CrossEntropy targets (probabilities)")
    return LossValues(_cross_entropy(predictions, labels, margin))


@metric(
    "catboost",
    "MultiClass",
    loss="sparse_categorical_crossentropy",
    link="softmax",
    precision=PER_OBJECT,
    class_labels=True,
    float32_targets=True,
)
def multi_class(
    predictions: Array, labels: NDArray[np.intp], convention: Convention, /, *, margin: Margin = False
) -> LossValues:
    """Multi-class negative log-likelihood: CatBoost's `MultiClass`.

    Formula:
        -(a_y - max(a) - log sum_j exp(a_j - max(a))): log-softmax of the raw values, no clipping
        sparse_categorical_crossentropy from logits; from probabilities p the raw values are log p

    Shapes:
        predictions: softmax rows (N, C) (predict_proba), or raw values (N, C) with margin.
        labels: class indices (N,) in [0, C). per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TMultiClassMetric.
    """
    if predictions.ndim != 2 or labels.shape != predictions.shape[:1]:
        raise LossInputError(
            "predictions" if predictions.ndim != 2 else "labels",
            f"predictions {list(predictions.shape)} and labels {list(labels.shape)} should be (N, C) and (N,)",
        )
    check_class_indices(labels, predictions.shape[1], None)
    raw = predictions
    if not margin:
        check_in_range(predictions, "predictions", 0.0, 1.0, "class probabilities (margin is false)")
        picked = predictions[np.arange(labels.shape[0]), labels]
        if (picked == 0).any():
            i = int(np.argmax(picked == 0))
            raise LossInputError(
                "predictions",
                "the labelled class has probability 0, which loses its raw value; send RawFormulaVal with margin: true",
                (i, int(labels[i])),
            )
        raw = np.log(predictions)
    return LossValues(sparse_categorical_crossentropy(raw, labels, "torch", from_logits=True).values)


@metric(
    "catboost",
    "RMSE",
    loss="mean_squared_error",
    link="none",
    precision=PER_OBJECT,
    aggregate="root_mean",
    float32_targets=True,
)
def rmse(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Root mean squared error: CatBoost's `RMSE`.

    Formula:
        per object (a - y)^2; mean: sqrt(sum(w (a - y)^2) / (sum(w) + 1e-38))

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: w (a - y)^2 per object; `mean` the root of sum / denominator.

    Follows:
        catboost/libs/metrics/metric.cpp TRMSEMetric (GetFinalError).
    """
    check_same_shape(predictions, labels)
    return LossValues(mean_squared_error(predictions, labels, "torch").values)


def _dead_zone(predictions: Array, labels: Array, delta: float) -> Array:
    """CatBoost's quantile error e = y - a moved towards 0 by delta: 0 where |e| < delta, e as is where
    |e| == delta (CatBoost moves only |e| > delta, and its multiplier is not 0 there)."""
    check_same_shape(predictions, labels)
    e = labels - predictions
    d = e.dtype.type(delta)
    return np.where(np.abs(e) < d, 0, np.where(e > d, e - d, np.where(e < -d, e + d, e)))


@metric(
    "catboost",
    "MAE",
    loss="mean_absolute_error",
    link="none",
    precision=PER_OBJECT,
    float32_targets=True,
)
def mae(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Mean absolute error less CatBoost's 1e-6 dead zone: CatBoost's `MAE`.

    Formula:
        |y - a| - 1e-6 where |y - a| > 1e-6, 0 where |y - a| < 1e-6 (1e-6 at equality)
        2 Quantile(alpha = 0.5, delta = 1e-6): mean_absolute_error of the error moved towards 0 by 1e-6

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TQuantileMetric (MaeAlpha = 0.5, MaeDelta = 1e-6, Stats[0] *= 2).
    """
    moved = _dead_zone(predictions, labels, MAE_DELTA)
    return LossValues(mean_absolute_error(np.zeros_like(moved), moved, "torch").values)


Alpha = Annotated[
    float, Probability, Doc("the quantile (CatBoost's alpha, read as double); Quantile:alpha=0.3 sets it")
]
Delta = Annotated[
    float,
    Range(ge=0.0, le=MAX_DELTA),
    Doc("errors smaller than delta count 0 and larger ones are moved towards 0 by delta (CatBoost's delta)"),
]


def _describe_quantile(bound: Mapping[str, Any]) -> str:
    """TQuantileMetric::GetDescription: alpha with %.3g, delta with %g when it is not 1e-6."""
    described = f"Quantile:alpha={bound['alpha']:.3g}"
    return described if bound["delta"] == MAE_DELTA else f"{described};delta={bound['delta']:g}"


@metric(
    "catboost",
    "Quantile",
    loss="pinball",
    link="none",
    precision=PER_OBJECT,
    parameter="alpha",
    describe=_describe_quantile,
    float32_targets=True,
)
def quantile(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    alpha: Alpha = 0.5,
    delta: Delta = MAE_DELTA,
) -> LossValues:
    """Quantile (pinball) loss with a dead zone: CatBoost's `Quantile`.

    Formula:
        e = y - a; 0 if |e| < delta; else e' = e moved towards 0 by delta (e at |e| = delta),
        alpha e' if e > 0 else -(1 - alpha) e': pinball of the moved error; alpha 0.5, delta 1e-6 by default

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TQuantileMetric (alpha, delta: GetParamOrDefault, double).
    """
    moved = _dead_zone(predictions, labels, delta)
    return LossValues(pinball(np.zeros_like(moved), moved, "torch", alpha=alpha).values)


def _log_means(predictions: Array, margin: bool, meaning: str) -> Array:
    if margin:
        return predictions
    check_positive(predictions, "predictions", f"{meaning} (exp of the raw values; margin is false)")
    return np.log(predictions)


@metric(
    "catboost",
    "Poisson",
    loss="poisson_nll",
    link="exp",
    precision=PER_OBJECT,
    float32_targets=True,
)
def poisson(predictions: Array, labels: Array, convention: Convention, /, *, margin: Margin = False) -> LossValues:
    """Poisson negative log-likelihood without log(y!): CatBoost's `Poisson`.

    Formula:
        exp(a) - y a: poisson_nll with log_input on the raw value; from means p: p - y log p
        labels y >= 0

    Shapes:
        predictions: means (N,) (predict's Exponent), or raw log-means (N,) with margin; labels: counts (N,).
        per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TPoissonMetric (non-exp approx: exp(a) - target a).
    """
    check_same_shape(predictions, labels)
    check_positive(labels, "labels", "Poisson counts", allow_zero=True)
    if margin:
        return LossValues(poisson_nll(predictions, labels, "torch", log_input=True).values)
    check_positive(predictions, "predictions", "Poisson means (exp of the raw values; margin is false)")
    return LossValues(poisson_terms(predictions, labels, np.log(predictions)))


def _f32(value: float) -> float:
    """A parameter CatBoost reads with FromString<float>."""
    return float(np.float32(value))


VariancePower = Annotated[
    float,
    Range(gt=1.0, lt=2.0),
    Doc("rho, the Tweedie variance power, required (read as a float32); Tweedie:variance_power=1.5 sets it"),
]


@metric(
    "catboost",
    "Tweedie",
    loss=None,
    link="exp",
    precision=PER_OBJECT + "; variance_power as float32",
    parameter="variance_power",
    always_suffixed=True,
    describe=lambda bound: f"Tweedie:variance_power={bound['variance_power']:g}",
    float32_targets=True,
)
def tweedie(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    variance_power: VariancePower = 1.5,
) -> LossValues:
    """Tweedie negative log-likelihood without its label-only terms: CatBoost's `Tweedie`.

    Formula:
        -y exp((1 - rho) a) / (1 - rho) + exp((2 - rho) a) / (2 - rho), rho = float32(variance_power)
        a = log p from means; 1 < rho < 2; labels y >= 0 (no catalogue loss is this likelihood)

    Shapes:
        predictions: means (N,) (predict's Exponent), or raw log-means (N,) with margin; labels: (N,).
        per_sample: (N,), each value times its sample's float32 weight.

    Follows:
        catboost/libs/metrics/metric.cpp TTweedieMetric (variance_power: FromString<float>).
    """
    check_same_shape(predictions, labels)
    check_positive(labels, "labels", "Tweedie targets", allow_zero=True)
    log_mu = _log_means(predictions, margin, "Tweedie means")
    rho = predictions.dtype.type(_f32(variance_power))
    return LossValues(elementwise_loss(log_mu, labels, "torch", lambda a, y: tweedie_nloglik_terms(a, y, rho)))
