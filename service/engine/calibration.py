"""Calibration of probabilistic classifiers: binned reliability (ECE, MCE and the bins of a
reliability diagram) and the CORP decomposition of the Brier score. Pure NumPy, no HTTP: the
stateless route and a history bucket's pairs both call `calibration`.

What is scored. One column (N,) or (N, 1) holds the probability of class 1 (or its logit), and
the labels are 0/1: the confidence of sample i is p_i and its outcome y_i. Several columns
(N, C), C >= 2, hold a distribution over C classes (or logits, softmaxed), and the labels are
class indices: the confidence is the top-label probability max_c p_ic and the outcome whether
the top label is right, [argmax_c p_ic = y_i] (the first of tied maxima, as NumPy's and PyTorch's
argmax take it).

Bins. `uniform`: the edges 0, 1/B, ..., 1 (`np.linspace`); `quantile`: the edges are the
0, 1/B, ..., 1 percentiles of the confidences (`np.percentile`, linear interpolation). Bin 0
is [e_0, e_1], bin b >= 1 is (e_b, e_b+1]: a confidence on an inner edge belongs to the lower
bin. Empty bins are left out of the answer. Over the n samples and the non-empty bins,

    ECE = sum_b (n_b / n) |acc_b - conf_b|,    MCE = max_b |acc_b - conf_b|,

with conf_b the mean confidence and acc_b the mean outcome of bin b (Guo, Pleiss, Sun and
Weinberger, "On calibration of modern neural networks", ICML 2017, eqs. 3 and 5).

Follows: the bins are scikit-learn's `sklearn.calibration.calibration_curve` (sklearn/calibration.py:
`np.searchsorted(bins[1:-1], y_prob)`, `np.bincount`, empty bins dropped) for both strategies; ECE and
MCE are TorchMetrics' `BinaryCalibrationError` / `MulticlassCalibrationError` with norm `l1` / `max`
(torchmetrics/functional/classification/calibration_error.py, `_binning_bucketize` and `_ce_compute`)
wherever no confidence lies exactly on an inner edge k/B or at 1. There TorchMetrics differs from
both scikit-learn and Guo et al.: `torch.bucketize(..., right=True) - 1` puts an edge value in the
upper bin, and a confidence of exactly 1 in an extra bin of its own (Lightning-AI/torchmetrics
issue 3510); TorchMetrics' multiclass metric also rounds the confidences to float32.

Brier score, CORP (Dimitriadis, Gneiting and Jordan, "Stable reliability diagrams for probabilistic
classifiers", PNAS 118(8), 2021, eq. 5 and its Brier case; their R package reliabilitydiag). For one
binary column with forecasts x_i and outcomes y_i, S(f) = mean_i (f_i - y_i)^2:

    x_hat = the isotonic (non-decreasing) least-squares fit of y on x, by pool-adjacent-violators,
            equal forecasts pooled first (as scikit-learn's IsotonicRegression pools equal X),
    r     = mean_i y_i, the climatological forecast,
    score = S(x),  MCB = S(x) - S(x_hat),  DSC = S(r) - S(x_hat),  UNC = S(r) = r (1 - r),
    score = MCB - DSC + UNC  (by construction; to rounding, ~1e-16).

MCB and DSC are >= 0 (x itself and the constant r are isotonic in x, and x_hat fits best among
those), up to rounding in the last digits. For C >= 2 columns each component is the mean over the
classes of class c's one-vs-rest decomposition (forecasts p_ic, outcomes [y_i = c]), so the identity
holds for the means as it holds for each class, and score = (1/C) sum_c mean_i (p_ic - [y_i = c])^2
is Brier's (1950) multi-class score divided by C.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.engine.checks import check_in_range, check_not_empty, check_values_in, class_indices, finite_floats
from service.engine.errors import LossInputError
from service.engine.numerics import sigmoid

Strategy = Literal["uniform", "quantile"]
STRATEGIES: tuple[Strategy, ...] = ("uniform", "quantile")
DEFAULT_BINS = 15
MAX_BINS = 1000
# How far a row of probabilities may sum from 1, per class: float32 softmax outputs written out in
# full round each value by at most 2^-24 of itself, so a row of C of them sums within ~C * 1.2e-7.
ROW_SUM_TOLERANCE_PER_CLASS = 1e-6

Floats = NDArray[np.float64]

# What `calibration` holds at most, in float64 numbers: per prediction (softmax, one class's sorted
# copy and its fit) and per row (confidences, outcomes, bin indices, PAV's blocks as Python floats).
# Measured with tracemalloc (peaks of 3.2 per prediction over C = 10 and 100 columns of logits, and
# 13.5 per row for one column of logits; tests/engine/test_calibration.py holds the bound).
WORKING_PER_ELEMENT = 4
WORKING_PER_ROW = 16


def working_bytes(elements: int, rows: int) -> int:
    """An upper bound on the memory `calibration` allocates for `elements` predictions in `rows` rows."""
    return 8 * (WORKING_PER_ELEMENT * elements + WORKING_PER_ROW * rows)


@dataclass(frozen=True)
class Bin:
    """One non-empty bin: its edges, mean confidence, mean outcome and number of samples."""

    lower: float
    upper: float
    confidence: float
    accuracy: float
    count: int


@dataclass(frozen=True)
class BrierDecomposition:
    """The CORP decomposition: score = miscalibration - discrimination + uncertainty."""

    score: float
    miscalibration: float
    discrimination: float
    uncertainty: float


@dataclass(frozen=True)
class Calibration:
    ece: float
    mce: float
    bins: tuple[Bin, ...]
    brier: BrierDecomposition

    def answer(self) -> dict[str, Any]:
        """The JSON answer: `{"ece", "mce", "bins": [...], "brier": {...}}`."""
        return {"ece": self.ece, "mce": self.mce, "bins": [asdict(b) for b in self.bins], "brier": asdict(self.brier)}


def calibration(
    predictions: Any,
    labels: Any,
    *,
    from_logits: bool = False,
    bins: int = DEFAULT_BINS,
    strategy: Strategy = "uniform",
) -> Calibration:
    """ECE, MCE, the non-empty bins and the CORP Brier decomposition of a batch (see the module).

    Shapes:
        predictions: (N,) or (N, 1) probabilities of class 1 (logits with `from_logits`), labels 0/1
        of shape (N,) or (N, 1); or (N, C), C >= 2, class probabilities (logits), labels (N,) class
        indices in [0, C).

    >>> result = calibration([0.2, 0.7, 0.9, 0.4], [0, 0, 1, 1], bins=2)
    >>> round(result.ece, 12), round(result.mce, 12), [(b.upper, b.count) for b in result.bins]
    (0.25, 0.3, [(0.5, 2), (1.0, 2)])
    >>> brier = result.brier  # PAV pools 0.4 and 0.7 (outcomes 1, 0) at 0.5
    >>> [round(v, 12) for v in (brier.score, brier.miscalibration, brier.discrimination, brier.uncertainty)]
    [0.225, 0.1, 0.125, 0.25]
    """
    _check_settings(bins, strategy)
    x = finite_floats(predictions, "predictions")
    check_not_empty(x)
    if x.ndim > 2:
        raise LossInputError(
            "predictions", f"must be (N,), (N, 1) or (N, C): at most 2 dimensions, got shape {list(x.shape)}"
        )
    if x.ndim == 1 or x.shape[1] == 1:
        probability = _binary_probabilities(x.reshape(-1), from_logits)
        outcome = _binary_labels(labels, x.shape[0])
        confidence, hit = probability, outcome
        brier = corp_brier(probability, outcome)
    else:
        probabilities = _class_probabilities(x, from_logits)
        label = _class_labels(labels, x.shape[0], x.shape[1])
        top = probabilities.argmax(axis=1)
        confidence = probabilities[np.arange(len(top)), top]
        hit = (top == label).astype(np.float64)
        brier = _one_vs_rest(probabilities, label)
    ece, mce, found = binned(confidence, hit, bins, strategy)
    return Calibration(ece=ece, mce=mce, bins=found, brier=brier)


def bin_edges(confidence: Floats, bins: int, strategy: Strategy) -> Floats:
    """The B + 1 edges, as scikit-learn's calibration_curve computes them."""
    if strategy == "quantile":
        edges: Floats = np.percentile(confidence, np.linspace(0, 1, bins + 1) * 100)
        return edges
    return np.linspace(0.0, 1.0, bins + 1)


