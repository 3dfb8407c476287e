"""The expected loss before the label arrives: E and Var of a sample's loss under a belief about its class.

A loss that scores a predicted class distribution takes one of finitely many values per sample, one
per class c the label can be: L(p, c). Under a belief q over the classes (the prediction's own
distribution unless a calibrated one is given) the loss a sample will incur has

    E[L] = sum_c q_c L(p, c),    Var[L] = sum_c q_c (L(p, c) - E[L])^2.

L(p, c) is computed by the loss's own function with c as the label, under the options and the
convention configured, in the working dtype: exactly the value `compute` gives for that pair, its
clipping, smoothing and class weights included. What is averaged is each sample's share of the
loss's `sum` and `denominator` (`reduction.sample_shares`, what the history keeps per pair), so the
moments of the denominator share come too: it varies with the label only under PyTorch's
class-weighted mean (sparse cross-entropy and nll with class weights divide by the summed weight of
the labels' classes), and is 1 (or the sample weight) otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import first_nonfinite
from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.numerics import log_softmax, sigmoid
from service.engine.reduction import Array, LossValues, sample_shares

Float64 = NDArray[np.float64]

# How the label "class c" is written for a loss: 0/1 targets shaped as the predictions ("binary"),
# one-hot rows ("one_hot"), integer class indices of (N, C) scores ("index"), or of scores that may
# also be one binary column ("decision"), or class values ("value": the loss's `classes` option in
# sorted order, else the column index; one binary column too).
LabelForm = Literal["binary", "one_hot", "index", "decision", "value"]
# What the predictions are, for the prediction's own distribution: as the loss's `from_logits`
# option says, always logits, always log-probabilities, or always probabilities.
Link = Literal["from_logits", "logits", "log_probabilities", "probabilities"]

# A belief's rows must sum to 1 within this (float64 rounding of a softmax is far inside it).
BELIEF_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ExpectedLoss:
    """Per-sample moments of a loss's shares under a belief about the labels, float64 arrays (N,).

    `mean`, `variance`: E and Var of the sample's share s of the loss's `sum`. `denominator`,
    `denominator_variance`: E and Var of its share d of the `denominator`; `covariance`: Cov(s, d).
    Every field adds up over samples: a cohort's moments are the sums of its samples' (`totals`)."""

    mean: Float64
    variance: Float64
    denominator: Float64
    denominator_variance: Float64
    covariance: Float64

    def totals(self, rows: Any = slice(None)) -> ExpectedTotals:
        """The summed moments of the samples `rows` (all by default)."""
        return ExpectedTotals(
            mean=float(self.mean[rows].sum()),
            variance=float(self.variance[rows].sum()),
            denominator=float(self.denominator[rows].sum()),
            denominator_variance=float(self.denominator_variance[rows].sum()),
            covariance=float(self.covariance[rows].sum()),
        )


@dataclass(frozen=True)
class ExpectedTotals:
    """A cohort's summed moments (`ExpectedLoss.totals`); two cohorts combine by adding them (`+`).

    The cohort's realized mean is S / D, S and D the sums of its shares. `estimate` = E[S] / E[D]
    and `sigma` = sqrt(Var[S] - 2 R Cov[S, D] + R^2 Var[D]) / E[D], R = `estimate`: exact when D is
    fixed (every loss but PyTorch's class-weighted mean; there sigma = sqrt(sum Var) / n with n the
    sample count), the ratio's first-order (delta-method) moments otherwise."""

    mean: float
    variance: float
    denominator: float
    denominator_variance: float
    covariance: float

    def __add__(self, other: ExpectedTotals) -> ExpectedTotals:
        return ExpectedTotals(
            self.mean + other.mean,
            self.variance + other.variance,
            self.denominator + other.denominator,
            self.denominator_variance + other.denominator_variance,
            self.covariance + other.covariance,
        )

    @property
    def estimate(self) -> float:
        return self.mean / self.denominator if self.denominator else 0.0

    @property
    def sigma(self) -> float:
        if not self.denominator:
            return 0.0
        r = self.estimate
        spread = self.variance - 2.0 * r * self.covariance + r * r * self.denominator_variance
        return math.sqrt(max(spread, 0.0)) / self.denominator

    def band(self, width: float = 3.0) -> tuple[float, float]:
        """(estimate - width sigma, estimate + width sigma)."""
        return self.estimate - width * self.sigma, self.estimate + width * self.sigma


class LossFunction(Protocol):
    def __call__(self, predictions: Array, labels: Any, convention: Convention, /, **options: Any) -> LossValues: ...


