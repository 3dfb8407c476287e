r"""What LightGBM's metrics share: its constants (kEpsilon and the clipped log), the objective
option and its links (\`ConvertOutput\`), and the scores a metric reads from raw or predicted
values."""

from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import check_class_indices, check_in_range
from service.engine.errors import LossInputError
from service.engine.libraries.base import MARGIN_DOC
from service.engine.options import Doc, Positive
from service.engine.reduction import Array

K_EPSILON = float(np.float32(1e-15))  # meta.h: `const score_t kEpsilon = 1e-15f;`
# `-std::log(kEpsilon)` with a float kEpsilon is logf: the clipped log is a float32 value.
CLIPPED_LOG = float(np.float32(math.log(K_EPSILON)))
XENT_EPS = 1.0e-12  # xentropy_metric.hpp: `const double log_arg_epsilon = 1.0e-12;`
RATE_FLOOR = float(np.float32(1e-10))  # regression_metric.hpp Poisson, Tweedie: `const double eps = 1e-10f;`
GAMMA_DEVIANCE_EPS = 1.0e-9  # regression_metric.hpp GammaDevianceMetric: `const double epsilon = 1.0e-9;`

MARGIN_LINK = MARGIN_DOC.replace("predict(output_margin=True)", "predict(raw_score=True)").replace(
    "its objective's link", "the link of `objective`"
)
Margin = Annotated[bool, Doc(MARGIN_LINK)]
Objective = Literal[
    "binary",
    "multiclass",
    "softmax",
    "multiclassova",
    "multiclass_ova",
    "ova",
    "ovr",
    "cross_entropy",
    "xentropy",
    "regression",
    "regression_l2",
    "l2",
    "mean_squared_error",
    "mse",
    "l2_root",
    "root_mean_squared_error",
    "rmse",
    "regression_l1",
    "l1",
    "mean_absolute_error",
    "mae",
    "huber",
    "fair",
    "quantile",
    "mape",
    "mean_absolute_percentage_error",
    "poisson",
    "gamma",
    "tweedie",
    "custom",
    "none",
]
# Each objective's ConvertOutput: sigmoid(sigmoid x), softmax, sigmoid(x), exp, or the identity.
_LINKS: dict[str, str] = {
    "binary": "sigmoid",
    "multiclass": "softmax",
    "softmax": "softmax",
    **dict.fromkeys(("multiclassova", "multiclass_ova", "ova", "ovr"), "sigmoid"),
    **dict.fromkeys(("cross_entropy", "xentropy"), "logistic"),
    **dict.fromkeys(("poisson", "gamma", "tweedie"), "exp"),
}
_CLASS_OBJECTIVES = {"multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr"}
_SIGMOID_OBJECTIVES = {"binary", "multiclassova", "multiclass_ova", "ova", "ovr"}
assert set(_LINKS) <= set(get_args(Objective))

Sigmoid = Annotated[
    float,
    Positive,
    Doc("LightGBM's sigmoid: the binary and multiclassova objectives' link is 1 / (1 + exp(-sigmoid x))"),
]
F32_INPUTS = "float64 rows from float32 labels and weights, summed in double"

_SHAPES = """predictions: (N,); labels: (N,).
per_sample: (N,), each value times its sample's weight."""


def _objective_doc(default: str) -> str:
    return (
        f"LightGBM's objective, whose output conversion margin: true applies ({default} by default); needs margin: true"
    )


def _scores(
    predictions: Array,
    labels: Array,
    margin: bool,
    objective: str,
    sigmoid: float,
    natural: str,
) -> Array:
    """One score per sample after the objective's link; the options checked against each other."""
    _check_link_options(margin, objective, sigmoid, natural)
    if objective in _CLASS_OBJECTIVES:
        raise LossInputError(
            "options.objective",
            f"{objective!r} gives one score per class; this metric takes one per sample "
            "(multi_logloss and multi_error take class scores)",
        )
    if predictions.ndim != 1:
        raise LossInputError(
            "predictions", f"shape {list(predictions.shape)} should be (N,): one score per sample, as predict() gives"
        )
    if labels.shape != predictions.shape:
        raise LossInputError("labels", f"shape {list(labels.shape)} should be {list(predictions.shape)}")
    return _link(predictions, objective, sigmoid) if margin else predictions


def _check_link_options(margin: bool, objective: str, sigmoid: float, natural: str) -> None:
    if not margin and objective != natural:
        raise LossInputError(
            "options.objective",
            "names the link applied to raw scores and needs margin: true; predict()'s output has been through it",
        )
    if sigmoid != 1.0:
        if not margin:
            raise LossInputError(
                "options.sigmoid",
                "applies to raw scores and needs margin: true; predict()'s output has been through it",
            )
        if objective not in _SIGMOID_OBJECTIVES:
            raise LossInputError(
                "options.sigmoid", f"only the binary and multiclassova objectives have it; objective is {objective!r}"
            )


def _link(x: Array, objective: str, sigmoid: float) -> Array:
    """The objective's ConvertOutput in double: `1.0f / (1.0f + std::exp(-sigmoid_ * x))`, exp, identity."""
    link = _LINKS.get(objective, "identity")
    if link == "sigmoid":
        return 1.0 / (1.0 + np.exp(-sigmoid * x))  # type: ignore[no-any-return]
    if link == "logistic":
        return 1.0 / (1.0 + np.exp(-x))
    if link == "exp":
        return np.exp(x)
    return x


def _softmax(x: Array) -> Array:
    """Common::Softmax: exp(x - max), divided by their sum accumulated class after class."""
    exps = np.exp(x - x.max(axis=1, keepdims=True))
    total = exps[:, 0].copy()
    for column in range(1, exps.shape[1]):
        total += exps[:, column]
    return exps / total[:, None]  # type: ignore[no-any-return]


def _class_scores(predictions: Array, labels: NDArray[np.intp], margin: bool, objective: str, sigmoid: float) -> Array:
    _check_link_options(margin, objective, sigmoid, "multiclass")
    if objective not in _CLASS_OBJECTIVES:
        raise LossInputError(
            "options.objective", f"{objective!r} gives one score per sample; this metric takes one per class"
        )
    if predictions.ndim != 2 or labels.shape != predictions.shape[:1]:
        raise LossInputError(
            "predictions" if predictions.ndim != 2 else "labels",
            f"shapes {list(predictions.shape)} and {list(labels.shape)} should be (N, C) class scores and (N,) "
            "class indices",
        )
    check_class_indices(labels, predictions.shape[1], None)  # LightGBM: label must be in [0, num_class)
    if not margin:
        check_in_range(predictions, "predictions", 0.0, 1.0, "class probabilities (margin is false)")
        return predictions
    return _softmax(predictions) if _LINKS[objective] == "softmax" else _link(predictions, objective, sigmoid)


def _probabilities(predictions: Array) -> None:
    check_in_range(predictions, "predictions", 0.0, 1.0, "probabilities (margin is false)")


def _clipped_log(p: Array, eps: float, clipped: float) -> Array:
    """`p > eps ? log(p) : clipped`, LightGBM's clip by branch (the log of a clipped p is never taken)."""
    return np.where(p > eps, np.log(np.where(p > eps, p, 1.0)), clipped)
