"""circle (Keras 3 only) against the naive float64 reference under both conventions; the Keras
fixture (tests/engine/test_engine_keras.py) checks it against Keras itself."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine import LossInputError, compute
from tests.reference import naive

RNG = np.random.default_rng(2002)
EMBEDDINGS = RNG.normal(0, 1, (10, 4))
EMBEDDINGS /= np.linalg.norm(EMBEDDINGS, axis=1, keepdims=True)
CLASSES = [0, 1, 0, 1, 2, 2, 0, 7, 1, 2]  # class 7 has one member: no positive, masked out
WEIGHTS = RNG.uniform(0.1, 2.0, 10)


@pytest.mark.parametrize(
    "options",
    [{}, {"gamma": 4.0, "margin": 0.1}, {"remove_diagonal": False}, {"gamma": 200.0, "margin": -0.2}],
    ids=["default", "gamma-margin", "keep-diagonal", "large-gamma"],
)
def test_matches_the_naive_reference_under_keras(options: dict[str, object]) -> None:
    result = compute("circle", EMBEDDINGS, CLASSES, options=options)
    per_sample, mean = naive.circle(EMBEDDINGS.tolist(), CLASSES, **options)  # type: ignore[arg-type]
    np.testing.assert_allclose(result.per_sample, per_sample, rtol=1e-12)
    assert result.mean == pytest.approx(mean, rel=1e-12)
    # The lone member of class 7 has a positive only in itself, kept when the diagonal stays.
    assert (result.per_sample[7] > 0) == (options.get("remove_diagonal") is False)


def test_weighted_means_follow_each_convention() -> None:
    per_sample, keras_mean = naive.circle(EMBEDDINGS.tolist(), CLASSES, weights=WEIGHTS.tolist())
    keras = compute("circle", EMBEDDINGS, CLASSES, sample_weight=WEIGHTS)
    np.testing.assert_allclose(keras.per_sample, per_sample, rtol=1e-12)
    # Keras: sum(w l) over the valid samples / their number (9 of 10).
    assert keras.mean == pytest.approx(keras_mean, rel=1e-12)
    assert keras.denominator == 9
    torch = compute("circle", EMBEDDINGS, CLASSES, sample_weight=WEIGHTS, convention="torch")
    np.testing.assert_allclose(torch.per_sample, per_sample, rtol=1e-12)
    # torch: sum(w l) / sum(w) over the valid samples (per_sample is already weighted).
    valid = np.arange(10) != 7
    assert torch.mean == pytest.approx(sum(per_sample) / WEIGHTS[valid].sum(), rel=1e-12)


def test_labels_with_a_trailing_axis_of_one_and_any_integer_values() -> None:
    flat = compute("circle", EMBEDDINGS, CLASSES)
    column = compute("circle", EMBEDDINGS, [[c] for c in CLASSES])
    renamed = compute("circle", EMBEDDINGS, [c - 5 for c in CLASSES])
    np.testing.assert_array_equal(column.per_sample, flat.per_sample)
    np.testing.assert_array_equal(renamed.per_sample, flat.per_sample)


def test_a_batch_of_one_class_scores_0_under_keras_and_is_refused_under_torch() -> None:
    same = [3] * 10
    assert compute("circle", EMBEDDINGS, same).mean == 0.0
    with pytest.raises(LossInputError) as caught:
        compute("circle", EMBEDDINGS, same, convention="torch")
    assert caught.value.field == "labels"


def test_float32_stays_close_to_float64() -> None:
    e32 = EMBEDDINGS.astype(np.float32)
    result = compute("circle", e32, CLASSES, dtype="float32")
    exact = compute("circle", e32.astype(np.float64), CLASSES)
    np.testing.assert_allclose(result.per_sample, exact.per_sample, rtol=1e-5)


@pytest.mark.parametrize(
    ("predictions", "labels", "field"),
    [
        (EMBEDDINGS[:, :, None], CLASSES, "predictions"),
        (EMBEDDINGS[0], CLASSES[:1], "predictions"),
        (EMBEDDINGS, CLASSES[:9], "labels"),
        (EMBEDDINGS, [[c, c] for c in CLASSES], "labels"),
    ],
    ids=["3d-embeddings", "1d-embeddings", "too-few-labels", "two-labels-per-sample"],
)
def test_bad_shapes_name_their_field(predictions: object, labels: object, field: str) -> None:
    with pytest.raises(LossInputError) as caught:
        compute("circle", predictions, labels)
    assert caught.value.field == field


def test_a_batch_beyond_the_pair_budget_is_refused() -> None:
    from service.engine.losses.metric_learning import MAX_SAMPLES

    embeddings = np.ones((MAX_SAMPLES + 1, 1))
    with pytest.raises(LossInputError) as caught:
        compute("circle", embeddings, np.arange(MAX_SAMPLES + 1) % 2)
    assert caught.value.field == "predictions"
    assert str(MAX_SAMPLES) in caught.value.reason


def test_embeddings_are_taken_as_given_and_distances_clamped_at_0() -> None:
    # Keras does not normalise: rows of norm 1.5 have dot products above 1, distances clamp to 0.
    scaled = EMBEDDINGS * 1.5
    result = compute("circle", scaled, CLASSES, options={"gamma": 8.0})
    per_sample, mean = naive.circle(scaled.tolist(), CLASSES, gamma=8.0)
    np.testing.assert_allclose(result.per_sample, per_sample, rtol=1e-12)
    assert result.mean == pytest.approx(mean, rel=1e-12)
