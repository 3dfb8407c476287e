"""CatBoost's metrics for counts and positive targets (catboost/libs/metrics/metric.cpp
`TPoissonMetric`, `TTweedieMetric`): Poisson and Tweedie, each on the exp link of its objective."""

from __future__ import annotations

from typing import Annotated

import numpy as np

from service.engine.checks import check_positive, check_same_shape
from service.engine.conventions import Convention
from service.engine.libraries.base import metric
from service.engine.libraries.catboost.common import PER_OBJECT, Margin
from service.engine.losses._shared import elementwise_loss
from service.engine.losses.distribution import poisson_nll, poisson_terms, tweedie_nloglik_terms
from service.engine.options import Doc, Range
from service.engine.reduction import Array, LossValues


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