class Table(Protocol):
    """A loss's values for every class at once: (values (N, C), PyTorch's per-value denominators
    (N, C) or None), each column what the loss gives with that class as every label, in the working
    dtype; None where the options ask for more than the table computes (the classes are then
    evaluated one by one). The loss itself has checked the predictions first."""

    def __call__(
        self, predictions: Array, options: Mapping[str, Any], convention: Convention, /
    ) -> tuple[Array, Array | None] | None: ...


class ExpectedFunction(Protocol):
    """`expected(predictions, options, convention, q=None, sample_weight=None)`: the moments of
    the loss's per-sample shares under the belief q (default: the prediction's own distribution).
    `options` are the loss's bound options (`LossSpec.bind`)."""

    __name__: str
    __doc__: str | None

    def __call__(
        self,
        predictions: Array,
        options: Mapping[str, Any],
        convention: Convention,
        /,
        q: Any = None,
        sample_weight: Array | None = None,
    ) -> ExpectedLoss: ...


def over_classes(
    loss: LossFunction,
    form: LabelForm,
    link: Link,
    predictions: Array,
    options: Mapping[str, Any],
    convention: Convention,
    q: Any = None,
    sample_weight: Array | None = None,
    table: Table | None = None,
) -> ExpectedLoss:
    """The moments of `loss`'s shares under q: the loss evaluated once per class c with every
    label set to c (the first evaluation, class 0, checks the predictions with their own indices),
    weighted by q_c. Predictions: one binary column (N,) or (N, 1), or (N, C) classes.

    `table`: the loss's values for every class at once, (N, C), from the same log-probabilities
    the loss computes (`Table`), used after the first evaluation when it covers the options."""
    classes = _class_count(form, predictions)
    options = dict(options)
    if form == "value":
        given = options.get("classes")
        values = sorted(set(given)) if given is not None else list(range(classes))
        options["classes"] = values
    with np.errstate(over="ignore", under="ignore"):
        first = loss(predictions, _labels(form, predictions, 0, options.get("classes")), convention, **options)
        fast = None if table is None else table(predictions, options, convention)
        if fast is not None:
            s_c, d_c = _table_shares(fast, first.weighted_average, sample_weight, convention)
        else:
            sums, denominators = [], []
            for c in range(classes):
                labels = _labels(form, predictions, c, options.get("classes"))
                result = first if c == 0 else loss(predictions, labels, convention, **options)
                s, d = sample_shares(result, _weights(sample_weight, result.values.shape), convention)
                sums.append(s)
                denominators.append(d)
            s_c = np.stack(sums, axis=1)  # (N, C): the share of each sample for each class
            d_c = np.stack(denominators, axis=1)
    _check_finite(s_c)
    belief = _own_belief(predictions, options, link, classes) if q is None else _checked_belief(q, predictions, classes)
    mean = np.einsum("ij,ij->i", belief, s_c)
    # Each term q_c x_c y_c as (sqrt(q_c) x_c)(sqrt(q_c) y_c): a class the belief gives 0 (or a
    # probability that underflows) adds 0 where its deviation squared would overflow, and q_c x_c^2
    # = 0 * inf would make the variance NaN (logits [1e200, 0, 0]: E = 0, Var = 0).
    root = np.sqrt(belief)
    ds = root * (s_c - mean[:, None])
    variance = np.einsum("ij,ij->i", ds, ds)
    if (d_c == d_c[:, :1]).all():  # no label changes a denominator share (1, or the sample weight)
        zero = np.zeros_like(mean)
        return ExpectedLoss(mean, variance, d_c[:, 0].copy(), zero, zero.copy())
    # A share the label cannot change is itself, not a sum that rounds.
    fixed = (d_c == d_c[:, :1]).all(axis=1)
    denominator = np.where(fixed, d_c[:, 0], np.einsum("ij,ij->i", belief, d_c))
    dd = root * (d_c - denominator[:, None])
    return ExpectedLoss(
        mean=mean,
        variance=variance,
        denominator=denominator,
        denominator_variance=np.einsum("ij,ij->i", dd, dd),
        covariance=np.einsum("ij,ij->i", ds, dd),
    )


def binary_column(predictions: Array) -> bool:
    return predictions.ndim == 1 or (predictions.ndim == 2 and predictions.shape[1] == 1)


