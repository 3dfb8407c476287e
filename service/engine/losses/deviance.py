"""Tweedie deviances with scikit-learn's conventions (sklearn/metrics/_regression.py).

Each formula is scikit-learn's `_mean_tweedie_deviance`, term for term; each domain rule is
`mean_tweedie_deviance`'s, refused by index instead of by one ValueError. scikit-learn takes one
output; more outputs are averaged uniformly, as its mean_pinball_loss averages them. The mean is
np.average, sum(w l) / sum(w), under either convention.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np

from service.engine.checks import check_positive
from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.losses._shared import elementwise_loss
from service.engine.numerics import xlogy
from service.engine.options import Doc
from service.engine.reduction import Array, LossValues
from service.engine.registry import register


def _check_domain(predictions: Array, labels: Array, power: float) -> None:
    """scikit-learn's domain of each power: labels first, then predictions, the first bad index."""
    if not math.isfinite(power):
        raise LossInputError("options.power", f"must be a finite number, got {power!r}")
    if 0 < power < 1:
        raise LossInputError("options.power", f"must be <= 0 or >= 1 (no Tweedie distribution between), got {power!r}")
    meaning = f"with power {power:g},"
    if 1 <= power < 2:
        check_positive(labels, "labels", f"{meaning} labels", allow_zero=True)
    elif power >= 2:
        check_positive(labels, "labels", f"{meaning} labels")
    if power != 0:
        check_positive(predictions, "predictions", f"{meaning} predictions")


def unit_deviance(p: Array, y: Array, power: float) -> Array:
    """The unit deviance d(y, p) of a Tweedie distribution of variance power `power`."""
    if power == 0:  # normal: the squared error
        error = y - p
        return np.multiply(error, error, out=error)
    if power == 1:  # Poisson; y log(y / p) is 0 at y = 0
        return 2 * (xlogy(y, y / p) - y + p)
    if power == 2:  # gamma
        return 2 * (np.log(p / y) + y / p - 1)
    # power < 0 takes any real y: only its positive part is raised to 2 - power (> 2), as scikit-learn.
    base = np.where(y > 0, y, 0) if power < 0 else y
    return 2 * (
        np.power(base, 2 - power) / ((1 - power) * (2 - power))
        - y * np.power(p, 1 - power) / (1 - power)
        + np.power(p, 2 - power) / (2 - power)
    )


def _tweedie(predictions: Array, labels: Array, convention: Convention, power: float) -> LossValues:
    _check_domain(predictions, labels, power)
    # Inside the domain only overflow (p / y beyond the dtype) makes a value non-finite: the
    # reduction then refuses that sample by its index.
    with np.errstate(divide="ignore", invalid="ignore"):
        values = elementwise_loss(predictions, labels, convention, lambda p, y: unit_deviance(p, y, power))
    return LossValues(values, weighted_average=True)


@register("tweedie_deviance", aliases=("mean_tweedie_deviance",))
def tweedie_deviance(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    power: Annotated[
        float,
        Doc(
            "the variance power: <= 0 or >= 1 (0 normal, 1 Poisson, (1, 2) compound Poisson, 2 gamma, "
            "3 inverse Gaussian); 0 < power < 1 is refused, as scikit-learn refuses it"
        ),
    ] = 0.0,
) -> LossValues:
    """Mean Tweedie deviance with scikit-learn's conventions and domain rules.

    Formula:
        power 0: (y - p)^2;  1: 2 (y log(y / p) - y + p);  2: 2 (log(p / y) + y / p - 1)
        otherwise: 2 (max(y, 0)^(2-q) / ((1-q)(2-q)) - y p^(1-q) / (1-q) + p^(2-q) / (2-q)), q = power
        domain: q < 0: p > 0; q = 0: any; 1 <= q < 2: y >= 0, p > 0; q >= 2: y > 0, p > 0
        keras: mean_last; torch: per element; mean: sum(w l) / sum(w) (np.average) under both

    Shapes:
        predictions: (N, ...); labels: the same shape.
        per_sample: keras (N, ...) without the last axis ((N,) stays (N,)); torch as predictions.

    Follows:
        sklearn/metrics/_regression.py mean_tweedie_deviance and _mean_tweedie_deviance.
    """
    return _tweedie(predictions, labels, convention, power)


@register("poisson_deviance", aliases=("mean_poisson_deviance",))
def poisson_deviance(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Mean Poisson deviance: the Tweedie deviance with power 1, as scikit-learn computes it.

    Formula:
        2 (y log(y / p) - y + p), 0 log 0 = 0; labels y >= 0, predictions p > 0
        keras: mean_last; torch: per element; mean: sum(w l) / sum(w) (np.average) under both

    Shapes:
        predictions: (N, ...); labels: the same shape.
        per_sample: keras (N, ...) without the last axis ((N,) stays (N,)); torch as predictions.

    Follows:
        sklearn/metrics/_regression.py mean_poisson_deviance (mean_tweedie_deviance, power=1).
    """
    return _tweedie(predictions, labels, convention, 1.0)


@register("gamma_deviance", aliases=("mean_gamma_deviance",))
def gamma_deviance(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Mean gamma deviance: the Tweedie deviance with power 2, as scikit-learn computes it.

    Formula:
        2 (log(p / y) + y / p - 1); labels y > 0, predictions p > 0
        keras: mean_last; torch: per element; mean: sum(w l) / sum(w) (np.average) under both

    Shapes:
        predictions: (N, ...); labels: the same shape.
        per_sample: keras (N, ...) without the last axis ((N,) stays (N,)); torch as predictions.

    Follows:
        sklearn/metrics/_regression.py mean_gamma_deviance (mean_tweedie_deviance, power=2).
    """
    return _tweedie(predictions, labels, convention, 2.0)
