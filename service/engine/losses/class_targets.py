"""Losses of the target class's probability given as such: generalized cross-entropy (of
probabilities) and the negative log-likelihood (of log-probabilities).

Keras source followed: keras/src/losses/losses.py (categorical_generalized_cross_entropy).
PyTorch source followed: torch/nn/functional.py nll_loss and aten/src/ATen/native/LossNLL.cpp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import check_in_range
from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.expectation import ExpectedLoss, over_classes
from service.engine.losses._shared import class_weights
from service.engine.losses._targets import ClassWeight, IgnoreIndex, _class_targets, _ignores_a_class, _target_losses
from service.engine.options import Doc, Range
from service.engine.reduction import Array, LossValues
from service.engine.registry import expectation, register


@register("categorical_generalized_cross_entropy", aliases=("generalized_cross_entropy", "gce"), class_labels=True)
def categorical_generalized_cross_entropy(
    predictions: Array,
    labels: NDArray[np.intp],
    convention: Convention,
    /,
    *,
    q: Annotated[
        float,
        Range(gt=0.0, lt=1.0),
        Doc("noise parameter: towards 0 the loss approaches cross-entropy, towards 1 mean absolute error"),
    ] = 0.5,
) -> LossValues:
    """Generalized cross-entropy (Zhang & Sabuncu 2018) of class probabilities and integer class labels.

    Formula:
        (1 - p_y^q) / q, p_y the predicted probability of the sample's class, taken as given
        (not renormalised or clipped, as Keras takes it)

    Shapes:
        predictions: probabilities in [0, 1], keras (N, ..., C), torch (N, C, ...); labels: integers,
        the predictions' shape without the class axis (no trailing axis of 1: Keras broadcasts one).
        per_sample: the labels' shape.

    Follows:
        keras/src/losses/losses.py categorical_generalized_cross_entropy and
        CategoricalGeneralizedCrossEntropy (q in (0, 1), default 0.5); arXiv:1805.07836.
    """
    if labels.ndim == predictions.ndim:
        # Keras one-hot encodes an (N, 1) label array to (N, 1, C) and broadcasts it against every
        # row of the predictions; one class per sample is the labels' only meaning here.
        raise LossInputError(
            "labels",
            f"shape {list(labels.shape)} should be the predictions' {list(predictions.shape)} without the class axis",
        )
    axis, _, targets, _ = _class_targets(predictions, labels, convention, None)
    check_in_range(predictions, "predictions", 0.0, 1.0, "probabilities")
    picked = np.take_along_axis(predictions, np.expand_dims(targets, axis), axis=axis).squeeze(axis)
    return LossValues((1.0 - np.power(picked, q)) / q)


@expectation("categorical_generalized_cross_entropy")
def categorical_generalized_cross_entropy_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected generalized cross-entropy under a belief q over the classes (default: p over its row sum).

    Formula:
        L(p, c) = (1 - p_c^q) / q (q the option); E = sum_c b_c L(p, c), Var = sum_c b_c (L(p, c) - E)^2,
        b the belief
    """
    return over_classes(
        categorical_generalized_cross_entropy,
        "index",
        "probabilities",
        predictions,
        options,
        convention,
        q,
        sample_weight,
    )


@register("nll", aliases=("nll_loss", "negative_log_likelihood"), class_labels=True, reads_logits=True)
def nll(
    predictions: Array,
    labels: NDArray[np.intp],
    convention: Convention,
    /,
    *,
    weight: ClassWeight = None,
    ignore_index: IgnoreIndex = None,
) -> LossValues:
    """Negative log-likelihood of log-probability inputs (PyTorch NLLLoss).

    Formula:
        -w_y x_y, where x holds log-probabilities (e.g. log_softmax outputs); ignored targets give 0
        mean: torch divides by the summed w_y of non-ignored targets; keras masks ignored targets

    Shapes:
        predictions: log-probabilities, keras (N, ..., C), torch (N, C, ...); labels: integers,
        the predictions' shape without the class axis.
        per_sample: the labels' shape.

    Follows:
        torch/nn/functional.py nll_loss (aten/src/ATen/native/LossNLL.cpp).
    """
    axis, num_classes, targets, mask = _class_targets(predictions, labels, convention, ignore_index)
    weights = class_weights(weight, num_classes, "weight", predictions)
    picked = -np.take_along_axis(predictions, np.expand_dims(targets, axis), axis=axis).squeeze(axis)
    return _target_losses(picked, targets, mask, weights, convention)


@expectation("nll")
def nll_expected(
    predictions: Array, options: Mapping[str, Any], convention: Convention, /, q: Any = None, sample_weight: Any = None
) -> ExpectedLoss:
    """Expected negative log-likelihood under a belief q over the classes (default: softmax of the log-probabilities).

    Formula:
        s_c = -w_c x_c, d_c = w_c under torch with weights (1 otherwise; 0 for the ignore index)
        E[s] = sum_c q_c s_c, Var[s] = sum_c q_c (s_c - E[s])^2, and likewise E[d], Var[d], Cov(s, d)
    """
    return over_classes(
        nll, "index", "log_probabilities", predictions, options, convention, q, sample_weight, _nll_table
    )


def _nll_table(predictions: Array, options: Mapping[str, Any], convention: Convention, /) -> Any:
    """-w_c x_c for every class c at once (not with an ignored class)."""
    num_classes = predictions.shape[1]
    if _ignores_a_class(options, convention, num_classes):
        return None
    weights = class_weights(options.get("weight"), num_classes, "weight", predictions)
    if weights is None:
        return -predictions, None
    if convention == "keras":
        return -predictions * weights, None
    return weights * -predictions, np.broadcast_to(weights, predictions.shape)
