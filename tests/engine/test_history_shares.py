"""Each sample's share of a loss's sum and denominator (`compute(..., shares=True)`): over any
subset of a batch they add up to what the engine gives for that subset alone, for every case of
every reference file (each framework's and library's own numbers), with and without weights.

This is what makes a history bucket's mean (`sum` of shares over `denominator` of shares) equal
to /v1/loss over the bucket's pairs, whichever join batches the pairs came in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.engine import LossInputError, compute, libraries, resolve
from service.engine.conventions import LIBRARIES

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FILES = ("keras", "torch", "xgboost", "lightgbm", "catboost")


def as_request(name: str, case: dict[str, Any]) -> dict[str, Any]:
    """A reference case as compute's loss and options (as each library's own test passes them)."""
    if name == "lightgbm":
        from tests.engine.test_engine_lightgbm import request

        wanted = request(case)
        return {**case, "loss": wanted["loss"], "options": wanted["options"]}
    if name == "catboost":
        from tests.engine.test_engine_catboost import _options

        return {**case, "loss": case["metric"], "options": _options(case)}
    if name == "xgboost":
        return {**case, "loss": case["metric"], "predictions": np.asarray(case["predictions"], np.float32).tolist()}
    return case


def cases() -> list[tuple[str, dict[str, Any], str]]:
    found = []
    for name in FILES:
        data = json.loads((FIXTURES / f"{name}_reference.json").read_text())
        for index, case in enumerate(data["cases"]):
            request = as_request(name, case)
            convention = case.get("convention", name)
            found.append((f"{name}-{index}-{case.get('id', request['loss'])}", request, convention))
    return found


CASES = cases()


def whole_batch(loss: str, convention: str, options: dict[str, Any]) -> bool:
    spec = libraries.bind(convention, loss, options)[0].spec if convention in LIBRARIES else resolve(loss)
    return spec.whole_batch


def float32_weight_sum(loss: str, convention: str, options: dict[str, Any]) -> bool:
    """LightGBM's cross_entropy metrics sum their weights in float32: shares sum them in float64."""
    return convention in LIBRARIES and libraries.bind(convention, loss, options)[0].weight_sum is not None


def per_sample_options(case: dict[str, Any]) -> bool:
    return any(isinstance(value, list) and key.endswith("lengths") for key, value in case["options"].items())


def run(case: dict[str, Any], convention: str, rows: Any, weight: Any, shares: bool = False) -> Any:
    predictions, labels = np.asarray(case["predictions"]), np.asarray(case["labels"])
    return compute(
        case["loss"],
        predictions[rows],
        labels[rows],
        options=case["options"],
        sample_weight=None if weight is None else weight[rows],
        dtype=case.get("dtype", "float64"),
        convention=convention,  # type: ignore[arg-type]
        chunk=True,
        shares=shares,
    )


def splittable(case: dict[str, Any], convention: str) -> bool:
    """Whether a subset of the case's samples is a batch of its own: at least two samples, a loss
    whose samples do not read the rest of the batch, no options given per sample."""
    return (
        len(case["predictions"]) >= 2
        and not whole_batch(case["loss"], convention, case["options"])
        and not per_sample_options(case)
    )


# Chosen when collected, so that CI (where nothing may skip) runs each of them.
SPLITTABLE = [c for c in CASES if splittable(c[1], c[2])]


def test_most_reference_cases_can_be_split() -> None:
    assert len(SPLITTABLE) > 0.8 * len(CASES)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize(("name", "case", "convention"), SPLITTABLE, ids=[c[0] for c in SPLITTABLE])
