"""LightGBM's metrics for probabilistic labels in [0, 1] (src/metric/xentropy_metric.hpp): cross
entropy and Kullback-Leibler divergence, with their float32 sums of weights."""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np

from service.engine.checks import check_in_range
from service.engine.conventions import Convention
from service.engine.libraries.base import metric
from service.engine.libraries.lightgbm.objectives import (
    XENT_EPS,
    Margin,
    Objective,
    Sigmoid,
    _clipped_log,
    _objective_doc,
    _probabilities,
    _scores,
)
from service.engine.losses.crossentropy import binary_log_loss
from service.engine.options import Doc
from service.engine.reduction import Array, LossValues


def float32_pair_sum(weights: Array) -> float:
    """Common::ObtainMinMaxSum<label_t>: the weights summed in float32, a pair at a time:
    w0 (odd N) or w0 + w1 (even N), then += (w[i-1] + w[i]) for i = 2 or 3, step 2."""
    w = weights.reshape(-1).astype(np.float32)
    start = 1 if w.size % 2 else 0
    pairs = w[start::2] + w[start + 1 :: 2]
    terms = np.concatenate([w[:1], pairs]) if start else pairs
    return float(np.cumsum(terms, dtype=np.float32)[-1])  # cumsum adds in order, in float32


def _complement(labels: Array) -> Array:
    """`double b = 1.0f - label;`: float minus label_t, the difference rounded to float32."""
    return (np.float32(1.0) - labels.astype(np.float32)).astype(labels.dtype)


def _float32_log_residue(labels: Array) -> Array:
    """gamma's c = SafeLog(label / psi) - SafeLog(label): a double log less a float32 one."""
    log_y = np.log(labels)
    return log_y - log_y.astype(np.float32).astype(log_y.dtype)  # type: ignore[no-any-return]


def _cross_entropy(predictions: Array, labels: Array, margin: bool, objective: str, sigmoid: float) -> Array:
    p = _scores(predictions, labels, margin, objective, sigmoid, "cross_entropy")
    check_in_range(labels, "labels", 0.0, 1.0, "cross_entropy labels (LightGBM checks [0, 1])")
    if not margin:
        _probabilities(p)
    complement = _complement(labels)
    return binary_log_loss(
        labels,
        _clipped_log(p, XENT_EPS, math.log(XENT_EPS)),
        _clipped_log(1.0 - p, XENT_EPS, math.log(XENT_EPS)),
        complement,
    )


@metric(
    "lightgbm",
    "cross_entropy",
    loss="binary_crossentropy",
    link="objective's: cross_entropy, 1 / (1 + exp(-x))",
    precision="float64 rows from float32 labels, 1 - y in float32; sum(w) in float32 pairs",
    aliases=("xentropy",),
    float32_targets=True,
    weight_sum=float32_pair_sum,
)
def cross_entropy(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: Annotated[Objective, Doc(_objective_doc("cross_entropy"))] = "cross_entropy",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Cross-entropy of probabilistic labels: LightGBM's `cross_entropy` (`xentropy`).

    Formula:
        -(y log' p + (1 - y) log' (1 - p)), log' x = log x if x > 1e-12 else log 1e-12; labels in [0, 1]
        binary_crossentropy's formula with soft labels; 1 - y rounded to float32; sum(w) in float32

    Shapes:
        predictions: probabilities (N,); labels: probabilities (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/xentropy_metric.hpp CrossEntropyMetric, XentLoss; common.h ObtainMinMaxSum.
    """
    return LossValues(_cross_entropy(predictions, labels, margin, objective, sigmoid))


@metric(
    "lightgbm",
    "kullback_leibler",
    loss="binary_crossentropy",
    link="objective's: cross_entropy, 1 / (1 + exp(-x))",
    precision="float64 rows from float32 labels, 1 - y in float32; sum(w) in float32 pairs",
    aliases=("kldiv",),
    float32_targets=True,
    weight_sum=float32_pair_sum,
)
def kullback_leibler(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: Annotated[Objective, Doc(_objective_doc("cross_entropy"))] = "cross_entropy",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Binary Kullback-Leibler divergence of probabilistic labels: LightGBM's `kullback_leibler` (`kldiv`).

    Formula:
        cross_entropy's value plus y log y + (1 - y) log(1 - y) (0 log 0 = 0), the label's entropy
        LightGBM adds the entropy's weighted mean to cross_entropy's; per value they are summed first

    Shapes:
        predictions: probabilities (N,); labels: probabilities (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/xentropy_metric.hpp KullbackLeiblerDivergence (presample_entropy_), YentLoss.
    """
    values = _cross_entropy(predictions, labels, margin, objective, sigmoid)
    q = 1.0 - labels
    entropy = np.where(labels > 0, labels * np.log(np.where(labels > 0, labels, 1.0)), 0.0) + np.where(
        q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0
    )
    return LossValues(values + entropy)