def binned(confidence: Floats, hit: Floats, bins: int, strategy: Strategy) -> tuple[float, float, tuple[Bin, ...]]:
    """ECE, MCE and the non-empty bins of confidences and 0/1 outcomes (see the module)."""
    edges = bin_edges(confidence, bins, strategy)
    # searchsorted's default side="left": a value equal to an inner edge lands in the bin below it.
    index = np.searchsorted(edges[1:-1], confidence)
    count = np.bincount(index, minlength=bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=bins)
    hit_sum = np.bincount(index, weights=hit, minlength=bins)
    kept = np.flatnonzero(count)
    mean_confidence = confidence_sum[kept] / count[kept]
    accuracy = hit_sum[kept] / count[kept]
    gap = np.abs(accuracy - mean_confidence)
    ece = float(np.sum(gap * (count[kept] / confidence.size)))
    mce = float(gap.max())
    found = tuple(
        Bin(float(edges[b]), float(edges[b + 1]), float(c), float(a), int(count[b]))
        for b, c, a in zip(kept.tolist(), mean_confidence.tolist(), accuracy.tolist(), strict=True)
    )
    return ece, mce, found


def corp_brier(forecast: Floats, outcome: Floats) -> BrierDecomposition:
    """The CORP decomposition of the Brier score of one binary column (see the module)."""
    order = np.argsort(forecast, kind="stable")
    x, y = forecast[order], outcome[order]
    recalibrated = isotonic_fit(x, y)
    climate = float(np.mean(y))
    score = float(np.mean((x - y) ** 2))
    recalibrated_score = float(np.mean((recalibrated - y) ** 2))
    uncertainty = float(np.mean((climate - y) ** 2))
    return BrierDecomposition(
        score=score,
        miscalibration=score - recalibrated_score,
        discrimination=uncertainty - recalibrated_score,
        uncertainty=uncertainty,
    )


