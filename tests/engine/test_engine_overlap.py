"""Dice and Tversky (keras/src/losses/losses.py) against the naive float64 formulas, Keras's own
documented example, and the convention rules for a loss that exists only in Keras. The numbers
from Keras 3 itself are in tests/fixtures/keras_reference.json (tests/engine/test_engine_keras.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.engine import LossInputError, compute
from tests.reference import naive
from tests.tolerance import assert_close

RNG = np.random.default_rng(34)
N = 6
MASKS = RNG.integers(0, 2, (N, 5)).astype(float).tolist()
PROBS = RNG.random((N, 5)).tolist()
SOFT_3D = RNG.random((N, 3, 4)).tolist()
PROBS_3D = RNG.random((N, 3, 4)).tolist()
WEIGHTS = RNG.uniform(0.1, 2.0, N).tolist()

CASES: list[tuple[str, dict[str, Any], Any, Any]] = [
    ("dice", {}, PROBS, MASKS),
    ("dice", {}, PROBS_3D, SOFT_3D),
    ("tversky", {}, PROBS, MASKS),
    ("tversky", {"alpha": 0.3, "beta": 0.7}, PROBS_3D, SOFT_3D),
    ("tversky", {"alpha": 2.0, "beta": 0.0}, PROBS, MASKS),
]


def _naive(loss: str, options: dict[str, Any], predictions: Any, labels: Any) -> tuple[list[float], float]:
    return naive.dice(predictions, labels) if loss == "dice" else naive.tversky(predictions, labels, **options)


@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize(("loss", "options", "predictions", "labels"), CASES)
def test_matches_the_naive_reference_under_both_conventions(
    loss: str, options: dict[str, Any], predictions: Any, labels: Any, convention: str
) -> None:
    expected, expected_mean = _naive(loss, options, predictions, labels)
    result = compute(loss, predictions, labels, options=options, convention=convention)
    assert result.per_sample.shape == (N,)
    assert_close(result.per_sample, expected, "float64", what="per_sample")
    assert_close(result.mean, expected_mean, "float64", what="mean")


@pytest.mark.parametrize(("loss", "options", "predictions", "labels"), CASES)
def test_the_convention_decides_only_the_weighted_mean(
    loss: str, options: dict[str, Any], predictions: Any, labels: Any
) -> None:
    per, _ = _naive(loss, options, predictions, labels)
    weighted = [w * v for w, v in zip(WEIGHTS, per, strict=True)]
    keras = compute(loss, predictions, labels, options=options, sample_weight=WEIGHTS, convention="keras")
    torch = compute(loss, predictions, labels, options=options, sample_weight=WEIGHTS, convention="torch")
    # keras: sum_over_batch_size, Σ(w l) / N; torch: the hand-written weighted mean Σ(w l) / Σw.
    assert_close(keras.mean, sum(weighted) / N, "float64", what="keras mean")
    assert_close(torch.mean, sum(weighted) / sum(WEIGHTS), "float64", what="torch mean")
    assert_close(keras.per_sample, weighted, "float64", what="keras per_sample")


def test_keras_documented_example() -> None:
    """keras.losses.dice's docstring: axis=(1, 2, 3) gives [0.5, 0.75757575] in float32."""
    y_true = [[[[1.0], [1.0]], [[0.0], [0.0]]], [[[1.0], [1.0]], [[0.0], [0.0]]]]
    y_pred = [[[[0.0], [1.0]], [[0.0], [1.0]]], [[[0.4], [0.0]], [[0.0], [0.9]]]]
    result = compute("dice", y_pred, y_true, dtype="float32")
    np.testing.assert_allclose(result.per_sample, [0.5, 0.75757575], rtol=1e-6)


def test_a_one_axis_batch_is_one_output_per_sample() -> None:
    p, y = [0.2, 0.9, 0.0], [1.0, 1.0, 0.0]
    expected = [1 - 2 * a * b / (a + b + 1e-7) for a, b in zip(p, y, strict=True)]
    assert_close(compute("dice", p, y).per_sample, expected, "float64", what="per_sample")
    expected_t = [1 - a * b / (a * b + 0.3 * (1 - a) * b + 0.7 * a * (1 - b) + 1e-7) for a, b in zip(p, y, strict=True)]
    result = compute("tversky", p, y, options={"alpha": 0.3, "beta": 0.7})
    assert_close(result.per_sample, expected_t, "float64", what="per_sample")


def test_alpha_weighs_missed_targets_as_keras_does() -> None:
    """Keras's `fp` is sum((1 - p) y): a target the prediction misses costs alpha, not beta."""
    missed = compute("tversky", [[0.0, 1.0]], [[1.0, 1.0]], options={"alpha": 1.0, "beta": 0.0})
    spurious = compute("tversky", [[1.0, 1.0]], [[0.0, 1.0]], options={"alpha": 1.0, "beta": 0.0})
    assert missed.per_sample[0] == pytest.approx(0.5, rel=1e-6)
    assert spurious.per_sample[0] == pytest.approx(0.0, abs=1e-6)


def test_empty_masks_give_keras_value_not_nan() -> None:
    result = compute("dice", [[0.0, 0.0]], [[0.0, 0.0]])
    assert result.per_sample.tolist() == [1.0]
    assert compute("tversky", [[0.0, 0.0]], [[0.0, 0.0]]).per_sample.tolist() == [1.0]


@pytest.mark.parametrize(
    ("loss", "predictions", "labels", "options", "field", "index"),
    [
        ("dice", [[0.5, 1.5]], [[1.0, 0.0]], {}, "predictions", (0, 1)),
        ("dice", [[0.5, 0.5], [0.5, 0.5]], [[1.0, 0.0], [-1.0, 0.0]], {}, "labels", (1, 0)),
        ("tversky", [[0.5, 0.5]], [[1.0, 0.0, 0.0]], {}, "labels", None),
        ("tversky", [[0.5]], [[1.0]], {"alpha": -0.5}, "options.alpha", None),
        ("tversky", [[0.5]], [[1.0]], {"beta": -0.5}, "options.beta", None),
    ],
)
def test_bad_input_names_field_and_index(
    loss: str, predictions: Any, labels: Any, options: dict[str, Any], field: str, index: Any
) -> None:
    with pytest.raises(LossInputError) as caught:
        compute(loss, predictions, labels, options=options)
    assert caught.value.field == field
    if index is not None:
        assert tuple(caught.value.index) == index
