"""LightGBM's evaluation metrics, as `record_evaluation` records them.

Source followed: microsoft/LightGBM v4.7.0 (the metric files as at bae0b7ba):
src/metric/binary_metric.hpp (`BinaryLoglossMetric`, `BinaryErrorMetric`),
src/metric/multiclass_metric.hpp (`MultiSoftmaxLoglossMetric`, `MultiErrorMetric`),
src/metric/xentropy_metric.hpp (`CrossEntropyMetric`, `KullbackLeiblerDivergence`, `XentLoss`,
`YentLoss`), src/metric/regression_metric.hpp (`RegressionMetric` and its `LossOnPoint`s,
`RMSEMetric`, `GammaDevianceMetric::AverageLoss`), include/LightGBM/meta.h (`label_t`, `kEpsilon`),
include/LightGBM/utils/common.h (`Softmax`, `ObtainMinMaxSum`, `SafeLog`),
src/objective/*.hpp (`ConvertOutput`), src/io/config.cpp (`ParseMetricAlias`).

What LightGBM does, and this table with it:
- Labels and weights are float32 (`typedef float label_t`): they are rounded to float32 first (a
  label 0.1 is 0.10000000149). Scores, each row's loss and the sums are double: the table computes
  in float64 (`dtype: "float64"`, the default, is LightGBM's precision; float32 is an approximation).
- The mean is sum(w l) / sum(w), sum(w) a double sum of the float32 weights (N without weights);
  `rmse` is its square root; `gamma_deviance` is 2 sum(w l) with no division at all (aggregate
  "sum": `mean` is the sum, `denominator` still reports sum(w), chunks add their sums);
  `cross_entropy` and `kullback_leibler` divide by sum(w) summed in float32 pairs
  (`ObtainMinMaxSum<label_t>`).
- Predictions are what `Booster.predict` returns. LightGBM evaluates every metric on the
  *objective's* `ConvertOutput`, whatever the metric: `margin: true` takes
  `predict(raw_score=True)` and applies the link of the option `objective` (LightGBM's objective
  parameter, by default the metric's own objective: binary_logloss -> binary, poisson -> poisson,
  ...): binary and multiclassova 1 / (1 + exp(-sigmoid x)), multiclass softmax, cross_entropy
  1 / (1 + exp(-x)), poisson, gamma and tweedie exp, the regressions and custom the identity.
  `objective` and `sigmoid` take effect only on raw scores and are refused without `margin: true`;
  an objective whose output does not fit the metric (multiclass for l2) is refused.
- Constants are LightGBM's: kEpsilon = 1e-15f and the clipped loss -logf(kEpsilon), a float32 value
  (34.538776397705078); cross_entropy's 1e-12 (double) and its `1.0f - label` in float32;
  1e-10f (Poisson, Tweedie floor); gamma_deviance's 1e-9; gamma's `SafeLog<float>(label)`.
- Without one thread LightGBM sums with OpenMP in another order (a few ulp); with one thread and
  float64 this table agrees with LightGBM 4.7.0 to ~1e-15 relative (tests/engine/test_engine_lightgbm.py).

Not modelled: `reg_sqrt` (predict's sign(x) x^2; give predict()'s output), cross_entropy_lambda
(`xentlambda`) and the ranking and AUC metrics.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import check_class_indices, check_in_range, check_positive, check_values_in
from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.libraries.base import MARGIN_DOC, metric
from service.engine.losses._shared import elementwise_loss
from service.engine.losses.crossentropy import binary_log_loss, nll
from service.engine.losses.deviance import unit_deviance
from service.engine.losses.distribution import gamma_nloglik_terms, poisson_terms, tweedie_nloglik_terms
from service.engine.losses.regression import (
    absolute_percentage_errors,
    huber,
    mean_absolute_error,
    mean_squared_error,
    pinball,
)
from service.engine.losses.scoring import hamming
from service.engine.options import Doc, Positive, Range
from service.engine.reduction import Array, LossValues

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


# -- binary and multi-class classification --------------------------------------------------------


@metric(
    "lightgbm",
    "binary_logloss",
    loss="binary_crossentropy",
    link="objective's: binary, 1 / (1 + exp(-sigmoid x))",
    precision=F32_INPUTS,
    aliases=("binary",),
    float32_targets=True,
)
def binary_logloss(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: Annotated[Objective, Doc(_objective_doc("binary"))] = "binary",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Negative log-likelihood of binary labels: LightGBM's `binary_logloss`.

    Formula:
        y = 1: -log p if p > 1e-15f else -logf(1e-15f); y = 0: the same of 1 - p
        binary_crossentropy's formula, clipped by branch (Keras clips p to [1e-7, 1 - 1e-7])

    Shapes:
        predictions: probabilities (N,); labels: 0 or 1, (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/binary_metric.hpp BinaryLoglossMetric::LossOnPoint; include/LightGBM/meta.h kEpsilon.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "binary")
    check_values_in(labels, (0.0, 1.0), "labels", "binary labels")
    if not margin:
        _probabilities(p)
    return LossValues(
        binary_log_loss(labels, _clipped_log(p, K_EPSILON, CLIPPED_LOG), _clipped_log(1.0 - p, K_EPSILON, CLIPPED_LOG))
    )


@metric(
    "lightgbm",
    "binary_error",
    loss="hamming",
    link="objective's: binary, 1 / (1 + exp(-sigmoid x))",
    precision="exact: each row is 0 or 1, summed in double",
    float32_targets=True,
)
def binary_error(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: Annotated[Objective, Doc(_objective_doc("binary"))] = "binary",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Binary classification error rate: LightGBM's `binary_error`.

    Formula:
        [p > 0.5] != y: p <= 0.5 predicts 0 (p = 0.5 counts as 0), hamming of the thresholded predictions

    Shapes:
        predictions: probabilities (N,); labels: 0 or 1, (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/binary_metric.hpp BinaryErrorMetric::LossOnPoint.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "binary")
    check_values_in(labels, (0.0, 1.0), "labels", "binary labels")
    if not margin:
        _probabilities(p)
    return LossValues(hamming((p > 0.5).astype(p.dtype), labels, "torch").values)


TopK = Annotated[
    int,
    Range(ge=1),
    Doc("LightGBM's multi_error_top_k: a sample is right when its class is among the k best (multi_error@k)"),
]


@metric(
    "lightgbm",
    "multi_logloss",
    loss="nll",
    link="objective's: multiclass softmax, multiclassova 1 / (1 + exp(-sigmoid x)) per class",
    precision="float64 rows, float32 weights, summed in double",
    aliases=("multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr"),
    class_labels=True,
    float32_targets=True,
)
def multi_logloss(
    predictions: Array,
    labels: NDArray[np.intp],
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: Annotated[Objective, Doc(_objective_doc("multiclass"))] = "multiclass",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Multi-class negative log-likelihood: LightGBM's `multi_logloss`.

    Formula:
        -log p_y if p_y > 1e-15f else -logf(1e-15f); nll of the clipped log-probabilities

    Shapes:
        predictions: class probabilities (N, C); labels: class indices (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/multiclass_metric.hpp MultiSoftmaxLoglossMetric; include/LightGBM/utils/common.h Softmax.
    """
    p = _class_scores(predictions, labels, margin, objective, sigmoid)
    return LossValues(nll(_clipped_log(p, K_EPSILON, CLIPPED_LOG), labels, "torch").values)


