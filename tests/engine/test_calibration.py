"""Calibration (service/engine/calibration.py) against its references: ECE and MCE against
TorchMetrics (committed numbers always, live ones when torchmetrics is installed), the bins against
scikit-learn's calibration_curve, and the CORP Brier decomposition against a naive float64 one
written here (pool-adjacent-violators by a plain loop over the samples) and scikit-learn's
IsotonicRegression; then where the references disagree, and the refusals."""

from __future__ import annotations

import doctest
import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss

from service.engine import LossInputError
from service.engine import calibration as module
from service.engine.calibration import MAX_BINS, calibration, working_bytes
from tests.reference.calibration_cases import BINS, cases, confidences, torchmetrics_reference

FIXTURE = json.loads((Path(__file__).parent.parent / "fixtures" / "calibration_reference.json").read_text())
# TorchMetrics' MulticlassCalibrationError rounds the confidences to float32 (`.float()`).
FLOAT32_METRIC = 2e-6

try:
    import torch
    import torchmetrics  # noqa: F401
except ImportError:  # the committed numbers run all the same; only the live comparisons need torchmetrics
    torch = None
else:
    torch.set_num_threads(1)
live = pytest.mark.skipif(torch is None, reason="live comparisons need torch and torchmetrics (see .ci/run)")


def _compute(case: dict[str, Any], bins: int, strategy: str = "uniform") -> Any:
    return calibration(
        case["predictions"], case["labels"], from_logits=case["from_logits"], bins=bins, strategy=strategy
    )


def _assert_torchmetrics(case: dict[str, Any], expected: dict[str, Any]) -> None:
    for bins in BINS:
        result = _compute(case, bins)
        numbers = expected[str(bins)]
        assert abs(result.ece - numbers["ece"]) <= 1e-9, (case["id"], bins)
        assert abs(result.mce - numbers["mce"]) <= 1e-9, (case["id"], bins)
        if "float32" in numbers:
            assert abs(result.ece - numbers["float32"]["ece"]) <= FLOAT32_METRIC
            assert abs(result.mce - numbers["float32"]["mce"]) <= FLOAT32_METRIC


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["id"])
def test_ece_and_mce_match_committed_torchmetrics_numbers(case: dict[str, Any]) -> None:
    _assert_torchmetrics(case, case["expected"])


@live
def test_fixture_is_current() -> None:
    """TorchMetrics still gives the committed numbers for the committed cases."""
    assert [case["id"] for case in cases()] == [case["id"] for case in FIXTURE["cases"]], "regenerate the fixture"
    for case in FIXTURE["cases"]:
        fresh = torchmetrics_reference(case)
        for bins in BINS:
            for name in ("ece", "mce"):
                assert abs(fresh[str(bins)][name] - case["expected"][str(bins)][name]) <= 1e-12


@live
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ece_and_mce_match_torchmetrics_on_new_batches(seed: int) -> None:
    for case in cases(seed=seed, n=500 + 250 * seed):
        _assert_torchmetrics(case, torchmetrics_reference(case))


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["id"])
def test_bins_are_scikit_learns_calibration_curve(case: dict[str, Any], strategy: str) -> None:
    confidence = confidences(case)
    labels = np.asarray(case["labels"])
    predictions = np.asarray(case["predictions"], dtype=np.float64)
    several = predictions.ndim == 2 and predictions.shape[1] > 1
    outcome = labels.reshape(-1) if not several else _top_label_right(predictions, labels, case["from_logits"])
    for bins in (*BINS, 100):
        result = _compute(case, bins, strategy)
        accuracy, mean_confidence = calibration_curve(outcome, confidence, n_bins=bins, strategy=strategy)
        assert [b.accuracy for b in result.bins] == pytest.approx(accuracy, abs=1e-15, rel=0)
        assert [b.confidence for b in result.bins] == pytest.approx(mean_confidence, abs=1e-15, rel=0)
        assert sum(b.count for b in result.bins) == len(confidence)
        _assert_bins_hold_what_they_say(result, confidence, outcome)


def _top_label_right(predictions: np.ndarray, labels: np.ndarray, from_logits: bool) -> np.ndarray:
    if from_logits:
        predictions = np.exp(predictions - predictions.max(axis=1, keepdims=True))
        predictions /= predictions.sum(axis=1, keepdims=True)
    return (predictions.argmax(axis=1) == labels).astype(int)


