"""Overlap losses: one minus a soft overlap ratio (Dice, Tversky) between predictions and targets.

Keras source followed: keras/src/losses/losses.py `dice` and `tversky` (keras.losses.Dice,
keras.losses.Tversky). PyTorch has no built-in for either, so both conventions compute Keras's
formula; the convention decides only the weighted mean.

Keras sums over its `axis` argument; its default, None, sums over the whole batch and gives one
number for it. A service answers per sample, so each sample is its own overlap: the sums run over
every axis but the batch axis, which is Keras's `Dice(axis=(1, ..., ndim - 1))`. A 1-D batch (N,)
is read as N samples of one output each, as elsewhere in the catalogue.

Keras does not check its inputs. Here predictions and labels must lie in [0, 1] and alpha, beta be
>= 0: there every sum is >= 0, the denominator is at least Keras's 1e-7, and the loss lies in
[0, 1]; outside, the ratio is no overlap and its denominator can reach 0.
"""

from __future__ import annotations

from typing import Annotated

from service.engine.checks import check_in_range, check_same_shape
from service.engine.conventions import KERAS_EPSILON, Convention
from service.engine.options import Doc, NonNegative
from service.engine.reduction import Array, LossValues
from service.engine.registry import register


def _checked(predictions: Array, labels: Array) -> tuple[int, ...] | None:
    """Check the inputs; return the axes a sample's sums run over (None: element-wise, a 1-D batch)."""
    check_same_shape(predictions, labels)
    check_in_range(predictions, "predictions", 0.0, 1.0, "predictions (soft masks)")
    check_in_range(labels, "labels", 0.0, 1.0, "labels (soft masks)")
    return None if predictions.ndim == 1 else tuple(range(1, predictions.ndim))


def _sum(values: Array, axes: tuple[int, ...] | None) -> Array:
    return values if axes is None else values.sum(axis=axes)


@register("dice", aliases=("dice_loss",))
def dice(predictions: Array, labels: Array, convention: Convention, /) -> LossValues:
    """Dice loss: one minus the soft Dice coefficient of each sample.

    Formula:
        1 - 2 sum(y p) / (sum(y) + sum(p) + 1e-7), sums over every axis but the batch axis
        (a 1-D batch: per element); the same under both conventions (PyTorch has no Dice loss)

    Shapes:
        predictions: (N, ...) in [0, 1]; labels: the same shape, in [0, 1].
        per_sample: (N,).

    Follows:
        keras/src/losses/losses.py dice with axis = every axis but the first (Keras's default
        axis=None gives one value for the whole batch).
    """
    axes = _checked(predictions, labels)
    intersection = _sum(labels * predictions, axes)
    denominator = _sum(labels, axes) + _sum(predictions, axes) + predictions.dtype.type(KERAS_EPSILON)
    coefficient: Array = (intersection * 2.0) / denominator
    return LossValues(1.0 - coefficient)


@register("tversky", aliases=("tversky_loss",))
def tversky(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    alpha: Annotated[float, NonNegative, Doc("weight of sum((1 - p) y), Keras's `fp` term")] = 0.5,
    beta: Annotated[float, NonNegative, Doc("weight of sum(p (1 - y)), Keras's `fn` term")] = 0.5,
) -> LossValues:
    """Tversky loss: one minus the Tversky index of each sample; alpha = beta = 0.5 is Dice.

    Formula:
        t = sum(y p); a = sum((1 - p) y); b = sum(p (1 - y))   (Keras names a `fp`, b `fn`)
        1 - t / (t + alpha a + beta b + 1e-7), sums over every axis but the batch axis
        (a 1-D batch: per element); the same under both conventions (PyTorch has no Tversky loss)

    Shapes:
        predictions: (N, ...) in [0, 1]; labels: the same shape, in [0, 1].
        per_sample: (N,).

    Follows:
        keras/src/losses/losses.py tversky with axis = every axis but the first (Keras's default
        axis=None gives one value for the whole batch); Salehi et al., 2017, arXiv:1706.05721.
    """
    axes = _checked(predictions, labels)
    one = predictions.dtype.type(1.0)
    intersection = _sum(labels * predictions, axes)
    first = _sum((one - predictions) * labels, axes)
    second = _sum(predictions * (one - labels), axes)
    denominator = intersection + first * alpha + second * beta + predictions.dtype.type(KERAS_EPSILON)
    index: Array = intersection / denominator
    return LossValues(1.0 - index)