@metric(
    "lightgbm",
    "multi_error",
    loss=None,
    link="objective's: multiclass softmax, multiclassova 1 / (1 + exp(-sigmoid x)) per class",
    precision="exact: each row is 0 or 1, summed in double",
    parameter="multi_error_top_k",
    class_labels=True,
    float32_targets=True,
)
def multi_error(
    predictions: Array,
    labels: NDArray[np.intp],
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: Annotated[Objective, Doc(_objective_doc("multiclass"))] = "multiclass",
    sigmoid: Sigmoid = 1.0,
    multi_error_top_k: TopK = 1,
) -> LossValues:
    """Multi-class top-k error rate: LightGBM's `multi_error` and `multi_error@k`.

    Formula:
        1 if #{c : p_c >= p_y} > k else 0 (the true class counts itself; a tie with it is an error)
        no catalogue loss: hamming of the argmax only where k = 1 and nothing ties

    Shapes:
        predictions: class probabilities (N, C); labels: class indices (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/multiclass_metric.hpp MultiErrorMetric::LossOnPoint (multi_error_top_k).
    """
    p = _class_scores(predictions, labels, margin, objective, sigmoid)
    truth = np.take_along_axis(p, labels[:, None], axis=1)
    at_least = np.count_nonzero(p >= truth, axis=1)
    return LossValues((at_least > multi_error_top_k).astype(p.dtype))


