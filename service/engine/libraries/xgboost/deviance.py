"""XGBoost's metrics for counts and positive targets (src/metric/elementwise_metric.cu):
poisson-nloglik, gamma-nloglik, gamma-deviance and tweedie-nloglik, each on the exp link of its
objective."""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np

from service.engine.checks import check_positive, check_same_shape
from service.engine.conventions import Convention
from service.engine.libraries.base import metric
from service.engine.libraries.xgboost.links import GAMMA_FLOOR, LOG_EPS, PER_ROW, RT_EPS, Margin, _exp, _f32
from service.engine.losses._shared import elementwise_loss
from service.engine.losses.deviance import unit_deviance
from service.engine.losses.distribution import gamma_nloglik_terms, poisson_terms, tweedie_nloglik_terms
from service.engine.options import Doc, Range
from service.engine.reduction import Array, LossValues


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
