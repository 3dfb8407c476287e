"""Recalibration: a belief q about the label fitted on joined (prediction, label) pairs, for the
expected loss (`expected_loss(..., q=fit.apply(p))`). Pure NumPy; a fit is a small frozen value
that round-trips through JSON (`as_dict`, `recalibration_from_dict`).

Calibration changes only the belief about the label, never the prediction being scored: with q
the calibrated distribution, E[L] = sum_c q_c L(p, c), p the prediction as logged.

Temperature scaling (Guo, Pleiss, Sun and Weinberger, "On calibration of modern neural networks",
ICML 2017, section 4.2). For logits z_i (N, C), or one binary column z_i (N,) read as the two
logits (0, z_i), q_i = softmax(z_i / T), and T > 0 minimises the (weighted) mean log loss

    NLL(T) = sum_i w_i (logsumexp(z_i / T) - z_{i, y_i} / T) / sum_i w_i.

"The convention's log loss" is this NLL of the scaled logits under both conventions: Keras's
crossentropy with from_logits and PyTorch's cross_entropy both take log_softmax of the logits (for
one column, Keras's sigmoid_cross_entropy_with_logits and PyTorch's BCEWithLogits are the same
softplus(z) - y z), as the engine's `losses/crossentropy.py` does. Probabilities are turned into
the logits the engine's crossentropy takes the log of: under keras z = log(clip(p / sum(p), 1e-7,
1 - 1e-7)) (one column: z = log p' - log(1 - p'), p' = clip(p, 1e-7, 1 - 1e-7)), under torch
z = max(log p, -100) (one column: max(log p, -100) - max(log(1 - p), -100)), the clamp of
binary_cross_entropy and of the engine's cross-entropy of probabilities. The fit minimises the
plain log loss of the labels: a loss's label smoothing or class weights are not part of it (q is
a belief about the label, not a loss).

With b = 1/T, NLL is convex in b (a log-sum-exp of functions linear in b, less a linear one):
NLL'(b) = sum_i w_i (E_{q_i}[z_i] - z_{i, y_i}) / sum_i w_i rises with b, and NLL''(b) is the
weighted mean of Var_{q_i}[z_i] >= 0. The fit finds the root of NLL' in b in [1/T_MAX, 1/T_MIN]
by Newton's method kept inside a shrinking bracket (a geometric bisection wherever a Newton step
would leave it), to a step below 1e-13 of b: T to ~1e-12 relative where the NLL is not flat.
When NLL' has one sign over the whole interval, the optimum lies beyond it and the fit is the
bound: T = T_MAX when the predictions carry no more information than a uniform guess (or less),
T = T_MIN when every label is the prediction's top class with a widening margin (a separable
window); `at_bound` says so. When every row's logits are equal, q does not depend on T and the
fit is T = 1.

Isotonic regression (Zadrozny and Elkan, KDD 2002), one binary column: scikit-learn's
`IsotonicRegression(y_min=0, y_max=1, increasing=True, out_of_bounds="clip")`
(sklearn/isotonic.py `_build_y`, sklearn/_isotonic.pyx `_make_unique`): samples of weight 0 are
dropped; sorted by probability, probabilities within 1e-15 (float64's `resolution`) of a group's
first one join that group at its value, with the weighted mean of their labels; the groups' means
are fitted non-decreasing by pool-adjacent-violators (`calibration.pool_adjacent_violators`, the
engine's one PAV); of each run of equal fitted values only its first and last point are kept (the
thresholds). q is the linear interpolation between the thresholds of the probability clipped to
[x_1, x_n] (scipy's interp1d, as `predict` does); with a single threshold, its value. Logits are
fitted and applied as sigmoid(z), in float64: logits beyond +-37 give probabilities 0 or 1 there,
and share their group.

The thresholds are at most twice the number of PAV blocks; for 0/1 labels the blocks' means rise
strictly, so a window of N pairs has at most ~N thresholds in an adversarial order, though a
smooth calibration curve gives far fewer (~N^(1/3) blocks). A fit keeps at most MAX_THRESHOLDS:
beyond that, evenly spaced thresholds by rank (the first and the last included) are kept, and q
is the interpolation between those. q stays non-decreasing in p and within [0, 1], and differs
from scikit-learn's only inside a thinned stretch, by at most the rise of the fit across it;
`thinned` says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.engine.calibration import pool_adjacent_violators
from service.engine.checks import class_indices, finite_floats
from service.engine.conventions import FRAMEWORKS, KERAS_EPSILON, TORCH_LOG_CLAMP, Framework
from service.engine.errors import LossInputError
from service.engine.numerics import log_softmax, sigmoid

Floats = NDArray[np.float64]
Method = Literal["temperature", "isotonic"]

# The temperatures a fit may return; an optimum beyond them is returned as the bound (`at_bound`).
T_MIN = 1e-2
T_MAX = 1e2
# Newton's iteration stops when a step moves 1/T by less than this fraction of itself.
STEP_TOLERANCE = 1e-13
MAX_ITERATIONS = 200
# scikit-learn's `_make_unique` joins probabilities closer than np.finfo(np.float64).resolution.
TIE_RESOLUTION = float(np.finfo(np.float64).resolution)
MAX_THRESHOLDS = 1000


@dataclass(frozen=True)
class Temperature:
    """A fitted temperature T: q = softmax(z / T), or sigmoid(z / T) for one binary column."""

    temperature: float
    at_bound: bool = False

    def apply(self, predictions: Any, *, from_logits: bool, convention: Framework) -> Floats:
        """The calibrated belief as `expected_loss` takes it: (N,) P(class 1) for one binary column
        ((N,) or (N, 1) predictions), (N, C) rows summing to 1 otherwise. Probabilities become
        logits as the convention's crossentropy takes their log (see the module)."""
        _check_convention(convention)
        z, binary = _logits(finite_floats(predictions, "predictions", "fiub"), from_logits, convention)
        q = np.exp(log_softmax(z / self.temperature, 1))
        return q[:, 1].copy() if binary else q

    def as_dict(self) -> dict[str, Any]:
        return {"method": "temperature", "temperature": self.temperature, "at_bound": self.at_bound}


