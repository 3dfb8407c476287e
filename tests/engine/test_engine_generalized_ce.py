"""categorical_generalized_cross_entropy (Keras 3 only) against the naive float64 reference, under
both conventions; the Keras fixture (tests/engine/test_engine_keras.py) checks it against Keras itself."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine import LossInputError, compute
from tests.reference import naive

RNG = np.random.default_rng(34)
N, C = 9, 4
RAW = RNG.random((N, C)) + 0.01
PROBABILITIES = RAW / RAW.sum(1, keepdims=True)
LABELS = RNG.integers(0, C, N)
WEIGHTS = RNG.uniform(0.1, 2.0, N)


@pytest.mark.parametrize("q", [0.5, 0.05, 0.95])
def test_matches_the_naive_reference_under_keras(q: float) -> None:
    options = {} if q == 0.5 else {"q": q}
    result = compute("categorical_generalized_cross_entropy", PROBABILITIES, LABELS, options=options)
    per_sample, mean = naive.generalized_cross_entropy(PROBABILITIES.tolist(), LABELS.tolist(), q)
    np.testing.assert_allclose(result.per_sample, per_sample, rtol=1e-12)
    assert result.mean == pytest.approx(mean, rel=1e-12)


def test_weighted_means_follow_each_convention() -> None:
    per_sample, torch_mean = naive.generalized_cross_entropy(
        PROBABILITIES.tolist(), LABELS.tolist(), 0.3, WEIGHTS.tolist()
    )
    keras = compute(
        "categorical_generalized_cross_entropy", PROBABILITIES, LABELS, options={"q": 0.3}, sample_weight=WEIGHTS
    )
    # Keras's sum_over_batch_size: sum(w l) / N, per_sample already weighted.
    np.testing.assert_allclose(keras.per_sample, np.asarray(per_sample) * WEIGHTS, rtol=1e-12)
    assert keras.mean == pytest.approx(float(np.dot(WEIGHTS, per_sample)) / N, rel=1e-12)
    # Under torch the class axis is 1 and the weighted mean is sum(w l) / sum(w).
    torch = compute(
        "categorical_generalized_cross_entropy",
        PROBABILITIES,
        LABELS,
        options={"q": 0.3},
        sample_weight=WEIGHTS,
        convention="torch",
    )
    assert torch.mean == pytest.approx(torch_mean, rel=1e-12)


def test_torch_reads_classes_on_axis_1() -> None:
    images = RNG.random((3, C, 2, 2))
    labels = RNG.integers(0, C, (3, 2, 2))
    torch = compute("categorical_generalized_cross_entropy", images, labels, convention="torch")
    keras = compute("categorical_generalized_cross_entropy", np.moveaxis(images, 1, -1), labels)
    assert np.shape(torch.per_sample) == (3, 2, 2)
    np.testing.assert_allclose(torch.per_sample, keras.per_sample, rtol=1e-12)


def test_probabilities_are_taken_as_given() -> None:
    # Keras neither renormalises nor clips: p_y = 0 gives 1/q, unnormalised rows are used as they are.
    p = np.array([[0.0, 1.0], [0.3, 0.3]])
    result = compute("categorical_generalized_cross_entropy", p, [0, 1], options={"q": 0.25})
    np.testing.assert_allclose(result.per_sample, [4.0, (1 - 0.3**0.25) / 0.25], rtol=1e-12)


def test_float32_stays_close_to_float64() -> None:
    result = compute("categorical_generalized_cross_entropy", PROBABILITIES, LABELS, dtype="float32")
    exact = compute(
        "categorical_generalized_cross_entropy", PROBABILITIES.astype(np.float32).astype(np.float64), LABELS
    )
    np.testing.assert_allclose(result.per_sample, exact.per_sample, rtol=2e-6, atol=3e-7)


@pytest.mark.parametrize(
    ("predictions", "labels", "options", "field", "index"),
    [
        (PROBABILITIES, LABELS, {"q": 0.0}, "options.q", None),
        (PROBABILITIES, LABELS, {"q": 1.0}, "options.q", None),
        ([[0.5, 0.5], [1.2, -0.2]], [0, 1], {}, "predictions", (1, 0)),
        ([[0.5, 0.5], [0.2, 0.8]], [0, 2], {}, "labels", (1,)),
        ([[0.5, 0.5], [0.2, 0.8]], [[0], [1]], {}, "labels", None),
        ([[0.5, 0.5], [0.2, 0.8]], [0, 1, 1], {}, "labels", None),
    ],
)
def test_bad_inputs_name_field_and_index(
    predictions: object, labels: object, options: dict[str, float], field: str, index: tuple[int, ...] | None
) -> None:
    with pytest.raises(LossInputError) as caught:
        compute("categorical_generalized_cross_entropy", predictions, labels, options=options)
    assert caught.value.field == field
    if index is not None:
        assert tuple(caught.value.index) == index
