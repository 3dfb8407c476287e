"""What XGBoost's metrics share: its float constants, the `margin` option, and the links
(`common::Sigmoid`, `common::Softmax`, exp) with the checks of the predictions and labels they read."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import check_class_indices, check_in_range, check_min_rank, check_positive, check_values_in
from service.engine.errors import LossInputError
from service.engine.libraries.base import MARGIN_DOC
from service.engine.options import Doc
from service.engine.reduction import Array


def _f32(value: float) -> float:
    """A float literal or parameter as XGBoost holds it: rounded to float32."""
    return float(np.float32(value))


LOG_EPS = _f32(1e-16)  # logloss, mlogloss, poisson-nloglik: `const bst_float eps = 1e-16f`
RT_EPS = _f32(1e-6)  # kRtEps (include/xgboost/base.h): gamma-deviance adds it to y and p
GAMMA_FLOOR = _f32(1e-6)  # gamma-nloglik: `py = std::max(py, 1e-6f)`
SIGMOID_CLAMP = _f32(88.7)  # common::Sigmoid: exp(min(-x, 88.7f)) does not overflow

Margin = Annotated[bool, Doc(MARGIN_DOC)]
PER_ROW = "each row in float, weighted in float, summed in double"
ELEMENTWISE_SHAPES = """predictions: (N,) or (N, T) targets; labels: the same shape.
per_sample: as predictions, each value times its sample's weight."""


def _sigmoid(x: Array) -> Array:
    """common::Sigmoid(float): 1 / (exp(min(-x, 88.7)) + 1) (its + 1e-16f vanishes in float)."""
    one = x.dtype.type(1)
    return one / (np.exp(np.minimum(-x, x.dtype.type(SIGMOID_CLAMP))) + one)


def _softmax(x: Array) -> Array:
    """common::Softmax: exp(x - max) in float, divided by their sum accumulated in double."""
    exps = np.exp(x - x.max(axis=1, keepdims=True))
    total = exps.sum(axis=1, keepdims=True, dtype=np.float64).astype(x.dtype)
    return exps / total  # type: ignore[no-any-return]


def _probabilities(predictions: Array, margin: bool) -> Array:
    if margin:
        return _sigmoid(predictions)
    check_in_range(predictions, "predictions", 0.0, 1.0, "probabilities (margin is false)")
    return predictions


def _class_probabilities(predictions: Array, labels: NDArray[np.intp], margin: bool) -> Array:
    check_min_rank(predictions, 2, "predictions", "a batch axis and a class axis")
    if predictions.ndim != 2 or labels.shape != predictions.shape[:1]:
        raise LossInputError(
            "labels", f"shape {list(labels.shape)} should be [{predictions.shape[0]}] for predictions (N, C)"
        )
    check_class_indices(labels, predictions.shape[1], None)  # XGBoost: label must be in [0, num_class)
    if margin:
        return _softmax(predictions)
    check_in_range(predictions, "predictions", 0.0, 1.0, "class probabilities (margin is false)")
    return predictions


def _binary_labels(labels: Array) -> None:
    check_values_in(labels, (0.0, 1.0), "labels", "binary labels")


def _exp(predictions: Array, margin: bool, meaning: str) -> Array:
    if margin:
        return np.exp(predictions)
    check_positive(predictions, "predictions", meaning, allow_zero=True)
    return predictions