@dataclass(frozen=True)
class Isotonic:
    """A fitted isotonic map of P(class 1): thresholds x (strictly rising) and their values y."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    thinned: bool = False

    def apply(self, predictions: Any, *, from_logits: bool = False) -> Floats:
        """The calibrated belief, (N,) P(class 1), of one binary column of probabilities (logits)."""
        p = _binary_probabilities(finite_floats(predictions, "predictions", "fiub"), from_logits)
        x, y = np.asarray(self.x), np.asarray(self.y)
        if x.size == 1:
            return np.full(p.shape, y[0])
        q: Floats = np.interp(np.clip(p, x[0], x[-1]), x, y)
        return q

    def as_dict(self) -> dict[str, Any]:
        return {"method": "isotonic", "x": list(self.x), "y": list(self.y), "thinned": self.thinned}


Recalibration = Temperature | Isotonic


def recalibration_from_dict(parameters: Mapping[str, Any]) -> Recalibration:
    """The fit `as_dict` wrote, checked: a temperature in [T_MIN, T_MAX], or thresholds x
    strictly rising with values y non-decreasing in [0, 1], at most MAX_THRESHOLDS."""
    method = parameters.get("method")
    if method == "temperature":
        t = parameters.get("temperature")
        if isinstance(t, bool) or not isinstance(t, int | float) or not T_MIN <= t <= T_MAX:
            raise LossInputError("temperature", f"must be a number in [{T_MIN:g}, {T_MAX:g}], got {t!r}")
        return Temperature(float(t), bool(parameters.get("at_bound", False)))
    if method == "isotonic":
        x = finite_floats(parameters.get("x", []), "x", "fiub")
        y = finite_floats(parameters.get("y", []), "y", "fiub")
        if x.ndim != 1 or y.shape != x.shape or not 1 <= x.size <= MAX_THRESHOLDS:
            raise LossInputError(
                "x", f"x and y must be lists of the same length in [1, {MAX_THRESHOLDS}], got {x.size} and {y.size}"
            )
        for field, bad in (("x", np.diff(x) <= 0), ("y", np.diff(y) < 0)):
            if bad.any():
                index = int(np.flatnonzero(bad)[0]) + 1
                raise LossInputError(field, f"must rise{' strictly' if field == 'x' else ''}", (index,))
        for field, values in (("x", x), ("y", y)):
            outside = (values < 0) | (values > 1)
            if outside.any():
                raise LossInputError(field, "must lie in [0, 1]", (int(np.flatnonzero(outside)[0]),))
        return Isotonic(tuple(x.tolist()), tuple(y.tolist()), bool(parameters.get("thinned", False)))
    raise LossInputError("method", f"must be 'temperature' or 'isotonic', got {method!r}")


def fit_temperature(
    predictions: Any,
    labels: Any,
    *,
    from_logits: bool,
    convention: Framework,
    sample_weight: Any = None,
) -> Temperature:
    """The temperature T in [T_MIN, T_MAX] minimising the mean log loss of softmax(z / T) (see the module).

    Shapes:
        predictions: (N,) or (N, 1), one binary column (logits, or probabilities of class 1), labels
        0/1 of shape (N,) or (N, 1); or (N, C), C >= 2, labels (N,) class indices in [0, C) or (N, C)
        one-hot rows. sample_weight: (N,), >= 0, not all 0.

    >>> fit = fit_temperature([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0]], [0, 0, 1], from_logits=True, convention="torch")
    >>> round(fit.temperature, 10)  # softmax(z / T) gives class 0 the frequency 2/3: 2 / T = log 2
    2.8853900818
    """
    _check_convention(convention)
    x = finite_floats(predictions, "predictions", "fiub")
    _check_batch(x)
    z, binary = _logits(x, from_logits, convention)
    label = _binary_labels(labels, x.shape[0]).astype(np.intp) if binary else _class_labels(labels, z.shape)
    w = _weights(sample_weight, x.shape[0])
    w = w / w.sum()
    if (z == z[:, :1]).all():  # every row's logits equal: q is uniform whatever T is
        return Temperature(1.0)
    chosen = z[np.arange(z.shape[0]), label]

    def slope(b: float) -> tuple[float, float]:
        """NLL'(b) and NLL''(b)."""
        q = np.exp(log_softmax(b * z, 1))
        mean = np.einsum("ij,ij->i", q, z)
        spread = z - mean[:, None]
        return float(w @ (mean - chosen)), float(w @ np.einsum("ij,ij->i", q, spread * spread))

    low, high = 1.0 / T_MAX, 1.0 / T_MIN
    if slope(low)[0] >= 0:
        return Temperature(T_MAX, at_bound=True)
    if slope(high)[0] <= 0:
        return Temperature(T_MIN, at_bound=True)
    b = 1.0
    for _ in range(MAX_ITERATIONS):
        g, h = slope(b)
        if g == 0:
            break
        if g < 0:
            low = b
        else:
            high = b
        step = b - g / h if h > 0 else math.nan
        following = step if low < step < high else math.sqrt(low * high)
        if abs(following - b) <= STEP_TOLERANCE * b:
            b = following
            break
        b = following
    return Temperature(1.0 / b)