def _assert_bins_hold_what_they_say(result: Any, confidence: np.ndarray, outcome: np.ndarray) -> None:
    """Each bin's count, confidence and accuracy are those of the samples in (lower, upper], the
    first bin [lower, upper], counted by a plain loop; and its ECE and MCE from the same loop."""
    n, ece, mce = len(confidence), 0.0, 0.0
    for position, b in enumerate(result.bins):
        inside = [
            (c, o)
            for c, o in zip(confidence.tolist(), outcome.tolist(), strict=True)
            if (b.lower < c or (position == 0 and b.lower == c)) and c <= b.upper
        ]
        assert len(inside) == b.count > 0
        assert abs(sum(c for c, _ in inside) / len(inside) - b.confidence) <= 1e-12
        assert abs(sum(o for _, o in inside) / len(inside) - b.accuracy) <= 1e-12
        ece += len(inside) / n * abs(b.accuracy - b.confidence)
        mce = max(mce, abs(b.accuracy - b.confidence))
    assert abs(result.ece - ece) <= 1e-12
    assert result.mce == mce


def test_quantile_bins_with_tied_confidences_drop_the_empty_bins_as_scikit_learn_does() -> None:
    """Probabilities in steps of 0.1: many percentiles coincide, so several bins are (e, e]; a
    confidence equal to a repeated edge is in the lowest bin that ends there."""
    rng = np.random.default_rng(7)
    p = np.round(rng.beta(0.5, 0.5, 400), 1)
    y = (rng.random(400) < p).astype(int)
    for bins in (5, 10, 30):
        result = calibration(p, y, bins=bins, strategy="quantile")
        accuracy, mean_confidence = calibration_curve(y, p, n_bins=bins, strategy="quantile")
        assert len(result.bins) == len(accuracy)
        assert len(result.bins) < bins or bins == 5  # 11 values: from 10 bins on, some coincide
        assert [b.accuracy for b in result.bins] == pytest.approx(accuracy, abs=1e-15, rel=0)
        assert [b.confidence for b in result.bins] == pytest.approx(mean_confidence, abs=1e-15, rel=0)
        edges = np.percentile(p, np.linspace(0, 1, bins + 1) * 100)
        assert {(b.lower, b.upper) for b in result.bins} <= set(
            zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)
        )
        _assert_bins_hold_what_they_say(result, p, y)


def test_on_the_edges_the_bins_follow_scikit_learn_and_guo_not_torchmetrics() -> None:
    """Confidences on inner edges belong to the bin below (sklearn, Guo et al.'s ((m-1)/M, m/M]),
    1 to the last bin; TorchMetrics puts the former in the bin above and the latter in an extra bin."""
    p = np.array([0.0, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0, 0.9])
    y = np.array([0, 0, 1, 0, 1, 1, 1, 0])
    result = calibration(p, y, bins=4)
    assert [(b.lower, b.upper, b.count) for b in result.bins] == [
        (0.0, 0.25, 2),
        (0.25, 0.5, 2),
        (0.5, 0.75, 1),
        (0.75, 1.0, 3),
    ]
    accuracy, mean_confidence = calibration_curve(y, p, n_bins=4)
    assert [b.accuracy for b in result.bins] == accuracy.tolist()
    assert [b.confidence for b in result.bins] == mean_confidence.tolist()
    # Guo et al.'s ECE over these bins, by hand: gaps 0.125, 0, 0.25 and |2/3 - 2.9/3| = 0.3.
    assert result.ece == pytest.approx((2 * 0.125 + 2 * 0 + 0.25 + 3 * 0.3) / 8, abs=1e-15, rel=0)
    assert result.mce == pytest.approx(0.3, abs=1e-15, rel=0)
    if torch is not None:
        from torchmetrics.classification import BinaryCalibrationError

        theirs = BinaryCalibrationError(n_bins=4, norm="l1")(torch.tensor(p), torch.tensor(y)).item()
        assert abs(theirs - result.ece) > 0.01  # the documented difference, still there


# -- CORP -------------------------------------------------------------------------------------------