def _class_count(form: LabelForm, predictions: Array) -> int:
    if form == "binary":
        if not binary_column(predictions):
            raise LossInputError(
                "predictions",
                f"the expected loss takes one binary column, (N,) or (N, 1); got shape {list(predictions.shape)}",
            )
        return 2
    if form in ("decision", "value") and binary_column(predictions):
        return 2
    if predictions.ndim != 2 or predictions.shape[1] < 2:
        raise LossInputError(
            "predictions",
            f"the expected loss takes (N, C) scores of C >= 2 classes; got shape {list(predictions.shape)}",
        )
    return int(predictions.shape[1])


def _labels(form: LabelForm, predictions: Array, c: int, values: Any) -> Any:
    n = predictions.shape[0]
    if form == "binary":
        return np.full(predictions.shape, c, dtype=predictions.dtype)
    if form == "one_hot":
        one_hot = np.zeros(predictions.shape, dtype=predictions.dtype)
        one_hot[:, c] = 1
        return one_hot
    if form in ("index", "decision"):
        return np.full(n, c, dtype=np.intp)
    return np.full(n, values[c] if c < len(values) else c, dtype=predictions.dtype)


def _weights(sample_weight: Array | None, shape: tuple[int, ...]) -> Array | None:
    if sample_weight is None:
        return None
    return sample_weight.reshape(sample_weight.shape + (1,) * (len(shape) - 1))


def _table_shares(
    fast: tuple[Array, Array | None], weighted_average: bool, sample_weight: Array | None, convention: Convention
) -> tuple[Float64, Float64]:
    """The shares of a loss's (N, C) table of values (and of PyTorch's per-value denominators)."""
    values, denominator = fast
    n, classes = values.shape
    flat = LossValues(
        values.reshape(-1),
        None if denominator is None else denominator.reshape(-1),
        weighted_average=weighted_average,
    )
    weight = None if sample_weight is None else np.repeat(sample_weight, classes)
    s, d = sample_shares(flat, weight, convention)
    return s.reshape(n, classes), d.reshape(n, classes)


def _check_finite(shares: Float64) -> None:
    index = first_nonfinite(shares)
    if index is not None:
        raise LossInputError(
            "predictions",
            f"the loss of this sample for class {index[1]} is not finite ({shares[index].item()!r}); "
            "it overflows the dtype",
            index[:1],
        )


def _own_belief(predictions: Array, options: Mapping[str, Any], link: Link, classes: int) -> Float64:
    """The prediction's own distribution over the classes, (N, C) in float64: the probabilities as
    given (a binary column: P(class 1); several columns: each row over its sum), the sigmoid or
    softmax of logits, the softmax of log-probabilities."""
    x = predictions.astype(np.float64)
    logits = link in ("logits", "log_probabilities") or (link == "from_logits" and bool(options.get("from_logits")))
    if binary_column(predictions) and classes == 2:
        positive = (sigmoid(x) if logits else x).reshape(-1)
        return np.stack([1.0 - positive, positive], axis=1)
    if logits:
        return np.exp(log_softmax(x, 1))
    sums = x.sum(axis=1, keepdims=True)
    if (sums == 0).any():
        index = (int(np.argwhere(sums[:, 0] == 0)[0][0]),)
        raise LossInputError("predictions", "the class probabilities of this sample sum to 0", index)
    belief: Float64 = x / sums
    return belief


def _checked_belief(q: Any, predictions: Array, classes: int) -> Float64:
    """A given belief: (N,) P(class 1) for one binary column, (N, C) rows of probabilities summing to 1."""
    array = np.asarray(q)
    if array.dtype.kind not in "fiu":
        raise LossInputError("q", f"must hold numbers, got an array of {array.dtype}")
    belief = array.astype(np.float64)
    n = predictions.shape[0]
    column = binary_column(predictions) and classes == 2
    wanted = (n,) if column else (n, classes)
    if belief.shape != wanted and not (column and belief.shape == (n, 1)):
        raise LossInputError("q", f"shape {list(belief.shape)} should be {list(wanted)}")
    index = first_nonfinite(belief)
    if index is not None:
        raise LossInputError("q", f"{belief[index].item()!r} is not a finite number", index)
    outside = (belief < 0) | (belief > 1)
    if outside.any():
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        raise LossInputError("q", f"must be probabilities in [0, 1], got {belief[index].item()!r}", index)
    if column:
        positive = belief.reshape(-1)
        return np.stack([1.0 - positive, positive], axis=1)
    off = np.abs(belief.sum(axis=1) - 1.0) > BELIEF_SUM_TOLERANCE
    if off.any():
        row = int(np.argwhere(off)[0][0])
        raise LossInputError("q", f"the probabilities of this sample sum to {belief[row].sum()!r}, not 1", (row,))
    return belief