def test_shares_of_a_subset_add_up_to_the_subsets_own_sum_and_denominator(
    name: str, case: dict[str, Any], convention: str, weighted: bool
) -> None:
    samples = len(case["predictions"])
    given = case.get("sample_weight")
    weight = np.asarray(given, dtype=np.float64) if given is not None else None
    if weighted and weight is None:
        weight = np.random.default_rng(samples).uniform(0.1, 3.0, samples)
    if not weighted:
        weight = None
    everything = slice(None)
    try:
        whole = run(case, convention, everything, weight, shares=True)
    except LossInputError as exc:
        pytest.skip(f"the engine refuses this case with these weights: {exc}")
    assert whole.sample_sums is not None
    assert whole.sample_denominators is not None
    assert whole.sample_sums.shape == whole.sample_denominators.shape == (samples,)
    float32 = case.get("dtype") == "float32"
    rel = 2e-6 if float32 else 1e-12
    for rows in (everything, np.arange(0, samples, 2), np.arange(samples // 2, samples)):
        try:
            part = run(case, convention, rows, weight)
        except LossInputError:
            continue  # e.g. the subset lacks a class the loss reads from the batch
        sums, denominators = whole.sample_sums[rows].sum(), whole.sample_denominators[rows].sum()
        scale = np.abs(whole.sample_sums[rows]).sum() or 1.0
        assert abs(sums - part.sum) <= rel * scale, (name, sums, part.sum)
        if weight is None or not float32_weight_sum(case["loss"], convention, case["options"]):
            assert denominators == pytest.approx(part.denominator, rel=rel, abs=1e-300)


def test_an_ignored_target_has_no_share_of_the_denominator() -> None:
    """PyTorch's ignore_index: the pair counts 0 in the denominator, and 0 in the sum."""
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    result = compute(
        "scce", logits, np.array([0, -100, 1]), options={"from_logits": True}, convention="torch", shares=True
    )
    assert result.sample_denominators is not None
    assert result.sample_sums is not None
    np.testing.assert_array_equal(result.sample_denominators, [1.0, 0.0, 1.0])
    assert result.sample_sums[1] == 0.0
    assert result.sample_sums.sum() / result.sample_denominators.sum() == pytest.approx(result.mean, rel=1e-15)


def test_a_keras_ignored_class_has_no_share_of_the_sum_nor_of_the_denominator() -> None:
    """Keras's ignore_class masks the pair out of the sum and counts it 0; the others count 1
    each, whatever their weight (sum_over_batch_size)."""
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0], [1.0, 1.5, 1.0]])
    weight = np.array([2.0, 5.0, 0.5])
    result = compute(
        "scce",
        logits,
        np.array([0, 2, 1]),
        options={"from_logits": True, "ignore_class": 2},
        sample_weight=weight,
        convention="keras",
        shares=True,
    )
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(
        result.sample_sums, [-2.0 * log_softmax[0, 0], 0.0, -0.5 * log_softmax[2, 1]], rtol=1e-15, atol=0.0
    )
    np.testing.assert_array_equal(result.sample_denominators, [1.0, 0.0, 1.0])


def test_weights_are_each_samples_share_of_a_weighted_mean() -> None:
    """torch: sum(w l) / sum(w), so a sample's share of the denominator is its weight."""
    predictions, labels = np.array([[1.0], [2.0], [4.0]]), np.array([[0.0], [0.0], [0.0]])
    weight = np.array([0.5, 2.0, 0.0])
    result = compute("mse", predictions, labels, sample_weight=weight, convention="torch", shares=True)
    assert result.sample_sums is not None
    np.testing.assert_array_equal(result.sample_denominators, weight)
    np.testing.assert_array_equal(result.sample_sums, [0.5, 8.0, 0.0])
    # keras sum_over_batch_size divides by the number of values, whatever the weights
    keras = compute("mse", predictions, labels, sample_weight=weight, convention="keras", shares=True)
    np.testing.assert_array_equal(keras.sample_denominators, [1.0, 1.0, 1.0])
    # Not asked for, they are not made.
    unasked = compute("mse", predictions, labels, sample_weight=weight, convention="torch")
    assert (unasked.sample_sums, unasked.sample_denominators) == (None, None)


