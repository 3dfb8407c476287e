"""What the losses of class targets share: their options, the check and the log of class
probabilities, the targets read from integer labels (with PyTorch's and Keras's ignored class)
and the per-target losses built from each target's -log p (class weights, label smoothing, the
ignore mask and PyTorch's weighted-mean denominator). crossentropy.py, class_targets.py, focal.py
and scoring.py use them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import (
    check_class_indices,
    check_in_range,
    check_min_rank,
    class_indices_in_range,
)
from service.engine.conventions import TORCH_IGNORE_INDEX, Convention, class_axis
from service.engine.errors import LossInputError
from service.engine.numerics import (
    keras_class_log_probabilities,
    log_softmax,
    torch_clamped_log,
)
from service.engine.options import Doc, NonNegative, Probability
from service.engine.reduction import Array, LossValues

FromLogits = Annotated[bool, Doc("predictions are unnormalised logits rather than probabilities")]
LabelSmoothing = Annotated[float, Probability, Doc("mix the targets with the uniform distribution")]
IgnoreIndex = Annotated[
    int | None,
    Doc("targets equal to this class are left out of the loss and the mean; default none (keras), -100 (torch)"),
]
ClassWeight = Annotated[
    list[float] | dict[str, float] | None,
    NonNegative,
    Doc(
        "one weight per class: PyTorch's `weight`, or Keras's `class_weight` of fit() under keras; "
        'also {"class": weight} as fit() takes it, classes left out weighing 1'
    ),
]


def _check_probabilities(predictions: Array, from_logits: bool) -> None:
    if not from_logits:
        check_in_range(predictions, "predictions", 0.0, 1.0, "probabilities (from_logits is false)")


def _class_log_probabilities(predictions: Array, from_logits: bool, convention: Convention, axis: int) -> Array:
    if from_logits:
        return log_softmax(predictions, axis)
    if convention == "torch":
        return torch_clamped_log(predictions)
    row_sums = predictions.sum(axis=axis)
    if (row_sums == 0).any():
        index = tuple(int(i) for i in np.argwhere(row_sums == 0)[0])
        raise LossInputError("predictions", "the class probabilities of this sample sum to 0", index)
    return keras_class_log_probabilities(predictions, axis)


def _ignores_a_class(options: Mapping[str, Any], convention: Convention, num_classes: int) -> bool:
    ignore = options.get("ignore_index")
    ignore = TORCH_IGNORE_INDEX if ignore is None and convention == "torch" else ignore
    return ignore is not None and 0 <= ignore < num_classes


@dataclass(frozen=True)
class Smoothing:
    """Label smoothing's uniform term: `factor` of the loss goes to sum_c -log p_c / classes."""

    factor: float
    class_sum: Array
    classes: int


def _class_targets(
    predictions: Array, labels: NDArray[np.intp], convention: Convention, ignore_index: int | None
) -> tuple[int, int, NDArray[np.intp], NDArray[np.bool_] | None]:
    """Class axis, class count, targets (ignored ones set to 0) and the not-ignored mask."""
    check_min_rank(predictions, 2, "predictions", "a batch axis and a class axis")
    axis = class_axis(convention)
    if convention == "keras" and labels.ndim == predictions.ndim and labels.shape[-1] == 1:
        labels = labels[..., 0]
    position = axis % predictions.ndim
    expected = predictions.shape[:position] + predictions.shape[position + 1 :]
    if labels.shape != expected:
        raise LossInputError(
            "labels", f"shape {list(labels.shape)} should be {list(expected)} for predictions {list(predictions.shape)}"
        )
    num_classes = predictions.shape[axis]
    ignore = ignore_index if ignore_index is not None or convention == "keras" else TORCH_IGNORE_INDEX
    if class_indices_in_range(labels, num_classes):
        if ignore is None or not 0 <= ignore < num_classes:
            return axis, num_classes, labels, None  # no label can be the ignore index
        targets = labels
    else:
        targets = check_class_indices(labels, num_classes, ignore)
    if ignore is None:
        return axis, num_classes, targets, None
    mask = targets != ignore
    if mask.all():
        # PyTorch always has an ignore index (-100); a batch without it needs no masking later.
        return axis, num_classes, targets, None
    return axis, num_classes, np.where(mask, targets, 0), mask


def _target_losses(
    picked: Array,
    targets: NDArray[np.intp],
    mask: NDArray[np.bool_] | None,
    weights: Array | None,
    convention: Convention,
    smoothing: Smoothing | None = None,
) -> LossValues:
    """Per-target losses from each target's -log p: class weights, smoothing, the ignore mask and
    PyTorch's weighted-mean denominator, shared by the cross-entropy and NLL losses."""
    zero = picked.dtype.type(0)
    if convention == "keras":
        values = picked
        if smoothing is not None:
            values = (1.0 - smoothing.factor) * picked + (smoothing.factor / smoothing.classes) * smoothing.class_sum
        if weights is not None:
            values = values * weights[targets]
        if mask is not None:
            values = np.where(mask, values, zero)
        return LossValues(values, mask=mask)

    target_weight = weights[targets] if weights is not None else None
    nll = picked if target_weight is None else target_weight * picked
    values = nll
    if smoothing is not None:
        values = (1.0 - smoothing.factor) * nll + smoothing.class_sum * (smoothing.factor / smoothing.classes)
    if mask is not None:
        values = np.where(mask, values, zero)
    denominator = None
    if target_weight is not None:
        denominator = target_weight if mask is None else np.where(mask, target_weight, zero)
    return LossValues(values, denominator=denominator, mask=mask)
