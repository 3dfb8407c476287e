"""Input checks shared by the losses. Each raises `LossInputError` naming the first bad position."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.engine.errors import LossInputError

Array = NDArray[np.floating]


def _first(where: NDArray[np.bool_]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(where)[0])


def first_nonfinite(array: np.ndarray[Any, Any]) -> tuple[int, ...] | None:
    """Where `array` first holds NaN or an infinity, or None: the one finiteness search, which the
    engine's inputs and the HTTP layer's arrays share.

    One summation answers for the whole array: a NaN or an infinity makes the sum non-finite (and
    it costs about half of isfinite + all). Only then, or when finite
    values overflow the sum, is the element-wise search paid for."""
    if array.dtype.kind != "f" or math.isfinite(np.add.reduce(array, axis=None)):
        return None
    finite = np.isfinite(array)
    return None if finite.all() else _first(~finite)


def finite_floats(values: Any, field: str, kinds: str = "fiu") -> NDArray[np.float64]:
    """`values` as a float64 array, refused (naming `field`, and the index of the first bad value)
    unless it holds numbers of `kinds` (NumPy dtype kinds), all finite."""
    array = np.asarray(values)
    if array.dtype.kind not in kinds:
        raise LossInputError(field, f"must hold numbers, got an array of {array.dtype}")
    array = array.astype(np.float64, copy=False)
    index = first_nonfinite(array)
    if index is not None:
        raise LossInputError(field, f"is not a finite number: {array[index].item()!r}", index)
    return array


def class_indices(y: NDArray[np.float64], classes: int, field: str = "labels") -> NDArray[np.intp]:
    """Labels given as numbers that must be class indices in [0, classes): refused at the first
    fractional or out-of-range one."""
    fractional = y != np.floor(y)
    if fractional.any():
        index = int(np.flatnonzero(fractional)[0])
        raise LossInputError(field, f"class labels must be integers, got {y[index].item()!r}", (index,))
    outside = (y < 0) | (y >= classes)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise LossInputError(field, f"class label {y[index].item()!r} is outside [0, {classes - 1}]", (index,))
    return y.astype(np.intp)


def check_not_empty(predictions: Array) -> None:
    if predictions.ndim == 0:
        raise LossInputError("predictions", "must be an array with a batch axis, got a scalar")
    if predictions.size == 0:
        raise LossInputError("predictions", "the batch is empty; send at least one sample")


def check_same_shape(predictions: Array, labels: Array, *, label_field: str = "labels") -> None:
    if predictions.shape != labels.shape:
        raise LossInputError(
            label_field,
            f"shape {list(labels.shape)} does not match predictions shape {list(predictions.shape)}",
        )


def check_min_rank(array: Array, rank: int, field: str, meaning: str) -> None:
    if array.ndim < rank:
        raise LossInputError(field, f"must have at least {rank} dimensions ({meaning}), got shape {list(array.shape)}")


def check_in_range(array: Array, field: str, low: float, high: float, meaning: str) -> None:
    # The smallest and the largest answer for the whole array (two C calls); only a value out of
    # range (or a NaN) pays for the element-wise search.
    if array.size and low <= np.minimum.reduce(array, axis=None) and np.maximum.reduce(array, axis=None) <= high:
        return
    bad = (array < low) | (array > high)
    if bad.any():
        index = _first(bad)
        raise LossInputError(field, f"{meaning} must lie in [{low:g}, {high:g}], got {array[index].item()!r}", index)


def check_positive(array: Array, field: str, meaning: str, *, allow_zero: bool = False) -> None:
    bad = array < 0 if allow_zero else array <= 0
    if bad.any():
        index = _first(bad)
        bound = ">= 0" if allow_zero else "> 0"
        raise LossInputError(field, f"{meaning} must be {bound}, got {array[index].item()!r}", index)


def class_indices_in_range(labels: NDArray[np.intp], num_classes: int) -> bool:
    """Whether every integer class label lies in [0, num_classes)."""
    # Viewed as unsigned, a negative label is huge, so the largest finds both bounds (one C call).
    return labels.size == 0 or bool(np.maximum.reduce(labels.view(np.uintp), axis=None) < num_classes)


def check_class_indices(labels: NDArray[np.intp], num_classes: int, ignore_index: int | None) -> NDArray[np.intp]:
    """Integer class labels in [0, num_classes), or equal to `ignore_index`."""
    if class_indices_in_range(labels, num_classes):
        return labels
    out_of_range = labels.view(np.uintp) >= num_classes
    if ignore_index is not None:
        out_of_range &= labels != ignore_index
    if out_of_range.any():
        index = _first(out_of_range)
        hint = "" if ignore_index is None else f" or the ignore index {ignore_index}"
        raise LossInputError(
            "labels",
            f"class label {int(labels[index])} is outside [0, {num_classes - 1}]{hint}",
            index,
        )
    return labels


def check_values_in(labels: Array, allowed: tuple[float, ...], field: str, meaning: str) -> None:
    bad = ~np.isin(labels, allowed)
    if bad.any():
        index = _first(bad)
        raise LossInputError(field, f"{meaning} must be one of {list(allowed)}, got {labels[index].item()!r}", index)


def check_class_vector(values: list[float] | None, num_classes: int, option: str) -> None:
    if values is not None and len(values) != num_classes:
        raise LossInputError(f"options.{option}", f"needs one value per class ({num_classes}), got {len(values)}")