# -- probabilistic labels -------------------------------------------------------------------------


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


# -- regression -----------------------------------------------------------------------------------

RegressionObjective = Annotated[Objective, Doc(_objective_doc("regression"))]
RegressionL1Objective = Annotated[Objective, Doc(_objective_doc("regression_l1"))]
QuantileObjective = Annotated[Objective, Doc(_objective_doc("quantile"))]
MapeObjective = Annotated[Objective, Doc(_objective_doc("mape"))]
HuberObjective = Annotated[Objective, Doc(_objective_doc("huber"))]
FairObjective = Annotated[Objective, Doc(_objective_doc("fair"))]
PoissonObjective = Annotated[Objective, Doc(_objective_doc("poisson"))]
GammaObjective = Annotated[Objective, Doc(_objective_doc("gamma"))]
TweedieObjective = Annotated[Objective, Doc(_objective_doc("tweedie"))]
Alpha = Annotated[float, Range(gt=0.0, lt=1.0), Doc("LightGBM's alpha: the quantile (shared with huber)")]
HuberAlpha = Annotated[
    float, Positive, Doc("LightGBM's alpha: where huber turns from quadratic to linear (shared with quantile)")
]
FairC = Annotated[float, Positive, Doc("LightGBM's fair_c: the fair loss's scale")]
TweediePower = Annotated[
    float,
    Range(gt=1.0, lt=2.0),
    Doc("LightGBM's tweedie_variance_power rho (LightGBM accepts 1, where the metric divides by 0)"),
]


@metric(
    "lightgbm",
    "l1",
    loss="mean_absolute_error",
    link="objective's: regression_l1, identity",
    precision=F32_INPUTS,
    aliases=("mae", "mean_absolute_error", "regression_l1"),
    float32_targets=True,
)
def l1(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: RegressionL1Objective = "regression_l1",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Mean absolute error: LightGBM's `l1` (`mae`).

    Formula:
        |p - y|

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp L1Metric::LossOnPoint.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "regression_l1")
    return LossValues(mean_absolute_error(p, labels, "torch").values)


@metric(
    "lightgbm",
    "l2",
    loss="mean_squared_error",
    link="objective's: regression, identity",
    precision=F32_INPUTS,
    aliases=("mse", "mean_squared_error", "regression", "regression_l2"),
    float32_targets=True,
)
def l2(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: RegressionObjective = "regression",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Mean squared error: LightGBM's `l2` (`mse`).

    Formula:
        (p - y)^2

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp L2Metric::LossOnPoint.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "regression")
    return LossValues(mean_squared_error(p, labels, "torch").values)


@metric(
    "lightgbm",
    "rmse",
    loss="mean_squared_error",
    link="objective's: regression, identity",
    precision=F32_INPUTS,
    aggregate="root_mean",
    aliases=("root_mean_squared_error", "l2_root"),
    float32_targets=True,
)
def rmse(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: RegressionObjective = "regression",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Root mean squared error: LightGBM's `rmse` (`l2_root`).

    Formula:
        per value (p - y)^2; mean: sqrt(sum(w (p - y)^2) / sum(w))

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: w (p - y)^2 per value; `mean` the root of sum / denominator.

    Follows:
        src/metric/regression_metric.hpp RMSEMetric (AverageLoss: sqrt(sum_loss / sum_weights)).
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "regression")
    return LossValues(mean_squared_error(p, labels, "torch").values)