def fit_isotonic(probabilities: Any, labels: Any, *, from_logits: bool = False, sample_weight: Any = None) -> Isotonic:
    """scikit-learn's IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip") of 0/1 labels on
    one binary column's probabilities (the sigmoid of its logits with `from_logits`); see the module.

    Shapes: probabilities (N,) or (N, 1), labels 0/1 (N,) or (N, 1), sample_weight (N,), >= 0.

    >>> fit = fit_isotonic([0.1, 0.3, 0.3, 0.6, 0.9], [0, 1, 0, 0, 1])
    >>> fit.x, fit.y  # 0.3 (twice) and 0.6 pool at 1/3
    ((0.1, 0.3, 0.6, 0.9), (0.0, 0.3333333333333333, 0.3333333333333333, 1.0))
    >>> fit.apply([0.0, 0.2, 0.75, 1.0]).round(6).tolist()
    [0.0, 0.166667, 0.666667, 1.0]
    """
    x = finite_floats(probabilities, "predictions", "fiub")
    _check_batch(x)
    p = _binary_probabilities(x, from_logits)
    y = _binary_labels(labels, x.shape[0])
    w = _weights(sample_weight, x.shape[0])
    kept = w > 0
    p, y, w = p[kept], y[kept], w[kept]
    order = np.lexsort((y, p))
    p, y, w = p[order], y[order], w[order]
    starts = _tie_groups(p)
    group_x = p[starts]
    group_w = np.add.reduceat(w, starts)
    fitted = pool_adjacent_violators(np.add.reduceat(w * y, starts) / group_w, group_w)
    fitted = np.clip(fitted, 0.0, 1.0)
    keep = np.ones(fitted.size, dtype=bool)
    keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    tx, ty = group_x[keep], fitted[keep]
    thinned = tx.size > MAX_THRESHOLDS
    if thinned:
        chosen = np.unique(np.round(np.linspace(0, tx.size - 1, MAX_THRESHOLDS)).astype(np.intp))
        tx, ty = tx[chosen], ty[chosen]
    return Isotonic(tuple(tx.tolist()), tuple(ty.tolist()), thinned)


def _tie_groups(p: Floats) -> NDArray[np.intp]:
    """Where each group of sorted probabilities starts: a probability at least TIE_RESOLUTION above
    its group's first one starts the next (`_make_unique`'s rule, which chains no further)."""
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
    if starts.size < 2 or (np.diff(p[starts]) >= TIE_RESOLUTION).all():
        return starts
    kept = [0]
    first = p[0]
    for s, value in zip(starts[1:].tolist(), p[starts[1:]].tolist(), strict=True):
        if value - first >= TIE_RESOLUTION:
            kept.append(s)
            first = value
    return np.asarray(kept, dtype=np.intp)


