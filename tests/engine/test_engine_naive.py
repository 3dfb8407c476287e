"""The engine against the naive float64 reference (tests/reference/naive.py), both conventions."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from service.engine import LossInputError, compute
from tests.reference import naive
from tests.tolerance import assert_close

RNG = np.random.default_rng(7)
N, C = 9, 4
LOGITS = RNG.normal(0, 3, (N, C)).tolist()
RAW = RNG.random((N, C)) + 0.01
PROBABILITIES = (RAW / RAW.sum(1, keepdims=True)).tolist()
UNNORMALISED = (RAW * 1.7).clip(0, 1).tolist()  # Keras renormalises these rows
ONE_HOT = np.eye(C)[RNG.integers(0, C, N)].tolist()
SOFT = PROBABILITIES[::-1]
LABELS = RNG.integers(0, C, N).tolist()
BINARY = RNG.integers(0, 2, (N, C)).astype(float).tolist()
VALUES = RNG.normal(0, 2, (N, C)).tolist()
TARGETS = RNG.normal(0, 2, (N, C)).tolist()
WEIGHTS = [0.5, 2.0, 1.0, 0.25]

Case = tuple[str, str, dict[str, Any], Any, Any, Callable[[], tuple[Any, float]]]

CASES: list[Case] = [
    ("bce", "keras", {}, PROBABILITIES, BINARY, lambda: naive.bce_keras(PROBABILITIES, BINARY)),
    ("bce", "keras", {"from_logits": True}, LOGITS, BINARY, lambda: naive.bce_keras(LOGITS, BINARY, from_logits=True)),
    (
        "bce",
        "keras",
        {"label_smoothing": 0.2},
        PROBABILITIES,
        BINARY,
        lambda: naive.bce_keras(PROBABILITIES, BINARY, label_smoothing=0.2),
    ),
    ("bce", "torch", {}, PROBABILITIES, BINARY, lambda: naive.bce_torch(PROBABILITIES, BINARY)),
    (
        "bce",
        "torch",
        {"from_logits": True, "pos_weight": WEIGHTS, "weight": WEIGHTS[::-1]},
        LOGITS,
        BINARY,
        lambda: naive.bce_torch(LOGITS, BINARY, from_logits=True, pos_weight=WEIGHTS, weight=WEIGHTS[::-1]),
    ),
    ("cce", "keras", {}, UNNORMALISED, ONE_HOT, lambda: naive.cce(UNNORMALISED, ONE_HOT, "keras")),
    (
        "cce",
        "keras",
        {"from_logits": True, "label_smoothing": 0.1, "class_weight": WEIGHTS},
        LOGITS,
        ONE_HOT,
        lambda: naive.cce(LOGITS, ONE_HOT, "keras", True, 0.1, WEIGHTS),
    ),
    ("cce", "torch", {}, PROBABILITIES, SOFT, lambda: naive.cce(PROBABILITIES, SOFT, "torch")),
    (
        "cce",
        "torch",
        {"from_logits": True, "label_smoothing": 0.3, "class_weight": WEIGHTS},
        LOGITS,
        SOFT,
        lambda: naive.cce(LOGITS, SOFT, "torch", True, 0.3, WEIGHTS),
    ),
    ("scce", "keras", {}, UNNORMALISED, LABELS, lambda: naive.scce(UNNORMALISED, LABELS, "keras")),
    (
        "scce",
        "keras",
        {"from_logits": True, "ignore_class": LABELS[0], "class_weight": WEIGHTS},
        LOGITS,
        LABELS,
        lambda: naive.scce(LOGITS, LABELS, "keras", True, ignore_index=LABELS[0], class_weight=WEIGHTS),
    ),
    (
        "scce",
        "keras",
        {"from_logits": True, "label_smoothing": 0.2},
        LOGITS,
        LABELS,
        lambda: naive.scce(LOGITS, LABELS, "keras", True, label_smoothing=0.2),
    ),
    (
        "scce",
        "torch",
        {"from_logits": True, "ignore_index": LABELS[1], "class_weight": WEIGHTS, "label_smoothing": 0.25},
        LOGITS,
        LABELS,
        lambda: naive.scce(LOGITS, LABELS, "torch", True, LABELS[1], 0.25, WEIGHTS),
    ),
    ("scce", "torch", {}, PROBABILITIES, LABELS, lambda: naive.scce(PROBABILITIES, LABELS, "torch")),
    ("mse", "keras", {}, VALUES, TARGETS, lambda: naive.mse(VALUES, TARGETS, "keras")),
    ("mse", "torch", {}, VALUES, TARGETS, lambda: naive.mse(VALUES, TARGETS, "torch")),
    ("mae", "keras", {}, VALUES, TARGETS, lambda: naive.mae(VALUES, TARGETS, "keras")),
    ("mae", "torch", {}, VALUES, TARGETS, lambda: naive.mae(VALUES, TARGETS, "torch")),
]


@pytest.mark.parametrize(
    ("loss", "convention", "options", "predictions", "labels", "reference"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{'-'.join(c[2]) or 'default'}" for c in CASES],
)
def test_matches_naive_reference(
    loss: str, convention: str, options: dict[str, Any], predictions: Any, labels: Any, reference: Any
) -> None:
    expected_per_sample, expected_mean = reference()
    result = compute(loss, predictions, labels, options=options, convention=convention)  # type: ignore[arg-type]
    assert_close(result.per_sample, expected_per_sample, "float64", what="per_sample")
    assert_close(result.mean, expected_mean, "float64", what="mean")
    assert_close(result.sum, np.sum(expected_per_sample), "float64", what="sum")


def test_keras_sample_weight_divides_by_batch_size_and_torch_by_weight_sum() -> None:
    weights = [1.0, 0.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.5, 1.0]
    per_sample, _ = naive.scce(LOGITS, LABELS, "keras", True)
    keras = compute("scce", LOGITS, LABELS, options={"from_logits": True}, sample_weight=weights)
    weighted = [w * v for w, v in zip(weights, per_sample, strict=True)]
    assert_close(keras.per_sample, weighted, "float64")
    assert_close(keras.mean, sum(weighted) / N, "float64")
    torch = compute("scce", LOGITS, LABELS, options={"from_logits": True}, sample_weight=weights, convention="torch")
    assert_close(torch.mean, sum(weighted) / sum(weights), "float64")


def test_keras_all_ignored_batch_means_zero_and_torch_refuses() -> None:
    labels = [2] * N
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras's divide_no_nan: no division by zero on the way
        keras = compute("scce", LOGITS, labels, options={"from_logits": True, "ignore_class": 2})
    assert keras.mean == 0.0
    assert not keras.per_sample.any()
    with pytest.raises(LossInputError, match="every target equals the ignore index"):
        compute("scce", LOGITS, [-100] * N, options={"from_logits": True}, convention="torch")


def test_extreme_logits_stay_finite_and_exact() -> None:
    result = compute("scce", [[1e4, -1e4, 0.0]], [1], options={"from_logits": True})
    assert result.per_sample[0] == 2e4
    bce = compute("bce", [[1e4, -1e4]], [[0.0, 1.0]], options={"from_logits": True}, convention="torch")
    assert bce.per_sample.tolist() == [[1e4, 1e4]]


def test_true_class_probability_zero_is_capped_by_each_convention() -> None:
    keras = compute("scce", [[0.0, 1.0]], [0])
    assert keras.per_sample[0] == pytest.approx(-np.log(1e-7), rel=1e-12)
    torch = compute("scce", [[0.0, 1.0]], [0], convention="torch")
    assert torch.per_sample[0] == 100.0


def test_one_element_batch_and_one_class() -> None:
    assert compute("mse", [3.0], [1.0]).per_sample.tolist() == [4.0]
    single = compute("scce", [[5.0]], [0], options={"from_logits": True})
    assert single.per_sample.tolist() == [0.0]


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"loss": "mse", "predictions": [], "labels": []}, "predictions", "empty"),
        ({"loss": "mse", "predictions": [[1.0, 2.0]], "labels": [[1.0]]}, "labels", "does not match"),
        ({"loss": "scce", "predictions": [[0.5, 0.5]], "labels": [2]}, "labels", "outside [0, 1]"),
        ({"loss": "scce", "predictions": [[0.5, 0.5]], "labels": [0.5]}, "labels", "must be integers"),
        ({"loss": "bce", "predictions": [[1.5]], "labels": [[1.0]]}, "predictions", "must lie in [0, 1]"),
        ({"loss": "bce", "predictions": [[0.5]], "labels": [[2.0]]}, "labels", "must lie in [0, 1]"),
        ({"loss": "mse", "predictions": [[np.nan]], "labels": [[1.0]]}, "predictions", "not a finite"),
        (
            {"loss": "mse", "predictions": [[1e39]], "labels": [[1.0]], "dtype": "float32"},
            "predictions",
            "overflows float32",
        ),
        ({"loss": "scce", "predictions": [[0.0, 0.0]], "labels": [0]}, "predictions", "sum to 0"),
        ({"loss": "mse", "predictions": [[1.0]], "labels": [[1.0]], "sample_weight": [-1.0]}, "sample_weight", ">= 0"),
        (
            {"loss": "mse", "predictions": [[1.0]], "labels": [[1.0]], "sample_weight": [1.0, 2.0]},
            "sample_weight",
            "fits",
        ),
        (
            {"loss": "mse", "predictions": [[1.0], [2.0]], "labels": [[1.0], [1.0]], "sample_weight": [1.0] * 3},
            "sample_weight",
            "shape [3] fits neither the batch (2 samples) nor the per-sample loss shape [2]",
        ),
        ({"loss": "cce", "predictions": [0.5, 0.5], "labels": [1.0, 0.0]}, "predictions", "at least 2 dimensions"),
        (
            {"loss": "scce", "predictions": [[0.5, 0.5]], "labels": [0], "options": {"bogus": 1}},
            "options.bogus",
            "not an option",
        ),
        (
            {"loss": "scce", "predictions": [[0.5, 0.5]], "labels": [0], "options": {"class_weight": [1.0]}},
            "options.class_weight",
            "one value per class",
        ),
        (
            {
                "loss": "bce",
                "predictions": [[0.5]],
                "labels": [[1.0]],
                "options": {"label_smoothing": 0.1},
                "convention": "torch",
            },
            "options.label_smoothing",
            "only under convention 'keras'",
        ),
        (
            {"loss": "bce", "predictions": [[0.5]], "labels": [[1.0]], "options": {"label_smoothing": 1.5}},
            "options.label_smoothing",
            "<= 1",
        ),
    ],
)
def test_bad_input_names_field_and_reason(kwargs: dict[str, Any], field: str, message: str) -> None:
    rest = dict(kwargs)  # the parameter is shared by every run of this test: left as it came
    loss, predictions, labels = rest.pop("loss"), rest.pop("predictions"), rest.pop("labels")
    with pytest.raises(LossInputError) as caught:
        compute(loss, predictions, labels, **rest)
    assert caught.value.field == field
    assert message in caught.value.reason


def test_denominator_lets_chunks_recombine_the_mean() -> None:
    labels = list(LABELS)
    labels[2] = labels[5] = 1
    for convention, options in (
        ("keras", {"from_logits": True, "ignore_class": 1}),
        ("torch", {"from_logits": True, "ignore_index": 1, "class_weight": WEIGHTS}),
    ):
        whole = compute("scce", LOGITS, labels, options=options, convention=convention)  # type: ignore[arg-type]
        parts = [
            compute("scce", LOGITS[a:b], labels[a:b], options=options, convention=convention)  # type: ignore[arg-type]
            for a, b in ((0, 4), (4, N))
        ]
        assert whole.mean == pytest.approx(sum(p.sum for p in parts) / sum(p.denominator for p in parts), rel=1e-14)
        assert whole.denominator == sum(p.denominator for p in parts)


def test_a_chunk_with_nothing_to_count_reports_denominator_zero() -> None:
    all_ignored = [-100] * N
    chunk = compute("scce", LOGITS, all_ignored, options={"from_logits": True}, convention="torch", chunk=True)
    assert (chunk.mean, chunk.sum, chunk.denominator) == (0.0, 0.0, 0.0)
    with pytest.raises(LossInputError, match="every target equals the ignore index"):
        compute("scce", LOGITS, all_ignored, options={"from_logits": True}, convention="torch")


def test_torch_float32_mean_over_the_targets_not_ignored_is_a_float32_quotient() -> None:
    """nll_loss in float32 divides its float32 sum by its float32 count of counted targets."""
    logits = [[2.0, 0.5, -1.0], [0.1, 1.2, 0.3], [1.0, 1.0, 1.0], [0.3, -0.2, 0.9]]
    labels = [0, -100, 2, 1]
    per_sample, _ = naive.scce(logits, labels, "torch", True)
    result = compute("scce", logits, labels, options={"from_logits": True}, dtype="float32", convention="torch")
    assert_close(result.sum, sum(per_sample), "float32", what="sum")
    assert result.denominator == 3.0
    assert result.mean == float(np.float32(result.sum) / np.float32(3.0))
    assert result.mean != result.sum / 3.0  # the float64 quotient: not what PyTorch gives


def test_kl_divergence_under_torch_is_batchmean_weighted_or_not() -> None:
    """KLDivLoss(reduction='batchmean'): the sum over all values divided by N; with sample weights,
    by their sum. Per sample: sum_c y (log y - log p), from the published formula."""
    p = [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]
    y = [[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]]
    per_sample = [
        sum(t * (math.log(t) - math.log(q)) for q, t in zip(row_p, row_y, strict=True))
        for row_p, row_y in zip(p, y, strict=True)
    ]
    result = compute("kl_divergence", p, y, convention="torch")
    assert_close(result.per_sample, per_sample, "float64")
    assert result.mean == pytest.approx(sum(per_sample) / 2, rel=1e-12)
    weighted = compute("kl_divergence", p, y, convention="torch", sample_weight=[3.0, 1.0])
    assert weighted.mean == pytest.approx((3 * per_sample[0] + per_sample[1]) / 4, rel=1e-12)
    with pytest.raises(LossInputError) as caught:
        compute("kl_divergence", p, y, convention="torch", sample_weight=[0.0, 0.0])
    assert (caught.value.field, caught.value.reason) == ("sample_weight", "the weights sum to 0; the mean would be 0/0")


def test_a_loss_that_overflows_is_refused_not_answered_with_inf() -> None:
    """The reduction's last guard: inputs that are finite but whose loss overflows the dtype."""
    with pytest.raises(LossInputError) as per_sample:
        compute("mse", [[1.0], [3e20]], [[0.0], [0.0]], dtype="float32")  # (3e20)^2 overflows float32
    assert (per_sample.value.field, per_sample.value.index) == ("predictions", (1,))
    assert per_sample.value.reason == "the loss of this sample is not finite (inf); it overflows the dtype"
    big = 1e19  # each square is finite in float32 (1e38), their sum is not
    with pytest.raises(LossInputError) as total:
        compute("mse", [[big], [big], [big], [big]], [[0.0]] * 4, dtype="float32", convention="torch")
    assert (total.value.field, total.value.index) == ("predictions", ())
    assert total.value.reason == "the sum of the losses overflows the dtype; use float64"
    assert compute("mse", [[big], [big], [big], [big]], [[0.0]] * 4, convention="torch").mean == pytest.approx(1e38)
    # Keras's masked mean weighs each kept sample by count / kept (here 2): a finite sum, an infinite mean.
    masked = [[1e38, -1e38, 0.0], [0.0, 0.0, 0.0]]  # the first sample's loss: 2e38
    with pytest.raises(LossInputError) as mean:
        compute("scce", masked, [1, 2], options={"from_logits": True, "ignore_class": 2}, dtype="float32")
    assert mean.value.reason == "the sum of the losses overflows the dtype; use float64"


def test_torch_refusals_for_a_mean_of_nothing_in_their_words() -> None:
    logits = [[2.0, 0.5, -1.0], [0.1, 1.2, 0.3]]
    with pytest.raises(LossInputError) as ignored:
        compute("scce", logits, [1, 1], options={"from_logits": True, "ignore_index": 1}, convention="torch")
    assert (ignored.value.field, ignored.value.reason) == (
        "labels",
        "every target equals the ignore index; PyTorch's mean would be 0/0 (NaN)",
    )
    with pytest.raises(LossInputError) as weights:
        compute("scce", logits, [0, 2], options={"from_logits": True}, convention="torch", sample_weight=[0.0, 0.0])
    assert (weights.value.field, weights.value.reason) == (
        "sample_weight",
        "the weights of the counted targets sum to 0; the mean would be 0/0",
    )
