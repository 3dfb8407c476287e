"""The continuous ranked probability score of a forecast distribution against one observation.

CRPS(F, y) = integral over z of (F(z) - 1{z >= y})^2 dz, as the `properscoring` package
(TheClimateCorporation/properscoring, properscoring/_crps.py) defines it for a Gaussian and for an
ensemble. Neither Keras nor PyTorch has it: both conventions compute the same per-sample score, and
the mean is the weighted average of the samples, sum(w l) / sum(w), as `np.average` gives it.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np

from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.options import Doc, NonNegative
from service.engine.reduction import Array, LossValues
from service.engine.registry import register

# math.erf (the C library's, correct to an ulp) one block at a time: NumPy has no erf, and a block
# bounds the Python floats held at once.
_ERF_BLOCK = 512
_erf = np.frompyfunc(math.erf, 1, 1)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erf_of(x: Array) -> Array:
    """erf element-wise, evaluated in float64 and returned in x's dtype."""
    out = np.empty(x.shape, dtype=x.dtype)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for start in range(0, flat_in.size, _ERF_BLOCK):
        block = flat_in[start : start + _ERF_BLOCK]
        flat_out[start : start + _ERF_BLOCK] = np.asarray(_erf(block.astype(np.float64)), dtype=np.float64)
    return out


def _scores_per_sample(predictions: Array, labels: Array, width: int | None, meaning: str) -> None:
    """predictions (N, width) (any width >= 1 when None) against labels (N,)."""
    if predictions.ndim != 2 or (width is not None and predictions.shape[1] != width):
        raise LossInputError("predictions", f"must be {meaning}, got shape {list(predictions.shape)}")
    if labels.shape != predictions.shape[:1]:
        raise LossInputError("labels", f"shape {list(labels.shape)} should be [{predictions.shape[0]}]")


@register("crps_gaussian", aliases=("crps_normal",))
def crps_gaussian(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Continuous ranked probability score of a Gaussian forecast N(mu, sigma^2) at the observation y.

    Formula:
        z = (y - mu) / sigma; sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi))
        evaluated as |y - mu| erf(|z| / sqrt 2) + sigma (2 phi(z) - 1/sqrt(pi)); sigma = 0: |y - mu|
        mean: sum(w l) / sum(w) under either convention (np.average)

    Shapes:
        predictions: (N, 2) = [mean, standard deviation >= 0] per sample; labels: observations (N,).
        per_sample: (N,).

    Follows:
        properscoring/_crps.py crps_gaussian (Gneiting, Raftery, Westveld and Goldman 2005, eq. 5);
        sigma = 0 is the limit, a point forecast's |y - mu|, where properscoring returns NaN.
    """
    _scores_per_sample(predictions, labels, 2, "(N, 2) = [mean, std] per sample")
    mu, sigma = predictions[:, 0], predictions[:, 1]
    negative = sigma < 0
    if negative.any():
        index = int(np.argmax(negative))
        raise LossInputError(
            "predictions", f"the standard deviation must be >= 0, got {sigma[index].item()!r}", (index, 1)
        )
    error = labels - mu
    degenerate = sigma == 0
    # |y - mu| multiplies erf instead of sigma multiplying z: z overflows for tiny sigma, y - mu does not.
    z = np.divide(np.abs(error), sigma, out=np.zeros_like(sigma), where=~degenerate)
    with np.errstate(over="ignore", under="ignore"):
        spread = sigma * (2.0 * _INV_SQRT_2PI * np.exp(-0.5 * z * z) - _INV_SQRT_PI)
    values = np.abs(error) * _erf_of(z * np.sqrt(0.5, dtype=z.dtype)) + spread
    return LossValues(np.where(degenerate, np.abs(error), values), weighted_average=True)


@register("crps_ensemble")
def crps_ensemble(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    weights: Annotated[
        list[float] | None,
        NonNegative,
        Doc("one probability weight per ensemble member (properscoring's `weights`), normalised to sum 1"),
    ] = None,
) -> LossValues:
    """Continuous ranked probability score of an ensemble's empirical distribution at the observation y.

    Formula:
        F(z) = sum_{m: x_m <= z} w_m / sum w; integral of (F(z) - 1{z >= y})^2 dz
        = sum_m w_m |x_m - y| - 1/2 sum_{m,k} w_m w_k |x_m - x_k| (w normalised; equal by default)
        mean: sum(w l) / sum(w) under either convention (np.average)

    Shapes:
        predictions: ensemble members (N, M), M >= 1; labels: observations (N,).
        per_sample: (N,).

    Follows:
        properscoring/_crps.py crps_ensemble (its `weights` per member; Hersbach 2000, Gneiting and
        Raftery 2007). properscoring 0.1 has no `fair` option.
    """
    _scores_per_sample(predictions, labels, None, "(N, M) ensemble members")
    rows, members = predictions.shape
    if weights is not None:
        if len(weights) != members:
            raise LossInputError("options.weights", f"needs one weight per member ({members}), got {len(weights)}")
        if not sum(weights) > 0:
            raise LossInputError("options.weights", "the member weights sum to 0; the forecast has no distribution")
    order = np.argsort(predictions, axis=1)
    # Integrated piece by piece between sorted members, as properscoring does: every piece is a
    # length times a square, so no term cancels another (the pairwise form subtracts two sums).
    shifted = np.take_along_axis(predictions, order, axis=1) - labels[:, None]
    if weights is None:
        steps = np.broadcast_to(np.arange(1, members, dtype=predictions.dtype) / members, (rows, members - 1))
    else:
        w = np.asarray(weights, dtype=predictions.dtype)
        steps = np.cumsum(w[order] / w.sum(), axis=1)[:, :-1]
    low, high = shifted[:, :-1], shifted[:, 1:]
    zero = predictions.dtype.type(0)
    below = np.maximum(np.minimum(high, zero) - low, zero)  # the part of each piece left of y
    above = np.maximum(high - np.maximum(low, zero), zero)  # and right of y
    inside = (below * steps * steps + above * (1 - steps) * (1 - steps)).sum(axis=1)
    # Left of the first member F = 0 and right of the last F = 1: only the side beyond y counts.
    outside = np.maximum(shifted[:, 0], zero) + np.maximum(-shifted[:, -1], zero)
    return LossValues(inside + outside, weighted_average=True)
