"""Well-known worked examples from tutorials and the Keras documentation."""

from __future__ import annotations

import math

import pytest

from service.engine import compute


def test_keras_sparse_categorical_crossentropy_docstring_example_float32() -> None:
    result = compute("sparse_categorical_crossentropy", [[0.05, 0.95, 0], [0.1, 0.8, 0.1]], [1, 2], dtype="float32")
    assert result.mean == 1.1769392490386963  # Keras: SparseCategoricalCrossentropy()(y_true, y_pred).numpy()
    assert result.per_sample.tolist() == pytest.approx([0.0513, 2.303], abs=5e-4)


def test_the_issue_response_example_float64() -> None:
    result = compute("sparse_categorical_crossentropy", [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], [1, 2])
    assert result.per_sample.tolist() == pytest.approx([0.0512932943875505, 2.302585092994045], rel=1e-15)
    assert result.mean == pytest.approx(1.176939193690798, rel=1e-15)
    assert result.sum == pytest.approx(2.353878387381596, rel=1e-15)


ONE_HOT = [[0, 0, 1], [0, 1, 0], [1, 0, 0]]


def test_three_class_tutorial_example() -> None:
    result = compute("categorical_crossentropy", [[0.3, 0.3, 0.4], [0.3, 0.4, 0.3], [0.1, 0.2, 0.7]], ONE_HOT)
    assert result.mean == pytest.approx(-(2 * math.log(0.4) + math.log(0.1)) / 3, rel=1e-15)
    assert math.floor(result.mean * 1e4) / 1e4 == 1.3783  # the tutorials print it truncated: 1.3783


def test_three_class_tutorial_example_better_model_is_0_6391_not_0_54() -> None:
    result = compute("categorical_crossentropy", [[0.1, 0.2, 0.7], [0.1, 0.7, 0.2], [0.3, 0.4, 0.3]], ONE_HOT)
    assert result.mean == pytest.approx(-(2 * math.log(0.7) + math.log(0.3)) / 3, rel=1e-15)
    assert round(result.mean, 4) == 0.6391  # a published text says 0.54, which is wrong


def test_keras_binary_crossentropy_docstring_example() -> None:
    result = compute("binary_crossentropy", [[0.6, 0.4], [0.4, 0.6]], [[0, 1], [0, 0]], dtype="float32")
    assert result.per_sample.tolist() == pytest.approx([0.916, 0.714], abs=5e-4)  # keras.losses.binary_crossentropy


def test_scikit_learn_docstring_examples() -> None:
    """The examples in scikit-learn's docstrings (sklearn/metrics/_regression.py, _classification.py)."""
    y, p = [2, 0, 1, 4], [0.5, 0.5, 2.0, 2.0]
    assert compute("tweedie_deviance", p, y, options={"power": 1}).mean == pytest.approx(1.4260151319598084, rel=1e-15)
    assert compute("poisson_deviance", p, y).mean == pytest.approx(1.4260151319598084, rel=1e-15)
    assert compute("gamma_deviance", p, [2, 0.5, 1, 4]).mean == pytest.approx(1.0568528194400546, rel=1e-15)
    assert compute("pinball", [0, 2, 3], [1, 2, 3], options={"alpha": 0.1}).mean == pytest.approx(0.1 / 3, rel=1e-15)
    assert compute("pinball", [1, 2, 4], [1, 2, 3], options={"alpha": 0.1}).mean == pytest.approx(0.3, rel=1e-15)
    assert compute("pinball", [0, 2, 3], [1, 2, 3], options={"alpha": 0.9}).mean == pytest.approx(0.3, rel=1e-15)
    assert compute("hamming", [1, 2, 3, 4], [2, 2, 3, 4]).mean == 0.25
    assert compute("hamming", [[0, 0], [0, 0]], [[0, 1], [1, 1]]).mean == 0.75