def naive_isotonic(x: list[float], y: list[float]) -> list[float]:
    """The least-squares non-decreasing fit of y on x, float64, by the textbook loop: sort by x,
    pool equal x, then repeatedly pool the first adjacent pair of blocks whose means decrease."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    blocks: list[list[int]] = []
    for i in order:
        if blocks and x[blocks[-1][0]] == x[i]:
            blocks[-1].append(i)
        else:
            blocks.append([i])

    def mean(block: list[int]) -> float:
        return sum(y[i] for i in block) / len(block)

    changed = True
    while changed:
        changed = False
        for k in range(len(blocks) - 1):
            if mean(blocks[k]) > mean(blocks[k + 1]):
                blocks[k : k + 2] = [blocks[k] + blocks[k + 1]]
                changed = True
                break
    fitted = [0.0] * len(x)
    for block in blocks:
        for i in block:
            fitted[i] = mean(block)
    return fitted


def naive_corp(x: list[float], y: list[float], isotonic: Any = naive_isotonic) -> tuple[float, float, float, float]:
    n = len(x)
    fitted = isotonic(x, y)
    base = sum(y) / n
    score = sum((a - b) ** 2 for a, b in zip(x, y, strict=True)) / n
    recalibrated = sum((a - b) ** 2 for a, b in zip(fitted, y, strict=True)) / n
    uncertainty = sum((base - b) ** 2 for b in y) / n
    return score, score - recalibrated, uncertainty - recalibrated, uncertainty


def sklearn_isotonic(x: list[float], y: list[float]) -> list[float]:
    fitted: list[float] = IsotonicRegression().fit(x, y).predict(x).tolist()
    return fitted


def _binary_batches() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    out = []
    for n, rounding in ((1, None), (2, None), (60, None), (200, 2), (300, 1), (400, None)):
        p = rng.beta(0.7, 0.7, n)
        y = (rng.random(n) < p**2).astype(float)
        out.append((np.round(p, rounding) if rounding is not None else p, y))  # rounding makes ties in x
    out.append((np.full(50, 0.3), (rng.random(50) < 0.3).astype(float)))  # one forecast value: x_hat = mean
    out.append((np.linspace(0, 1, 40), np.r_[np.zeros(20), np.ones(20)]))  # perfectly resolving
    return out


@pytest.mark.parametrize("reference", [naive_isotonic, sklearn_isotonic], ids=["naive-loop", "sklearn"])
def test_corp_components_match_a_naive_float64_decomposition(reference: Any) -> None:
    for p, y in _binary_batches():
        brier = calibration(p, y).brier
        expected = naive_corp(p.tolist(), y.tolist(), reference)
        actual = (brier.score, brier.miscalibration, brier.discrimination, brier.uncertainty)
        assert actual == pytest.approx(expected, abs=1e-12, rel=0), len(p)


def test_corp_identity_holds_to_1e_12_and_the_components_are_not_negative() -> None:
    rng = np.random.default_rng(5)
    for trial in range(60):
        n = int(rng.integers(1, 3000))
        classes = int(rng.integers(1, 6))
        if classes == 1:
            x: np.ndarray = rng.random(n) ** rng.uniform(0.2, 3)
            labels = (rng.random(n) < rng.random(n)).astype(int)
        else:
            x = rng.dirichlet(np.full(classes, 0.5), n)
            labels = rng.integers(0, classes, n)
        if trial % 3 == 0:
            x = np.round(x, 2) if classes == 1 else x  # ties
        brier = calibration(x, labels).brier
        assert abs(brier.score - (brier.miscalibration - brier.discrimination + brier.uncertainty)) <= 1e-12
        assert min(brier.miscalibration, brier.discrimination, brier.uncertainty) >= -1e-15


def test_several_classes_average_the_one_vs_rest_decompositions() -> None:
    """Each component is the mean over classes of class c's decomposition of (p_c, [y = c]); the
    score is scikit-learn's multi-class Brier score (summed over classes) divided by C."""
    rng = np.random.default_rng(3)
    classes = 4
    probabilities = rng.dirichlet(np.full(classes, 0.8), 250)
    labels = rng.integers(0, classes, 250)
    brier = calibration(probabilities, labels).brier
    per_class = [naive_corp(probabilities[:, c].tolist(), (labels == c).astype(float).tolist()) for c in range(classes)]
    expected = [sum(part[k] for part in per_class) / classes for k in range(4)]
    assert [brier.score, brier.miscalibration, brier.discrimination, brier.uncertainty] == pytest.approx(
        expected, abs=1e-12, rel=0
    )
    sklearn_score = brier_score_loss(labels, probabilities, labels=list(range(classes)))
    assert brier.score == pytest.approx(sklearn_score / classes, abs=1e-12, rel=0)


def test_logits_are_softmaxed_and_sigmoided() -> None:
    rng = np.random.default_rng(9)
    z = rng.normal(0, 4, (120, 3))
    labels = rng.integers(0, 3, 120)
    probabilities = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert _numbers(calibration(z, labels, from_logits=True)) == pytest.approx(
        _numbers(calibration(probabilities, labels))
    )
    column = rng.normal(0, 4, 120)
    binary = rng.integers(0, 2, 120)
    assert _numbers(calibration(column, binary, from_logits=True)) == pytest.approx(
        _numbers(calibration(1 / (1 + np.exp(-column)), binary))
    )
    huge = calibration([[1e4, -1e4], [-1e4, 1e4]], [0, 0], from_logits=True)  # no overflow, no NaN
    assert (huge.ece, huge.mce) == (0.5, 0.5)  # both confidences are 1, in one bin: one right, one wrong