@metric(
    "lightgbm",
    "quantile",
    loss="pinball",
    link="objective's: quantile, identity",
    precision=F32_INPUTS,
    float32_targets=True,
)
def quantile(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: QuantileObjective = "quantile",
    sigmoid: Sigmoid = 1.0,
    alpha: Alpha = 0.9,
) -> LossValues:
    """Quantile (pinball) loss: LightGBM's `quantile`, alpha 0.9 by default.

    Formula:
        d = y - p; (alpha - 1) d if d < 0 else alpha d (pinball with LightGBM's alpha)

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp QuantileMetric::LossOnPoint (config.alpha).
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "quantile")
    return LossValues(pinball(p, labels, "torch", alpha=alpha).values)


@metric(
    "lightgbm",
    "mape",
    loss="mean_absolute_percentage_error",
    link="objective's: mape, identity",
    precision=F32_INPUTS,
    aliases=("mean_absolute_percentage_error",),
    float32_targets=True,
)
def mape(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: MapeObjective = "mape",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Mean absolute percentage error as a fraction: LightGBM's `mape`.

    Formula:
        |y - p| / max(1, |y|) (no factor 100; the denominator floored at 1, Keras's at 1e-7)

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp MAPEMetric::LossOnPoint.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "mape")
    return LossValues(absolute_percentage_errors(p, labels, "torch", 1.0))


@metric(
    "lightgbm",
    "huber",
    loss="huber",
    link="objective's: huber, identity",
    precision=F32_INPUTS,
    float32_targets=True,
)
def huber_metric(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: HuberObjective = "huber",
    sigmoid: Sigmoid = 1.0,
    alpha: HuberAlpha = 0.9,
) -> LossValues:
    """Huber loss: LightGBM's `huber`, its delta LightGBM's alpha (0.9 by default).

    Formula:
        e = p - y; 0.5 e^2 if |e| <= alpha else alpha (|e| - 0.5 alpha) (huber with delta = alpha)

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp HuberLossMetric::LossOnPoint (config.alpha).
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "huber")
    return LossValues(huber(p, labels, "torch", delta=alpha).values)


@metric("lightgbm", "fair", loss=None, link="objective's: fair, identity", precision=F32_INPUTS, float32_targets=True)
def fair(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: FairObjective = "fair",
    sigmoid: Sigmoid = 1.0,
    fair_c: FairC = 1.0,
) -> LossValues:
    """Fair loss: LightGBM's `fair` (no catalogue loss is the fair loss).

    Formula:
        x = |p - y|; c x - c^2 log1p(x / c), c = fair_c

    Shapes:
        predictions: (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp FairLossMetric::LossOnPoint (config.fair_c).
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "fair")

    def formula(p: Array, y: Array) -> Array:
        x = np.abs(p - y)
        return fair_c * x - fair_c * fair_c * np.log1p(x / fair_c)

    return LossValues(elementwise_loss(p, labels, "torch", formula))


@metric(
    "lightgbm",
    "poisson",
    loss="poisson",
    link="objective's: poisson, exp",
    precision=F32_INPUTS,
    float32_targets=True,
)
def poisson(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: PoissonObjective = "poisson",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Poisson negative log-likelihood without log y!: LightGBM's `poisson`.

    Formula:
        p' = max(p, 1e-10f); p' - y log p' (poisson's p - y log p, floored where Keras adds 1e-7); y >= 0

    Shapes:
        predictions: rates (N,); labels: counts (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp PoissonMetric::LossOnPoint.
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "poisson")
    check_positive(labels, "labels", "Poisson counts", allow_zero=True)
    p = np.maximum(p, RATE_FLOOR)
    return LossValues(poisson_terms(p, labels, np.log(p)))


def _gamma_means(predictions: Array, labels: Array, margin: bool, objective: str, sigmoid: float) -> Array:
    p = _scores(predictions, labels, margin, objective, sigmoid, "gamma")
    check_positive(labels, "labels", "gamma labels")
    return p


@metric(
    "lightgbm",
    "gamma",
    loss=None,
    link="objective's: gamma, exp",
    precision=F32_INPUTS + "; log y also in float32",
    float32_targets=True,
)
def gamma(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: GammaObjective = "gamma",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Gamma negative log-likelihood with dispersion 1: LightGBM's `gamma`.

    Formula:
        -((y theta - b) + c), theta = -1 / p, b = -log(-theta), c = log y - logf(y): y / p + log p - c
        c is the float32 rounding of log y (about 1e-8), not 0; labels y > 0, p > 0 (no catalogue loss)

    Shapes:
        predictions: means (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp GammaMetric::LossOnPoint (psi = 1, SafeLog<label_t>).
    """
    p = _gamma_means(predictions, labels, margin, objective, sigmoid)
    if not margin:
        check_positive(p, "predictions", "gamma means")
    return LossValues(gamma_nloglik_terms(p, labels) - _float32_log_residue(labels))


