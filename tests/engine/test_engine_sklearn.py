"""scikit-learn's regression metrics and Hamming loss against scikit-learn itself (live), per sample
and in the mean, weighted and not, in both dtypes and both conventions; then against the naive
float64 references, and scikit-learn's domain rules, refused where it refuses and nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import (
    hamming_loss,
    mean_gamma_deviance,
    mean_pinball_loss,
    mean_poisson_deviance,
    mean_tweedie_deviance,
)

from service.engine import LossInputError, compute
from tests.reference import naive
from tests.tolerance import FLOAT32_MEAN_ULPS, assert_close

Inputs = Callable[[np.random.Generator, tuple[int, ...]], tuple[Any, Any]]


def real(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[Any, Any]:
    return rng.normal(0, 2, shape), rng.normal(0, 2, shape)


def counts(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Positive predictions, labels >= 0 with exact zeros (the y log y = 0 branch)."""
    return rng.uniform(0.05, 4.0, shape), rng.poisson(1.0, shape).astype(float)


def positive(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[Any, Any]:
    return rng.uniform(0.05, 4.0, shape), rng.uniform(0.05, 4.0, shape)


def any_labels(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """power < 0: predictions > 0, labels any real number."""
    return rng.uniform(0.05, 4.0, shape), rng.normal(0, 2, shape)


def classes(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[Any, Any]:
    if len(shape) == 2 and shape[1] > 1:  # multilabel indicators
        return rng.integers(0, 2, shape).astype(float), rng.integers(0, 2, shape).astype(float)
    return rng.integers(0, 4, shape).astype(float), rng.integers(0, 4, shape).astype(float)


def _tweedie(power: float) -> Callable[..., float]:
    return lambda y, p, **kw: mean_tweedie_deviance(y, p, power=power, **kw)


def _pinball(alpha: float) -> Callable[..., float]:
    return lambda y, p, **kw: mean_pinball_loss(y, p, alpha=alpha, **kw)


# loss, options, scikit-learn's function (y_true, y_pred, sample_weight=), inputs, shapes it takes
CASES: list[tuple[str, dict[str, Any], Callable[..., float], Inputs, tuple[tuple[int, ...], ...]]] = [
    ("pinball", {}, _pinball(0.5), real, ((23,), (23, 1), (23, 3))),
    ("pinball", {"alpha": 0.1}, _pinball(0.1), real, ((23,), (23, 3))),
    ("pinball", {"alpha": 0.95}, _pinball(0.95), real, ((23,), (23, 3))),
    ("pinball", {"alpha": 0.0}, _pinball(0.0), real, ((23,),)),
    ("pinball", {"alpha": 1.0}, _pinball(1.0), real, ((23,),)),
    ("tweedie_deviance", {}, _tweedie(0), real, ((23,), (23, 1))),
    ("tweedie_deviance", {"power": -1.5}, _tweedie(-1.5), any_labels, ((23,), (23, 1))),
    ("tweedie_deviance", {"power": 1}, _tweedie(1), counts, ((23,),)),
    ("tweedie_deviance", {"power": 1.5}, _tweedie(1.5), counts, ((23,), (23, 1))),
    ("tweedie_deviance", {"power": 2}, _tweedie(2), positive, ((23,),)),
    ("tweedie_deviance", {"power": 3.0}, _tweedie(3.0), positive, ((23,),)),
    ("tweedie_deviance", {"power": 2.7}, _tweedie(2.7), positive, ((23,), (23, 1))),
    ("poisson_deviance", {}, mean_poisson_deviance, counts, ((23,), (23, 1))),
    ("gamma_deviance", {}, mean_gamma_deviance, positive, ((23,), (23, 1))),
    ("hamming", {}, hamming_loss, classes, ((23,), (23, 1), (23, 5))),
]
LIVE = [
    (loss, options, reference, inputs, shape, seed)
    for loss, options, reference, inputs, shapes in CASES
    for shape in shapes
    for seed in (0, 1)
]


def _named(options: dict[str, Any]) -> str:
    return "-".join(f"{k}{v}" for k, v in options.items()) or "default"


def _sklearn_per_sample(reference: Callable[..., float], y: Any, p: Any) -> Any:
    """scikit-learn's number for each sample alone: its per-sample loss."""
    return np.array([reference(y[i : i + 1], p[i : i + 1]) for i in range(len(y))])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    ("loss", "options", "reference", "inputs", "shape", "seed"),
    LIVE,
    ids=[f"{c[0]}-{_named(c[1])}-{'x'.join(map(str, c[4]))}-{c[5]}" for c in LIVE],
)
def test_matches_scikit_learn_per_sample_and_in_the_weighted_mean(
    loss: str,
    options: dict[str, Any],
    reference: Callable[..., float],
    inputs: Inputs,
    shape: tuple[int, ...],
    seed: int,
    dtype: str,
) -> None:
    rng = np.random.default_rng(seed)
    p, y = (a.astype(dtype) for a in inputs(rng, shape))
    weights = rng.uniform(0.1, 2.0, shape[0]).astype(dtype)
    weights[3] = 0.0  # a sample that does not count
    per_sample = _sklearn_per_sample(reference, y, p)
    for convention in ("keras", "torch"):
        for sample_weight in (None, weights):
            result = compute(
                loss, p, y, options=options, sample_weight=sample_weight, dtype=dtype, convention=convention
            )  # type: ignore[arg-type]
            expected_mean = reference(y, p, sample_weight=sample_weight)
            what = f"{convention} {'weighted' if sample_weight is not None else 'unweighted'}"
            assert_close(result.mean, expected_mean, dtype, what=f"{what} mean", ulps=FLOAT32_MEAN_ULPS, weight=2.0)
            ours = result.per_sample
            if convention == "torch" and loss != "hamming" and ours.ndim == 2:
                ours = ours.mean(axis=1)  # per output under torch; scikit-learn averages them uniformly
            w = 1.0 if sample_weight is None else sample_weight.astype(np.float64)
            assert_close(ours, per_sample * w, dtype, what=f"{what} per_sample", weight=2.0, roundings=1)
            assert result.denominator == pytest.approx(
                result.per_sample.size if sample_weight is None else np.broadcast_to(
                    weights.reshape(-1, *[1] * (result.per_sample.ndim - 1)), result.per_sample.shape
                ).sum(dtype=np.float64),
                rel=1e-6,
            )  # fmt: skip


def test_torch_keeps_each_output_and_keras_averages_them() -> None:
    rng = np.random.default_rng(4)
    p, y = rng.normal(0, 1, (6, 3)), rng.normal(0, 1, (6, 3))
    keras = compute("pinball", p, y, options={"alpha": 0.3})
    torch = compute("pinball", p, y, options={"alpha": 0.3}, convention="torch")
    assert keras.per_sample.shape == (6,)
    assert torch.per_sample.shape == (6, 3)
    per_output = mean_pinball_loss(y, p, alpha=0.3, multioutput="raw_values")
    np.testing.assert_allclose(torch.per_sample.mean(axis=0), per_output, rtol=1e-12)
    assert keras.mean == pytest.approx(torch.mean, rel=1e-12)
    indicators = (p > 0).astype(float), (y > 0).astype(float)
    for convention in ("keras", "torch"):
        result = compute("hamming", *indicators, convention=convention)  # type: ignore[arg-type]
        assert result.per_sample.shape == (6,)  # one fraction per sample under both


RNG = np.random.default_rng(21)
N, K = 7, 4
REAL_P, REAL_Y = RNG.normal(0, 2, (N, K)).tolist(), RNG.normal(0, 2, (N, K)).tolist()
POS_P, POS_Y = RNG.uniform(0.1, 3, (N, K)).tolist(), RNG.uniform(0.1, 3, (N, K)).tolist()
COUNTS = RNG.poisson(1.5, (N, K)).astype(float).tolist()
INDICATORS_P, INDICATORS_Y = RNG.integers(0, 2, (N, K)).tolist(), RNG.integers(0, 2, (N, K)).tolist()
WEIGHTS = RNG.uniform(0.0, 2.0, N).tolist()

NAIVE: list[tuple[str, dict[str, Any], Any, Any, Callable[..., tuple[Any, float]]]] = [
    ("pinball", {"alpha": 0.8}, REAL_P, REAL_Y, lambda w: naive.pinball(REAL_P, REAL_Y, 0.8, w)),
    ("pinball", {}, REAL_P, REAL_Y, lambda w: naive.pinball(REAL_P, REAL_Y, 0.5, w)),
    ("tweedie_deviance", {}, REAL_P, REAL_Y, lambda w: naive.tweedie(REAL_P, REAL_Y, 0, w)),
    ("tweedie_deviance", {"power": -0.5}, POS_P, REAL_Y, lambda w: naive.tweedie(POS_P, REAL_Y, -0.5, w)),
    ("tweedie_deviance", {"power": 1.3}, POS_P, COUNTS, lambda w: naive.tweedie(POS_P, COUNTS, 1.3, w)),
    ("tweedie_deviance", {"power": 4}, POS_P, POS_Y, lambda w: naive.tweedie(POS_P, POS_Y, 4, w)),
    ("poisson_deviance", {}, POS_P, COUNTS, lambda w: naive.tweedie(POS_P, COUNTS, 1, w)),
    ("gamma_deviance", {}, POS_P, POS_Y, lambda w: naive.tweedie(POS_P, POS_Y, 2, w)),
    ("hamming", {}, INDICATORS_P, INDICATORS_Y, lambda w: naive.hamming(INDICATORS_P, INDICATORS_Y, w)),
]


@pytest.mark.parametrize(
    ("loss", "options", "predictions", "labels", "reference"),
    NAIVE,
    ids=[f"{c[0]}-{_named(c[1])}" for c in NAIVE],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_the_naive_reference(
    loss: str, options: dict[str, Any], predictions: Any, labels: Any, reference: Any, weighted: bool
) -> None:
    weights = WEIGHTS if weighted else None
    per_sample, mean = reference(weights)
    for convention in ("keras", "torch"):
        result = compute(loss, predictions, labels, options=options, sample_weight=weights, convention=convention)  # type: ignore[arg-type]
        assert_close(result.mean, mean, "float64", what=f"{convention} mean")
        ours = result.per_sample if result.per_sample.ndim == 1 else result.per_sample.mean(axis=1)
        expected = per_sample if weights is None else [w * v for w, v in zip(weights, per_sample, strict=True)]
        assert_close(ours, expected, "float64", what=f"{convention} per_sample")


# scikit-learn's domain, each side of every boundary: refused (field, index) where scikit-learn
# raises, answered where it answers.
REFUSED: list[tuple[str, dict[str, Any], list[float], list[float], str, tuple[int, ...], str]] = [
    ("poisson_deviance", {}, [1.0, 2.0, 1.0], [0.0, -1.0, 2.0], "labels", (1,), "with power 1, labels must be >= 0"),
    ("poisson_deviance", {}, [1.0, 0.0, 1.0], [0.0, 1.0, 2.0], "predictions", (1,), "predictions must be > 0"),
    ("gamma_deviance", {}, [1.0, 2.0, 1.0], [1.0, 2.0, 0.0], "labels", (2,), "with power 2, labels must be > 0"),
    ("gamma_deviance", {}, [1.0, -2.0], [1.0, 2.0], "predictions", (1,), "with power 2, predictions must be > 0"),
    ("tweedie_deviance", {"power": 0.5}, [1.0], [1.0], "options.power", (), "must be <= 0 or >= 1"),
    ("tweedie_deviance", {"power": 1e-9}, [1.0], [1.0], "options.power", (), "must be <= 0 or >= 1"),
    ("tweedie_deviance", {"power": 0.999}, [1.0], [1.0], "options.power", (), "must be <= 0 or >= 1"),
    ("tweedie_deviance", {"power": -1.0}, [1.0, 0.0], [-3.0, 1.0], "predictions", (1,), "predictions must be > 0"),
    ("tweedie_deviance", {"power": 1.5}, [1.0, 1.0], [1.0, -0.5], "labels", (1,), "labels must be >= 0"),
    ("tweedie_deviance", {"power": 1.5}, [1.0, 0.0], [1.0, 0.5], "predictions", (1,), "predictions must be > 0"),
    ("tweedie_deviance", {"power": 3.0}, [1.0, 1.0], [1.0, 0.0], "labels", (1,), "with power 3, labels must be > 0"),
    ("tweedie_deviance", {"power": 2.5}, [-1.0, 1.0], [1.0, 1.0], "predictions", (0,), "predictions must be > 0"),
    ("pinball", {"alpha": 1.5}, [1.0], [1.0], "options.alpha", (), "must be >= 0 and <= 1"),
    ("pinball", {"alpha": -0.1}, [1.0], [1.0], "options.alpha", (), "must be >= 0 and <= 1"),
    ("hamming", {}, [1.0, 2.0], [1.0, 2.5], "labels", (1,), "must be integers"),
    ("hamming", {}, [[0.0, 1.0], [1.0, 2.0]], [[0.0, 1.0], [1.0, 1.0]], "predictions", (1, 1), "must be one of"),
    ("hamming", {}, [[0.0, 1.0]], [[0.0, 3.0], [1.0, 0.0]], "labels", (), "does not match predictions shape"),
    ("hamming", {}, [[[0.0]]], [[[0.0]]], "predictions", (), "must be (N,) class values or (N, K) indicators"),
]


@pytest.mark.parametrize(
    ("loss", "options", "predictions", "labels", "field", "index", "message"),
    REFUSED,
    ids=[f"{c[0]}-{c[4]}-{i}" for i, c in enumerate(REFUSED)],
)
def test_refused_where_scikit_learn_refuses_naming_field_and_index(
    loss: str,
    options: dict[str, Any],
    predictions: list[float],
    labels: list[float],
    field: str,
    index: tuple[int, ...],
    message: str,
) -> None:
    for convention in ("keras", "torch"):
        with pytest.raises(LossInputError) as caught:
            compute(loss, predictions, labels, options=options, convention=convention)  # type: ignore[arg-type]
        assert (caught.value.field, caught.value.index) == (field, index)
        assert message in caught.value.reason
    reference = {
        "pinball": lambda y, p: mean_pinball_loss(y, p, **options),
        "tweedie_deviance": lambda y, p: mean_tweedie_deviance(y, p, **options),
        "poisson_deviance": mean_poisson_deviance,
        "gamma_deviance": mean_gamma_deviance,
        "hamming": hamming_loss,
    }[loss]
    # Its domain errors, InvalidParameterError (a ValueError) for options, _check_targets' refusals.
    with pytest.raises(ValueError, match=r"Tweedie deviance|parameter of|not supported|can't handle|inconsistent"):
        reference(np.asarray(labels), np.asarray(predictions))


ACCEPTED: list[tuple[str, dict[str, Any], list[float], list[float], Callable[..., float]]] = [
    ("poisson_deviance", {}, [0.5, 2.0], [0.0, 3.0], mean_poisson_deviance),  # y = 0
    ("tweedie_deviance", {"power": 1.5}, [0.5, 2.0], [0.0, 3.0], _tweedie(1.5)),  # y = 0
    ("tweedie_deviance", {"power": 1}, [0.5, 2.0], [0.0, 3.0], _tweedie(1)),  # the boundary itself
    ("tweedie_deviance", {"power": -2.0}, [0.5, 2.0], [-4.0, 0.0], _tweedie(-2.0)),  # any y
    ("tweedie_deviance", {"power": 0}, [-0.5, 0.0], [-4.0, 0.0], _tweedie(0)),  # any y and p
    ("tweedie_deviance", {"power": -1e-9}, [0.5, 2.0], [-4.0, 1.0], _tweedie(-1e-9)),
    ("pinball", {"alpha": 0}, [1.0, 3.0], [2.0, 0.0], _pinball(0.0)),
    ("pinball", {"alpha": 1}, [1.0, 3.0], [2.0, 0.0], _pinball(1.0)),
    ("hamming", {}, [[7.0], [3.0]], [[7.0], [4.0]], hamming_loss),  # one column: class values, not indicators
    ("hamming", {}, [-2.0, 30.0], [-2.0, 31.0], hamming_loss),
]


@pytest.mark.parametrize(
    ("loss", "options", "predictions", "labels", "reference"),
    ACCEPTED,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(ACCEPTED)],
)
def test_answered_where_scikit_learn_answers(
    loss: str, options: dict[str, Any], predictions: list[float], labels: list[float], reference: Any
) -> None:
    expected = reference(np.asarray(labels), np.asarray(predictions))
    assert compute(loss, predictions, labels, options=options).mean == pytest.approx(expected, rel=1e-12)


def test_indicator_arrays_hold_0_and_1_only() -> None:
    """scikit-learn reads any 2-D array of at most two distinct integers as indicators ([[3, 1]]
    among them), a property of the whole batch; the service asks for indicators as 0 and 1."""
    with pytest.raises(LossInputError) as caught:
        compute("hamming", [[0.0, 1.0]], [[3.0, 1.0]])
    assert (caught.value.field, caught.value.index) == ("labels", (0, 0))
    assert caught.value.reason == "multilabel indicators must be one of [0.0, 1.0], got 3.0"


def test_class_values_beyond_the_dtypes_integers_are_refused_in_float32() -> None:
    """16777217 is 16777216 in float32: two different labels would compare equal."""
    big = [16777217.0, 1.0]
    assert compute("hamming", [16777216.0, 1.0], big).mean == 0.5
    with pytest.raises(LossInputError) as caught:
        compute("hamming", [16777216.0, 1.0], big, dtype="float32")
    assert (caught.value.field, caught.value.index) == ("labels", (0,))
    assert caught.value.reason == "16777216.0 is beyond the integers float32 tells apart (below 2^24)"
    assert compute("hamming", [16777215.0, 1.0], [16777215.0, 2.0], dtype="float32").mean == 0.5


def test_a_deviance_that_overflows_is_refused_not_answered_with_inf() -> None:
    with pytest.raises(LossInputError) as caught:
        compute("gamma_deviance", [1e-30, 1.0], [1e30, 1.0], dtype="float32")
    assert (caught.value.field, caught.value.index) == ("predictions", (0,))