def _check_convention(convention: str) -> None:
    if convention not in FRAMEWORKS:
        raise LossInputError("convention", f"must be one of {list(FRAMEWORKS)} for a recalibration, got {convention!r}")


def _check_batch(x: Floats) -> None:
    if x.ndim == 0 or x.shape[0] == 0:
        raise LossInputError("predictions", "the window is empty; a fit needs at least one pair")
    if x.ndim > 2:
        raise LossInputError("predictions", f"must be (N,), (N, 1) or (N, C), got shape {list(x.shape)}")
    if x.size == 0:
        raise LossInputError("predictions", f"a row needs at least one value, got shape {list(x.shape)}")


def _is_binary(x: Floats) -> bool:
    return x.ndim == 1 or x.shape[1] == 1


def _logits(x: Floats, from_logits: bool, convention: Framework) -> tuple[Floats, bool]:
    """(N, C) logits, one binary column as the two logits (0, z), and whether it was one column."""
    _check_batch(x)
    if _is_binary(x):
        x = x.reshape(-1)
        if not from_logits:
            _check_probabilities(x)
            with np.errstate(divide="ignore"):
                if convention == "keras":
                    clipped = np.clip(x, KERAS_EPSILON, 1 - KERAS_EPSILON)
                    x = np.log(clipped) - np.log1p(-clipped)
                else:
                    x = np.maximum(np.log(x), TORCH_LOG_CLAMP) - np.maximum(np.log1p(-x), TORCH_LOG_CLAMP)
        return np.stack([np.zeros_like(x), x], axis=1), True
    if not from_logits:
        _check_probabilities(x)
        with np.errstate(divide="ignore"):
            if convention == "keras":
                sums = x.sum(axis=1, keepdims=True)
                if (sums == 0).any():
                    index = (int(np.flatnonzero(sums[:, 0] == 0)[0]),)
                    raise LossInputError("predictions", "the class probabilities of this sample sum to 0", index)
                x = np.log(np.clip(x / sums, KERAS_EPSILON, 1 - KERAS_EPSILON))
            else:
                x = np.maximum(np.log(x), TORCH_LOG_CLAMP)
    return x, False


def _check_probabilities(x: Floats) -> None:
    outside = (x < 0) | (x > 1)
    if outside.any():
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        raise LossInputError(
            "predictions", f"probabilities (from_logits is false) must lie in [0, 1], got {x[index].item()!r}", index
        )


def _binary_probabilities(x: Floats, from_logits: bool) -> Floats:
    _check_batch(x)
    if not _is_binary(x):
        raise LossInputError(
            "predictions", f"isotonic recalibration takes one binary column, (N,) or (N, 1); got shape {list(x.shape)}"
        )
    x = x.reshape(-1)
    if from_logits:
        p: Floats = sigmoid(x).astype(np.float64, copy=False)
        return p
    _check_probabilities(x)
    return x


def _binary_labels(labels: Any, n: int) -> Floats:
    y = finite_floats(labels, "labels", "fiub")
    if y.shape not in ((n,), (n, 1)):
        raise LossInputError("labels", f"must be 0/1 of shape [{n}] or [{n}, 1], got shape {list(y.shape)}")
    y = y.reshape(-1)
    bad = (y != 0) & (y != 1)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise LossInputError("labels", f"binary labels must be 0 or 1, got {y[index].item()!r}", (index,))
    return y


def _class_labels(labels: Any, shape: tuple[int, ...]) -> NDArray[np.intp]:
    n, classes = shape
    y = finite_floats(labels, "labels", "fiub")
    if y.shape == (n, classes):
        bad_values = (y != 0) & (y != 1)
        bad_rows = y.sum(axis=1) != 1
        if bad_values.any() or bad_rows.any():
            row = int(np.flatnonzero(bad_values.any(axis=1) | bad_rows)[0])
            raise LossInputError("labels", "a one-hot row must hold one 1 and otherwise 0", (row,))
        hot: NDArray[np.intp] = y.argmax(axis=1)
        return hot
    if y.shape != (n,):
        raise LossInputError(
            "labels", f"must be class indices of shape [{n}] or one-hot rows [{n}, {classes}], got {list(y.shape)}"
        )
    return class_indices(y, classes)


def _weights(sample_weight: Any, n: int) -> Floats:
    if sample_weight is None:
        return np.ones(n)
    w = finite_floats(sample_weight, "sample_weight", "fiub")
    if w.shape != (n,):
        raise LossInputError("sample_weight", f"shape {list(w.shape)} should be [{n}], one per pair")
    negative = w < 0
    if negative.any():
        raise LossInputError("sample_weight", "weights must be >= 0", (int(np.flatnonzero(negative)[0]),))
    if not w.sum() > 0:
        raise LossInputError("sample_weight", "the weights sum to 0: the window holds no weight to fit")
    return w