@metric(
    "lightgbm",
    "gamma_deviance",
    loss="gamma_deviance",
    link="objective's: gamma, exp",
    precision=F32_INPUTS,
    aggregate="sum",
    float32_targets=True,
)
def gamma_deviance(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: GammaObjective = "gamma",
    sigmoid: Sigmoid = 1.0,
) -> LossValues:
    """Gamma deviance, summed: LightGBM's `gamma_deviance`.

    Formula:
        per value gamma_deviance at (p + 1e-9, y): 2 (y / p' - log(y / p') - 1); y > 0, p >= 0
        mean: sum(w l), the weighted sum (LightGBM doubles sum(w l / 2) and divides by nothing)

    Shapes:
        predictions: means (N,); labels: (N,).
        per_sample: w l per value; `sum` and `mean` their sum; `denominator` sum(w), unused.

    Follows:
        src/metric/regression_metric.hpp GammaDevianceMetric (LossOnPoint, AverageLoss: sum_loss * 2).
    """
    p = _gamma_means(predictions, labels, margin, objective, sigmoid)
    if not margin:
        check_positive(p, "predictions", "gamma means", allow_zero=True)
    eps = GAMMA_DEVIANCE_EPS
    return LossValues(elementwise_loss(p, labels, "torch", lambda p, y: unit_deviance(p + eps, y, 2.0)))


@metric(
    "lightgbm",
    "tweedie",
    loss=None,
    link="objective's: tweedie, exp",
    precision=F32_INPUTS,
    float32_targets=True,
)
def tweedie(
    predictions: Array,
    labels: Array,
    convention: Convention,
    /,
    *,
    margin: Margin = False,
    objective: TweedieObjective = "tweedie",
    sigmoid: Sigmoid = 1.0,
    tweedie_variance_power: TweediePower = 1.5,
) -> LossValues:
    """Tweedie negative log-likelihood without its label-only terms: LightGBM's `tweedie`.

    Formula:
        p' = max(p, 1e-10f); -y p'^(1-rho) / (1-rho) + p'^(2-rho) / (2-rho), from log p'
        labels y >= 0; no catalogue loss (tweedie_deviance differs by terms in y and a factor 2)

    Shapes:
        predictions: means (N,); labels: (N,).
        per_sample: (N,), each value times its sample's weight.

    Follows:
        src/metric/regression_metric.hpp TweedieMetric::LossOnPoint (tweedie_variance_power, double).
    """
    p = _scores(predictions, labels, margin, objective, sigmoid, "tweedie")
    check_positive(labels, "labels", "Tweedie labels", allow_zero=True)
    return LossValues(tweedie_nloglik_terms(np.log(np.maximum(p, RATE_FLOOR)), labels, tweedie_variance_power))
