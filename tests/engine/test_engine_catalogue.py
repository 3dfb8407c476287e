"""The losses beyond the foundation against independent references: the naive float64 formulas
(Keras forms), scikit-learn itself, and the catalogue's own promises."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss
from sklearn.metrics import log_loss as sklearn_log_loss

from service.engine import LossInputError, catalogue, compute
from tests.reference import naive
from tests.tolerance import assert_close, compute_case

RNG = np.random.default_rng(11)
N, C = 7, 4
VALUES = RNG.normal(0, 2, (N, C)).tolist()
TARGETS = RNG.normal(0, 2, (N, C)).tolist()
POSITIVE = RNG.uniform(0.0, 5.0, (N, C)).tolist()
COUNTS = RNG.poisson(2.0, (N, C)).astype(float).tolist()
RAW = RNG.random((N, C)) + 0.01
PROBABILITIES = (RAW / RAW.sum(1, keepdims=True)).tolist()
SOFT = PROBABILITIES[::-1]
ONE_HOT = np.eye(C)[RNG.integers(0, C, N)].tolist()
BINARY = RNG.integers(0, 2, (N, C)).astype(float).tolist()
SIGNS = (2 * np.asarray(BINARY) - 1).tolist()
LOGITS = RNG.normal(0, 3, (N, C)).tolist()

Case = tuple[str, dict[str, Any], Any, Any, Callable[[], tuple[Any, float]]]
KERAS_CASES: list[Case] = [
    ("mape", {}, VALUES, TARGETS, lambda: naive.mape(VALUES, TARGETS)),
    ("msle", {}, POSITIVE, COUNTS, lambda: naive.msle(POSITIVE, COUNTS)),
    ("huber", {"delta": 0.7}, VALUES, TARGETS, lambda: naive.huber_keras(VALUES, TARGETS, 0.7)),
    ("log_cosh", {}, VALUES, TARGETS, lambda: naive.log_cosh(VALUES, TARGETS)),
    ("poisson", {}, POSITIVE, COUNTS, lambda: naive.poisson(POSITIVE, COUNTS)),
    ("kl_divergence", {}, PROBABILITIES, SOFT, lambda: naive.kl_keras(PROBABILITIES, SOFT)),
    ("cosine_similarity", {}, VALUES, TARGETS, lambda: naive.cosine_keras(VALUES, TARGETS)),
    ("hinge", {}, VALUES, BINARY, lambda: naive.hinge(VALUES, BINARY)),
    ("hinge", {}, VALUES, SIGNS, lambda: naive.hinge(VALUES, SIGNS)),
    ("squared_hinge", {}, VALUES, BINARY, lambda: naive.squared_hinge(VALUES, BINARY)),
    ("categorical_hinge", {}, VALUES, ONE_HOT, lambda: naive.categorical_hinge(VALUES, ONE_HOT)),
    (
        "binary_focal_crossentropy",
        {"gamma": 2.0},
        PROBABILITIES,
        BINARY,
        lambda: naive.binary_focal(PROBABILITIES, BINARY, 2.0, 0.25, False, False, 0.0),
    ),
    (
        "binary_focal_crossentropy",
        {"gamma": 1.5, "alpha": 0.3, "apply_class_balancing": True, "from_logits": True, "label_smoothing": 0.1},
        LOGITS,
        BINARY,
        lambda: naive.binary_focal(LOGITS, BINARY, 1.5, 0.3, True, True, 0.1),
    ),
    (
        "categorical_focal_crossentropy",
        {},
        PROBABILITIES,
        ONE_HOT,
        lambda: naive.categorical_focal(PROBABILITIES, ONE_HOT, 0.25, 2.0, False),
    ),
    (
        "categorical_focal_crossentropy",
        {"alpha": [0.1, 0.2, 0.3, 0.4], "gamma": 1.0, "from_logits": True},
        LOGITS,
        SOFT,
        lambda: naive.categorical_focal(LOGITS, SOFT, [0.1, 0.2, 0.3, 0.4], 1.0, True),
    ),
    ("poly1_cross_entropy", {"epsilon": 1.5}, LOGITS, SOFT, lambda: naive.poly1(LOGITS, SOFT, 1.5)),
]


@pytest.mark.parametrize(
    ("loss", "options", "predictions", "labels", "reference"),
    KERAS_CASES,
    ids=[f"{c[0]}-{'-'.join(c[1]) or 'default'}" for c in KERAS_CASES],
)
def test_keras_forms_match_the_naive_reference(
    loss: str, options: dict[str, Any], predictions: Any, labels: Any, reference: Any
) -> None:
    expected_per_sample, expected_mean = reference()
    result = compute(loss, predictions, labels, options=options)
    assert_close(result.per_sample, expected_per_sample, "float64", what="per_sample")
    assert_close(result.mean, expected_mean, "float64", what="mean")


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # one zeroed probability, on purpose
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_log_loss_and_brier_match_scikit_learn_multiclass(dtype: str) -> None:
    y = RNG.integers(0, C, 40)
    y[:C] = np.arange(C)
    p = RNG.random((40, C)) + 0.01
    p /= p.sum(1, keepdims=True)
    p[0, y[0]] = 0.0  # clipped to eps
    weights = RNG.uniform(0.1, 2.0, 40)
    p_dtype = p.astype(dtype)
    for convention in ("keras", "torch"):
        log = compute("log_loss", p_dtype, y, sample_weight=weights, dtype=dtype, convention=convention)  # type: ignore[arg-type]
        expected = sklearn_log_loss(y, p_dtype, sample_weight=weights.astype(dtype))
        assert log.mean == pytest.approx(expected, rel=1e-12 if dtype == "float64" else 1e-6)
        brier = compute("brier_score", p_dtype, y, sample_weight=weights, dtype=dtype, convention=convention)  # type: ignore[arg-type]
        expected = brier_score_loss(y, p_dtype, sample_weight=weights.astype(dtype))
        assert brier.mean == pytest.approx(expected, rel=1e-12 if dtype == "float64" else 1e-6)


def test_log_loss_and_brier_match_scikit_learn_binary_with_class_values() -> None:
    y = np.array([3.0, 7.0, 7.0, 3.0, 7.0])
    p = np.array([0.1, 0.8, 0.6, 0.4, 1.0])
    log = compute("log_loss", p, y)
    assert log.mean == pytest.approx(sklearn_log_loss(y, p), rel=1e-12)
    brier = compute("brier_score", p, y)
    assert brier.mean == pytest.approx(brier_score_loss(y, p, pos_label=7.0), rel=1e-12)
    named = compute("log_loss", p, y, options={"labels": [3.0, 7.0]})
    assert named.mean == log.mean
    with pytest.raises(LossInputError, match="2 classes"):
        compute("log_loss", RNG.random((5, 3)), y)


def test_every_loss_documents_formula_shapes_and_source() -> None:
    names = {spec.name for spec in catalogue()}
    assert len(names) == 46
    for spec in catalogue():
        assert spec.formula, spec.name
        assert spec.shapes, spec.name
        assert spec.follows, spec.name
        assert spec.function.__doc__


@pytest.mark.parametrize(
    ("loss", "predictions", "labels", "options", "field", "message"),
    [
        ("poisson", [[-1.0]], [[1.0]], {}, "predictions", "must be >= 0"),
        ("poisson_nll", [[1.0]], [[-1.0]], {}, "labels", "must be >= 0"),
        ("gaussian_nll", [[1.0, -0.5]], [1.0], {}, "predictions", "variance must be >= 0"),
        ("gaussian_nll", [[1.0, 0.5, 2.0]], [1.0], {}, "predictions", "last axis of 2"),
        ("hinge", [[1.0]], [[2.0]], {}, "labels", "must be one of"),
        ("margin_ranking", [[1.0, 2.0, 3.0]], [1.0], {}, "predictions", "(N, ..., 2)"),
        ("margin_ranking", [[1.0, 2.0]], [0.5], {}, "labels", "must be one of [-1.0, 1.0]"),
        ("cosine_embedding", [[1.0, 2.0]], [1.0], {}, "predictions", "(N, 2, D)"),
        ("triplet_margin", [[1.0, 2.0]], [[1.0, 2.0]], {}, "labels", "[positive, negative]"),
        ("multi_margin", [[1.0, 2.0]], [2], {}, "labels", "outside [0, 1]"),
        ("nll", [[-0.1, -2.0]], [5], {}, "labels", "outside [0, 1]"),
        ("kl_divergence", [[0.5, 1.5]], [[0.5, 0.5]], {}, "predictions", "must lie in [0, 1]"),
        ("log_loss", [[0.5, 0.5]], [1.0], {"classes": [0.0, 1.0, 2.0]}, "options.classes", "3 classes"),
        ("log_loss", [0.5, 0.5], [0.0, 2.0], {"classes": [0.0, 1.0]}, "labels", "not one of the classes"),
        (
            "multilabel_soft_margin",
            [[0.5, 0.5]],
            [[1.0, 0.0]],
            {"weight": [1.0]},
            "options.weight",
            "one value per class",
        ),
    ],
)
def test_new_losses_refuse_bad_input_precisely(
    loss: str, predictions: Any, labels: Any, options: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(LossInputError) as caught:
        compute(loss, predictions, labels, options=options, convention="torch")
    assert caught.value.field == field
    assert message in caught.value.reason


def test_kl_divergence_log_options_exist_only_under_torch() -> None:
    with pytest.raises(LossInputError, match="only under convention 'torch'"):
        compute("kld", [[0.5, 0.5]], [[0.5, 0.5]], options={"log_input": True})


def test_multi_margin_crammer_singer_takes_the_largest_violation() -> None:
    scores = [[2.0, 1.5, -1.0], [0.0, 3.0, 2.9]]
    result = compute("multi_margin", scores, [0, 1], options={"form": "crammer_singer"})
    assert result.per_sample.tolist() == pytest.approx([max(0, 1 - 2.0 + 1.5), max(0, 1 - 3.0 + 2.9)], rel=1e-15)


READ_ONLY_CASES = [
    (case, convention)
    for fixture, convention in (("torch_reference.json", "torch"), ("keras_reference.json", "keras"))
    for case in json.loads((Path(__file__).parent.parent / "fixtures" / fixture).read_text())["cases"]
] + [
    # The losses the framework fixtures do not cover (scikit-learn's and Optax's forms).
    ({"id": f"{loss}-{dtype}", "loss": loss, "options": {}, "dtype": dtype, **inputs}, "keras")
    for dtype in ("float32", "float64")
    for loss, inputs in {
        "brier_score": {"predictions": [[0.2, 0.5, 0.3], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "labels": [1, 0, 2]},
        "log_loss": {"predictions": [[0.2, 0.5, 0.3], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "labels": [2, 0, 1]},
        "poly1_cross_entropy": {"predictions": [[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], "labels": [[1, 0, 0], [0, 0, 1]]},
        "pinball": {"predictions": [[2.0, -1.0], [0.1, 3.0]], "labels": [[1.0, 0.5], [0.0, 2.0]]},
        "tweedie_deviance": {"predictions": [[2.0, -1.0], [0.1, 3.0]], "labels": [[1.0, 0.5], [0.0, 2.0]]},
        "poisson_deviance": {"predictions": [[2.0, 1.0], [0.1, 3.0]], "labels": [[1.0, 0.0], [0.0, 2.0]]},
        "gamma_deviance": {"predictions": [[2.0, 1.0], [0.1, 3.0]], "labels": [[1.0, 0.5], [0.2, 2.0]]},
        "hamming": {"predictions": [[1, 0], [0, 1]], "labels": [[1, 1], [0, 1]], "sample_weight": [2.0, 0.5]},
        "zero_one": {"predictions": [[0.2, 0.5, 0.3], [0.7, 0.2, 0.1]], "labels": [1, 2], "sample_weight": [2.0, 0.5]},
    }.items()
]


@pytest.mark.parametrize(("case", "convention"), READ_ONLY_CASES, ids=lambda c: c["id"] if isinstance(c, dict) else c)
def test_no_loss_writes_into_its_inputs(case: dict[str, Any], convention: str) -> None:
    """Binary bodies arrive as read-only views of the request's bytes (OIP, npz): every loss must
    leave its inputs alone, and give the same numbers as with private writable copies."""

    def arrays(writable: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in ("predictions", "labels", "sample_weight"):
            if case.get(field) is not None:
                array = np.array(case[field])
                array = array.astype(case["dtype"]) if array.dtype.kind == "f" else array
                array.setflags(write=writable)
                out[field] = array
        return out

    read_only = compute_case({**case, **arrays(writable=False)}, convention)
    writable = compute_case({**case, **arrays(writable=True)}, convention)
    np.testing.assert_array_equal(read_only.per_sample, writable.per_sample)
    assert read_only.mean == writable.mean
