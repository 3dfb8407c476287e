"""Losses of count and density models, and divergences between distributions.

Keras source followed: keras/src/losses/losses.py (poisson, kl_divergence). PyTorch:
torch/nn/functional.py (poisson_nll_loss, gaussian_nll_loss, kl_div).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np

from service.engine.checks import check_in_range, check_positive, check_same_shape
from service.engine.conventions import KERAS_EPSILON, Convention
from service.engine.errors import LossInputError
from service.engine.losses._shared import elementwise_loss, per_sample_mean
from service.engine.numerics import xlogy
from service.engine.options import Doc, OnlyUnder, Positive
from service.engine.reduction import Array, LossValues
from service.engine.registry import register


@register("poisson")
def poisson(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Poisson loss of predicted rates against observed counts (Keras).

    Formula:
        mean_last(p - y log(p + 1e-7)); torch: per element

    Shapes:
        predictions: rates >= 0, (N, ...); labels: counts, the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        keras/src/losses/losses.py poisson.
    """
    check_positive(predictions, "predictions", "Poisson rates", allow_zero=True)
    return LossValues(
        elementwise_loss(predictions, labels, convention, lambda p, y: poisson_terms(p, y, np.log(p + KERAS_EPSILON)))
    )


def poisson_terms(p: Array, y: Array, log_p: Array) -> Array:
    """p - y log p, the Poisson negative log-likelihood without log(y!), from each convention's log p:
    Keras's log(p + 1e-7); XGBoost's `poisson-nloglik` log(max(p, 1e-16)) (which adds lgamma(y + 1))."""
    return p - y * log_p


def gamma_nloglik_terms(p: Array, y: Array) -> Array:
    """-(y theta - b) with theta = -1 / p, b = -log(-theta): y / p + log p, the gamma negative
    log-likelihood with dispersion 1 as the boosting libraries write it (XGBoost's `gamma-nloglik`
    from max(p, 1e-6); LightGBM's `gamma`, which subtracts its float32 log residue)."""
    theta = -1 / p
    b = -np.log(-theta)
    return -(y * theta - b)


def tweedie_nloglik_terms(log_p: Array, y: Array, rho: float | np.floating[Any]) -> Array:
    """-y exp((1 - rho) log p) / (1 - rho) + exp((2 - rho) log p) / (2 - rho): the Tweedie negative
    log-likelihood without its label-only terms, from the log of the mean (XGBoost's
    `tweedie-nloglik` and LightGBM's `tweedie` from log p, CatBoost's `Tweedie` from the raw value).
    `rho` in the array's dtype, or a Python float."""
    a = y * np.exp((1 - rho) * log_p) / (1 - rho)
    b = np.exp((2 - rho) * log_p) / (2 - rho)
    return -a + b


@register("poisson_nll", aliases=("poisson_nll_loss",))
def poisson_nll(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    log_input: Annotated[bool, Doc("predictions are log-rates (PyTorch's default), not rates")] = True,
    full: Annotated[bool, Doc("add the Stirling term y log y - y + 0.5 log(2 pi y) where y > 1")] = False,
    eps: Annotated[float, Positive, Doc("added to rates before the log when log_input is false")] = 1e-8,
) -> LossValues:
    """Poisson negative log-likelihood (PyTorch PoissonNLLLoss).

    Formula:
        log_input: exp(x) - y x; else x - y log(x + eps); full: + (y log y - y + 0.5 log(2 pi y)) [y > 1]

    Shapes:
        predictions: (N, ...); labels: counts >= 0, the same shape.
        per_sample: keras (N, ...) without the last axis; torch as predictions.

    Follows:
        torch/nn/functional.py poisson_nll_loss.
    """
    check_positive(labels, "labels", "counts", allow_zero=True)
    if not log_input:
        check_positive(predictions, "predictions", "rates (log_input is false)", allow_zero=True)

    def formula(x: Array, y: Array) -> Array:
        loss = np.exp(x) - y * x if log_input else x - y * np.log(x + eps)
        if full:
            with np.errstate(divide="ignore", invalid="ignore"):
                stirling = y * np.log(y) - y + 0.5 * np.log(2 * math.pi * y)
            loss = loss + np.where(y <= 1, 0.0, stirling).astype(x.dtype)
        return loss

    return LossValues(elementwise_loss(predictions, labels, convention, formula))