def isotonic_fit(x: Floats, y: Floats) -> Floats:
    """The non-decreasing least-squares fit of y on sorted x, one value per sample.

    Equal x are pooled first (their mean y, weighted by their number), as scikit-learn's
    IsotonicRegression does, then `pool_adjacent_violators` fits the groups' means."""
    starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
    counts = np.diff(np.r_[starts, x.size])
    weights = counts.astype(np.float64)
    fitted = pool_adjacent_violators(np.add.reduceat(y, starts) / weights, weights)
    return np.repeat(fitted, counts)


def pool_adjacent_violators(values: Floats, weights: Floats) -> Floats:
    """The non-decreasing weighted least-squares fit of `values` in their order (weights > 0):
    argmin_f sum_i w_i (f_i - v_i)^2 over f_1 <= ... <= f_n, one fitted value per value.

    Adjacent values that are equal are pooled first, which changes nothing (the optimum is
    constant across them, by the convexity of the square) and leaves pool-adjacent-violators only
    the runs to merge: for 0/1 outcomes, the changes of outcome. PAV then keeps a stack of blocks
    (weighted sum, weight) and merges the top while its mean is at least the next one's, which is
    linear in the blocks (Ayer, Brunk, Ewing, Reid and Silverman 1955; Best and Chakravarti 1990).
    A block's value is its weighted mean, sum_i w_i v_i / sum_i w_i."""
    runs = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    sums, totals = np.add.reduceat(weights * values, runs), np.add.reduceat(weights, runs)
    block_sums: list[float] = []
    block_weights: list[float] = []
    block_groups: list[int] = []
    groups = np.diff(np.r_[runs, values.size])
    for total, weight, size in zip(sums.tolist(), totals.tolist(), groups.tolist(), strict=True):
        while block_sums and block_sums[-1] * weight >= total * block_weights[-1]:  # previous mean >= this one
            total += block_sums.pop()
            weight += block_weights.pop()
            size += block_groups.pop()
        block_sums.append(total)
        block_weights.append(weight)
        block_groups.append(size)
    fitted: Floats = np.repeat(np.asarray(block_sums) / np.asarray(block_weights), block_groups)
    return fitted


def _one_vs_rest(probabilities: Floats, label: NDArray[np.intp]) -> BrierDecomposition:
    parts = [corp_brier(probabilities[:, c], (label == c).astype(np.float64)) for c in range(probabilities.shape[1])]
    return BrierDecomposition(
        score=float(np.mean([p.score for p in parts])),
        miscalibration=float(np.mean([p.miscalibration for p in parts])),
        discrimination=float(np.mean([p.discrimination for p in parts])),
        uncertainty=float(np.mean([p.uncertainty for p in parts])),
    )


def _check_settings(bins: int, strategy: str) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
        raise LossInputError("bins", f"must be an integer in [1, {MAX_BINS}], got {bins!r}")
    if strategy not in STRATEGIES:
        raise LossInputError("strategy", f"must be one of {list(STRATEGIES)}, got {strategy!r}")


def _binary_probabilities(x: Floats, from_logits: bool) -> Floats:
    if from_logits:
        probability: Floats = sigmoid(x).astype(np.float64, copy=False)
        return probability
    check_in_range(x, "predictions", 0.0, 1.0, "probabilities (from_logits is false)")
    return x


def _binary_labels(labels: Any, n: int) -> Floats:
    y = finite_floats(labels, "labels")
    if y.shape not in ((n,), (n, 1)):
        raise LossInputError("labels", f"must be 0/1 of shape [{n}] or [{n}, 1], got shape {list(y.shape)}")
    y = y.reshape(-1)
    check_values_in(y, (0.0, 1.0), "labels", "binary labels")
    return y


def _class_probabilities(x: Floats, from_logits: bool) -> Floats:
    if from_logits:
        shifted = x - x.max(axis=1, keepdims=True)  # exp stays in (0, 1]: no overflow
        exp = np.exp(shifted)
        probabilities: Floats = exp / exp.sum(axis=1, keepdims=True)
        return probabilities
    check_in_range(x, "predictions", 0.0, 1.0, "probabilities (from_logits is false)")
    tolerance = ROW_SUM_TOLERANCE_PER_CLASS * x.shape[1]
    off = np.abs(x.sum(axis=1) - 1) > tolerance
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise LossInputError(
            "predictions",
            f"a row of probabilities must sum to 1 (within {tolerance:g}), this one sums to {float(x[row].sum())!r}",
            (row,),
        )
    return x


def _class_labels(labels: Any, n: int, classes: int) -> NDArray[np.intp]:
    y = finite_floats(labels, "labels")
    if y.shape != (n,):
        raise LossInputError("labels", f"must be class indices of shape [{n}], got shape {list(y.shape)}")
    return class_indices(y, classes)