def test_kl_divergence_batchmean_counts_each_sample_once_with_its_weight() -> None:
    """KLDivLoss(reduction='batchmean'): a sample's share of the denominator is 1 (its weight),
    however many values it has; its share of the sum, its values' sum."""
    p = [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]
    y = [[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]]
    terms = [
        sum(t * (math.log(t) - math.log(q)) for q, t in zip(rp, ry, strict=True)) for rp, ry in zip(p, y, strict=True)
    ]
    plain = compute("kl_divergence", p, y, convention="torch", shares=True)
    np.testing.assert_array_equal(plain.sample_denominators, [1.0, 1.0])
    np.testing.assert_allclose(plain.sample_sums, terms, rtol=1e-13)
    weighted = compute("kl_divergence", p, y, convention="torch", sample_weight=[3.0, 0.5], shares=True)
    np.testing.assert_array_equal(weighted.sample_denominators, [3.0, 0.5])
    np.testing.assert_allclose(weighted.sample_sums, [3.0 * terms[0], 0.5 * terms[1]], rtol=1e-13)
    # Two rows of values a sample: still one count a sample.
    rows = compute("kl_divergence", [p, p[::-1]], [y, y[::-1]], convention="torch", shares=True)
    assert rows.per_sample.shape == (2, 2)
    np.testing.assert_array_equal(rows.sample_denominators, [1.0, 1.0])


def test_ctc_shares_are_each_loss_over_its_target_length_and_the_weight() -> None:
    """CTCLoss(reduction='mean'): a sample's share of the sum is w l / max(L, 1), of the denominator w."""
    from tests.engine.test_engine_ctc import _batch, _log_softmax

    batch = _batch(5)
    log_p = _log_softmax(batch["logits"])
    options = {"target_lengths": batch["targets"].tolist(), "zero_infinity": True}
    lengths = np.maximum(batch["targets"], 1)
    plain = compute("ctc", log_p, batch["labels"], options=options, convention="torch", shares=True)
    np.testing.assert_allclose(plain.sample_sums, plain.per_sample / lengths, rtol=1e-15)
    np.testing.assert_array_equal(plain.sample_denominators, np.ones(6))
    weights = np.array([0.5, 2.0, 1.0, 0.0, 1.5, 1.0])
    weighted = compute(
        "ctc", log_p, batch["labels"], options=options, sample_weight=weights, convention="torch", shares=True
    )
    np.testing.assert_allclose(weighted.sample_sums, weights * plain.per_sample / lengths, rtol=1e-15)
    np.testing.assert_array_equal(weighted.sample_denominators, weights)


def test_torch_shares_count_every_value_and_add_float32_values_in_float64() -> None:
    """BCELoss(reduction='mean') counts each of a sample's values once; the shares of a float32
    batch are float64 sums of its float32 values."""
    p = [[0.1, 0.7, 0.35], [0.9, 0.2, 0.6]]
    y = [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]
    result = compute("bce", p, y, convention="torch", dtype="float32", shares=True)
    assert result.sample_sums is not None
    assert result.sample_sums.dtype == np.float64
    np.testing.assert_array_equal(result.sample_denominators, [3.0, 3.0])
    expected = [sum(float(v) for v in row) for row in result.per_sample]  # float64, value by value
    np.testing.assert_allclose(result.sample_sums, expected, rtol=1e-15)
    assert not np.allclose(expected, result.per_sample.sum(axis=1), rtol=1e-15, atol=0)  # float32 sums differ


def test_float32_shares_of_class_weights_are_their_float32_products_with_the_sample_weights() -> None:
    """nll_loss weighs each target by weight[y] * w in the working dtype: a float32 batch's share of
    the denominator is that float32 product."""
    class_weight, labels, weight = [0.1, 0.7, 0.3], [0, 2, 1], [0.3, 0.7, 1.1]
    logits = [[2.0, 0.5, -1.0], [0.1, 1.2, 0.3], [1.0, 1.0, 1.0]]
    result = compute(
        "scce",
        logits,
        labels,
        options={"from_logits": True, "class_weight": class_weight},
        sample_weight=weight,
        convention="torch",
        dtype="float32",
        shares=True,
    )
    products = [float(np.float32(class_weight[c]) * np.float32(w)) for c, w in zip(labels, weight, strict=True)]
    np.testing.assert_array_equal(result.sample_denominators, products)
    assert products != [
        float(np.float32(class_weight[c])) * float(np.float32(w)) for c, w in zip(labels, weight, strict=True)
    ]
