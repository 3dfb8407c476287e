"""LightGBM's metrics for counts and positive targets (src/metric/regression_metric.hpp): poisson,
gamma, gamma_deviance and tweedie, each on the exp link of its objective."""

from __future__ import annotations

from typing import Annotated

import numpy as np

from service.engine.checks import check_positive
from service.engine.conventions import Convention
from service.engine.libraries.base import metric
from service.engine.libraries.lightgbm.cross_entropy import _float32_log_residue
from service.engine.libraries.lightgbm.objectives import (
    F32_INPUTS,
    GAMMA_DEVIANCE_EPS,
    RATE_FLOOR,
    Margin,
    Objective,
    Sigmoid,
    _objective_doc,
    _scores,
)
from service.engine.losses._shared import elementwise_loss
from service.engine.losses.deviance import unit_deviance
from service.engine.losses.distribution import gamma_nloglik_terms, poisson_terms, tweedie_nloglik_terms
from service.engine.options import Doc, Range
from service.engine.reduction import Array, LossValues

PoissonObjective = Annotated[Objective, Doc(_objective_doc("poisson"))]
GammaObjective = Annotated[Objective, Doc(_objective_doc("gamma"))]
TweedieObjective = Annotated[Objective, Doc(_objective_doc("tweedie"))]
TweediePower = Annotated[
    float,
    Range(gt=1.0, lt=2.0),
    Doc("LightGBM's tweedie_variance_power rho (LightGBM accepts 1, where the metric divides by 0)"),
]


@metric(
    "lightgbm",
    "poisson",
    loss="poisson",
    link="objective's: poisson, exp",
    precision=F32_INPUTS,
    float32_targets=True,
)
def poisson(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: PoissonObjective = "poisson",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Poisson negative log-likelihood without log y!: LightGBM's `poisson`.

    Formula:
        p' = max(p, 1e-10f); p' - y log p' (poisson's p - y log p, floored where Keras adds 1e-7); y >= 0

    Shapes:
        predictions: rates (N,); labels: counts (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp PoissonMetric::LossOnPoint.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "poisson")
    check_positive(labels, "labels", "Poisson counts", allow_zero=True)
    p = np.maximum(p, RATE_FLOOR)
    return LossValues(poisson_terms(p, labels, np.log(p)))


def _gamma_means(predictions: Array, labels: Array, margin: bool, objective: str, sigmoid: float) -> Array:
    p = _scores(predictions, labels, margin, objective, sigmoid, "gamma")
    check_positive(labels, "labels", "gamma labels")
    return p


@metric(
    "lightgbm",
    "gamma",
    loss=None,
    link="objective's: gamma, exp",
    precision=F32_INPUTS + "; log y also in float32",
    float32_targets=True,
)
def gamma(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: GammaObjective = "gamma",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Gamma negative log-likelihood with dispersion 1: LightGBM's `gamma`.

    Formula:
        -((y theta - b) + c), theta = -1 / p, b = -log(-theta), c = log y - logf(y): y / p + log p - c
        c is the float32 rounding of log y (about 1e-8), not 0; labels y > 0, p > 0 (no catalogue loss)

    Shapes:
        predictions: means (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp GammaMetric::LossOnPoint (psi = 1, SafeLog<label_t>).
    """
    p = _gamma_means(predictions, labels, margin, objective, sigmoid)
    if not margin:
        check_positive(p, "predictions", "gamma means")
    return LossValues(gamma_nloglik_terms(p, labels) - _float32_log_residue(labels))


@metric(
    "lightgbm",
    "gamma_deviance",
    loss="gamma_deviance",
    link="objective's: gamma, exp",
    precision=F32_INPUTS,
    aggregate="sum",
    float32_targets=True,
)
def gamma_deviance(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: GammaObjective = "gamma",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Gamma deviance, summed: LightGBM's `gamma_deviance`.

    Formula:
        per value gamma_deviance at (p + 1e-9, y): 2 (y / p' - log(y / p') - 1); y > 0, p >= 0
        mean: sum(w l), the weighted sum (LightGBM doubles sum(w l / 2) and divides by nothing)

    Shapes:
        predictions: means (N,); labels: (N,).
        per_sample: w l per value; `sum` and `mean` their sum; `denominator` sum(w), unused.

    Follows:
        src/metric/regression_metric.hpp GammaDevianceMetric (LossOnPoint, AverageLoss: sum_loss * 2).
    """
    p = _gamma_means(predictions, labels, margin, objective, sigmoid)
    if not margin:
        check_positive(p, "predictions", "gamma means", allow_zero=True)
    eps = GAMMA_DEVIANCE_EPS
    return LossValues(elementwise_loss(p, labels, "torch", lambda p, y: unit_deviance(p + eps, y, 2.0)))


@metric(
    "lightgbm",
    "tweedie",
    loss=None,
    link="objective's: tweedie, exp",
    precision=F32_INPUTS,
    float32_targets=True,
)
def tweedie(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: TweedieObjective = "tweedie",
    sigmoid: Sigmoid = 1.0,
    tweedie_variance_power: TweediePower = 1.5,
) -> LossValues:
    """Tweedie negative log-likelihood without its label-only terms: LightGBM's `tweedie`.

    Formula:
        p' = max(p, 1e-10f); -y p'^(1-rho) / (1-rho) + p'^(2-rho) / (2-rho), from log p'
        labels y >= 0; no catalogue loss (tweedie_deviance differs by terms in y and a factor 2)

    Shapes:
        predictions: means (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp TweedieMetric::LossOnPoint (tweedie_variance_power, double).
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "tweedie")
    check_positive(labels, "labels", "Tweedie labels", allow_zero=True)
    return LossValues(tweedie_nloglik_terms(np.log(np.maximum(p, RATE_FLOOR)), labels, tweedie_variance_power))