@register("gaussian_nll", aliases=("gaussian_nll_loss",))
def gaussian_nll(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    full: Annotated[bool, Doc("add the constant 0.5 log(2 pi)")] = False,
    eps: Annotated[float, Positive, Doc("variances are raised to at least eps")] = 1e-6,
) -> LossValues:
    """Gaussian negative log-likelihood with a predicted variance (PyTorch GaussianNLLLoss).

    Formula:
        v = max(var, eps); 0.5 (log v + (mean - y)^2 / v) [+ 0.5 log(2 pi) if full]

    Shapes:
        predictions: (N, ..., 2) holding [mean, variance] on the last axis; labels: (N, ...).
        per_sample: keras (N, ...) without labels' last axis (a 1-D batch stays (N,)); torch as labels.

    Follows:
        torch/nn/functional.py gaussian_nll_loss.
    """
    if predictions.ndim < 2 or predictions.shape[-1] != 2:
        raise LossInputError(
            "predictions", f"needs a last axis of 2 ([mean, variance]), got shape {list(predictions.shape)}"
        )
    mean, variance = predictions[..., 0], predictions[..., 1]
    check_same_shape(mean, labels)
    if (variance < 0).any():
        index = tuple(int(i) for i in np.argwhere(variance < 0)[0])
        raise LossInputError("predictions", f"variance must be >= 0, got {variance[index].item()!r}", (*index, 1))
    v = np.maximum(variance, eps)
    loss = 0.5 * (np.log(v) + (mean - labels) ** 2 / v)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return LossValues(per_sample_mean(loss, convention))


@register("kl_divergence", aliases=("kld", "kl_div", "kullback_leibler_divergence"))
def kl_divergence(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    log_input: Annotated[
        bool, OnlyUnder("torch"), Doc("predictions are log-probabilities, as KLDivLoss expects")
    ] = False,
    log_target: Annotated[bool, OnlyUnder("torch"), Doc("labels are log-probabilities (KLDivLoss log_target)")] = False,
) -> LossValues:
    """Kullback-Leibler divergence KL(labels || predictions) over the last axis.

    Formula:
        keras: sum_last(y' log(y' / p')), y' = clip(y, 1e-7, 1), p' = clip(p, 1e-7, 1)
        torch: sum_last(xlogy(y, y) - y log p), or exp(y) (y - log p) with log_target;
               the mean divides the sum by N, the batch size, whatever the number of axes:
               reduction='batchmean'

    Shapes:
        predictions: distributions (N, ..., C); labels: the same shape.
        per_sample: (N, ...), each sample's divergence.

    Follows:
        keras/src/losses/losses.py kl_divergence; torch/nn/functional.py kl_div (reduction='batchmean').
    """
    check_same_shape(predictions, labels)
    if convention == "keras":
        check_in_range(predictions, "predictions", 0.0, 1.0, "probabilities")
        check_in_range(labels, "labels", 0.0, 1.0, "probabilities")
        y = np.clip(labels, KERAS_EPSILON, 1)
        p = np.clip(predictions, KERAS_EPSILON, 1)
        return LossValues((y * np.log(y / p)).sum(axis=-1))
    if not log_input:
        check_in_range(predictions, "predictions", 0.0, 1.0, "probabilities (log_input is false)")
    if not log_target:
        check_in_range(labels, "labels", 0.0, 1.0, "probabilities (log_target is false)")
    with np.errstate(divide="ignore"):
        log_p = predictions if log_input else np.log(predictions)
    with np.errstate(invalid="ignore"):
        pointwise = np.exp(labels) * (labels - log_p) if log_target else xlogy(labels, labels) - labels * log_p
    return LossValues(pointwise.sum(axis=-1), batch_mean=True)