def _numbers(result: Any) -> list[float]:
    bins = [value for b in result.bins for value in (b.lower, b.upper, b.confidence, b.accuracy, b.count)]
    brier = result.brier
    return [result.ece, result.mce, *bins, brier.score, brier.miscalibration, brier.discrimination, brier.uncertainty]


def test_tied_maxima_take_the_first_class_as_numpy_and_pytorch_do() -> None:
    """Rows [0.4, 0.4, 0.2] with label 0 are right (class 0 is the first maximum), with label 1 wrong."""
    rows = [[0.4, 0.4, 0.2]] * 4
    result = calibration(rows, [0, 0, 0, 1], bins=5)
    assert [(b.confidence, b.accuracy, b.count) for b in result.bins] == [(0.4, 0.75, 4)]
    assert result.ece == pytest.approx(0.35, abs=1e-15, rel=0)
    if torch is not None:
        assert torch.tensor(rows).max(dim=1).indices.tolist() == [0, 0, 0, 0]


def test_memory_stays_within_the_bound_the_route_reserves() -> None:
    rng = np.random.default_rng(2)
    for rows, classes, logits in ((40_000, 1, True), (40_000, 1, False), (8_000, 10, True), (1_000, 60, True)):
        x = rng.normal(size=(rows, classes)) if logits else rng.random((rows, classes))
        labels = rng.integers(0, max(classes, 2), rows)
        tracemalloc.start()
        calibration(x if classes > 1 else x[:, 0], labels, from_logits=logits, strategy="quantile")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= working_bytes(rows * classes, rows), (rows, classes, peak)


def test_the_docstring_example_holds() -> None:
    assert doctest.testmod(module).failed == 0


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predictions", "labels", "options", "field", "index", "reason"),
    [
        ([0.2, 1.5], [0, 1], {}, "predictions", (1,), "must lie in [0, 1]"),
        ([0.2, -0.1], [0, 1], {}, "predictions", (1,), "must lie in [0, 1]"),
        ([[0.2, 0.7], [0.5, 0.5]], [0, 1], {}, "predictions", (0,), "must sum to 1"),
        ([0.2, float("nan")], [0, 1], {}, "predictions", (1,), "not a finite number"),
        ([0.2, 0.7], [0, 2], {}, "labels", (1,), "binary labels must be one of [0.0, 1.0]"),
        ([0.2, 0.7], [0, 1, 1], {}, "labels", (), "shape"),
        ([[0.3, 0.7], [0.5, 0.5]], [0, 2], {}, "labels", (1,), "outside [0, 1]"),
        ([[0.3, 0.7], [0.5, 0.5]], [0, -1], {}, "labels", (1,), "outside [0, 1]"),
        ([[0.3, 0.7], [0.5, 0.5]], [0, 0.5], {}, "labels", (1,), "must be integers"),
        ([[[0.3]]], [0], {}, "predictions", (), "at most 2 dimensions"),
        ([], [], {}, "predictions", (), "empty"),
        ([0.2], [1], {"bins": 0}, "bins", (), "[1, 1000]"),
        ([0.2], [1], {"bins": MAX_BINS + 1}, "bins", (), "[1, 1000]"),
        ([0.2], [1], {"strategy": "equal"}, "strategy", (), "one of"),
    ],
)
def test_refusals_name_field_index_and_reason(
    predictions: Any, labels: Any, options: dict[str, Any], field: str, index: tuple[int, ...], reason: str
) -> None:
    with pytest.raises(LossInputError) as refused:
        calibration(predictions, labels, **options)
    assert (refused.value.field, refused.value.index) == (field, index)
    assert reason in refused.value.reason


def test_rows_within_the_documented_tolerance_are_taken() -> None:
    """float32 softmax rows sum to 1 only within a few 1e-8 per class: accepted as they are."""
    rng = np.random.default_rng(4)
    z = rng.normal(size=(500, 50)).astype(np.float32)
    probabilities = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
    assert np.abs(probabilities.sum(axis=1) - 1).max() > 0
    calibration(probabilities, rng.integers(0, 50, 500))
    near = probabilities.copy()
    near[3, 0] += 20 * 1e-6  # beyond 1e-6, within the 50 classes' 5e-5
    calibration(near, rng.integers(0, 50, 500))
    off = probabilities.copy()
    off[3, 0] += 2 * 50 * 1e-6  # past the tolerance for 50 classes
    with pytest.raises(LossInputError, match="must sum to 1") as refused:
        calibration(off, rng.integers(0, 50, 500))
    assert refused.value.index == (3,)
