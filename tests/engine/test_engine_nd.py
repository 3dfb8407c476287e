"""Every loss on inputs of more than two axes (and one where a loss takes it).

PyTorch's side (1-, 3- and 4-axis cases of every loss PyTorch takes them for, reduction 'none',
'mean'/'batchmean' and 'sum') lives in the committed fixture and the live comparison
(tests/engine/test_engine_torch.py). Here: Keras's side, sample weights of each accepted shape, and the
shapes PyTorch refuses, refused alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.engine import LossInputError, compute
from service.engine.registry import resolve
from tests.engine.test_engine_naive import CASES as NAIVE_CASES
from tests.tolerance import assert_close, assert_matches_reference

KERAS = json.loads((Path(__file__).parent.parent / "fixtures" / "keras_reference.json").read_text())["cases"]
# Dice and Tversky sum a sample over every axis but the first, not the last axis alone: their
# fixture cases already run Keras with axis=(1, 2) on 3-axis inputs. A whole-batch loss (circle:
# (N, D) embeddings compared with each other) has no row-wise N-D layout, nor has CTC (its
# predictions are (N, T, C) sequences already, one loss per sequence).
FLAT = [
    case
    for case in KERAS
    if np.asarray(case["expected"]["per_sample"]).ndim == 1
    and case["loss"] not in ("dice", "tversky", "ctc")
    and not resolve(case["loss"]).whole_batch
]


@pytest.mark.parametrize("lead", [(3, 4), (2, 3, 2)], ids=["3d", "4d"])
@pytest.mark.parametrize("case", FLAT, ids=lambda c: c["id"])
def test_keras_reduces_the_last_axis_then_averages_all_that_remains(
    case: dict[str, Any], lead: tuple[int, ...]
) -> None:
    """Keras computes each last-axis row on its own and `sum_over_batch_size` divides by every
    value left, so a batch of 12 rows laid out as (3, 4, C) or (2, 3, 2, C) has Keras's per-sample
    values of the 12 rows in that layout and the same mean. Numbers from Keras 3 itself."""

    def laid_out(values: Any) -> Any:
        array = np.asarray(values)
        return array.reshape(lead + array.shape[1:]).tolist()

    nd = {
        **case,
        "predictions": laid_out(case["predictions"]),
        "labels": laid_out(case["labels"]),
        "sample_weight": None if case["sample_weight"] is None else laid_out(case["sample_weight"]),
    }
    expected = case["expected"]
    weight = max(case["sample_weight"] or [1.0])
    assert_matches_reference(
        nd, laid_out(expected["per_sample"]), expected["mean"], convention="keras", weight=weight, terms=case["terms"]
    )


NAIVE_KERAS = [case for case in NAIVE_CASES if case[1] == "keras"]


@pytest.mark.parametrize("lead", [(3, 3), (3, 1, 3)], ids=["3d", "4d"])
@pytest.mark.parametrize("case", NAIVE_KERAS, ids=[f"{c[0]}-{'-'.join(c[2]) or 'default'}" for c in NAIVE_KERAS])
def test_keras_layout_in_float64_against_the_naive_reference(case: Any, lead: tuple[int, ...]) -> None:
    """The same rule in float64, against the naive re-implementation of Keras's formulas (9 rows)."""
    loss, _, options, predictions, labels, reference = case
    per_sample, mean = reference()

    def laid_out(values: Any) -> Any:
        array = np.asarray(values)
        return array.reshape(lead + array.shape[1:])

    result = compute(loss, laid_out(predictions), laid_out(labels), options=options, convention="keras")
    assert_close(result.per_sample, laid_out(per_sample), "float64", what="per_sample")
    assert_close(result.mean, mean, "float64", what="mean")


RNG = np.random.default_rng(11)
X3, Y3 = RNG.normal(0, 2, (4, 3, 5)), RNG.normal(0, 2, (4, 3, 5))
P3 = RNG.random((4, 3, 5)) + 0.01
P3 /= P3.sum(-1, keepdims=True)
Q3 = P3[::-1].copy()


@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize(
    ("loss", "predictions", "labels"),
    [("mse", X3, Y3), ("kl_divergence", P3, Q3), ("bce", 1 / (1 + np.exp(-X3)), (Y3 > 0).astype(float))],
    ids=["mse", "kl", "bce"],
)
def test_sample_weights_of_each_shape_on_three_axes(loss: str, predictions: Any, labels: Any, convention: str) -> None:
    """One weight per sample (N,) weighs every value of that sample; a weight per per-sample value
    weighs each. keras: sum(w l) / the number of values. torch: sum(w l) / sum(w), where KL's mean
    counts each sample's weight once (batchmean), however many values the sample has."""
    plain = compute(loss, predictions, labels, convention=convention)  # type: ignore[arg-type]
    values = plain.per_sample
    per_sample_weight = RNG.uniform(0.1, 2.0, values.shape[0])
    full_weight = RNG.uniform(0.1, 2.0, values.shape)
    for weight in (per_sample_weight, full_weight):
        expanded = np.broadcast_to(weight.reshape(weight.shape + (1,) * (values.ndim - weight.ndim)), values.shape)
        result = compute(loss, predictions, labels, sample_weight=weight, convention=convention)  # type: ignore[arg-type]
        weighted = values * expanded
        np.testing.assert_allclose(result.per_sample, weighted, rtol=1e-14)
        if convention == "keras":
            denominator = values.size
        elif loss == "kl_divergence" and convention == "torch":
            denominator = expanded.sum() / (values.size / values.shape[0])
        else:
            denominator = expanded.sum()
        assert result.denominator == pytest.approx(denominator, rel=1e-12)
        assert result.mean == pytest.approx(weighted.sum() / denominator, rel=1e-12)
    assert plain.denominator == (values.shape[0] if loss == "kl_divergence" and convention == "torch" else values.size)


REFUSED = [
    ("multi_margin", RNG.normal(0, 1, (4, 3, 5)), RNG.integers(0, 3, (4, 5)), "predictions", "(N, C)"),
    ("cosine_embedding", RNG.normal(0, 1, (4, 2, 3, 5)), RNG.choice([-1.0, 1.0], (4, 3)), "predictions", "(N, 2, D)"),
]


@pytest.mark.parametrize(("loss", "predictions", "labels", "field", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_shapes_pytorch_refuses_are_refused_with_a_reason(
    loss: str, predictions: Any, labels: Any, field: str, says: str
) -> None:
    with pytest.raises(LossInputError) as refused:
        compute(loss, predictions, labels, convention="torch")
    assert refused.value.field == field
    assert says in refused.value.reason
    torch = pytest.importorskip("torch", reason="the check that PyTorch refuses too needs torch")
    import torch.nn.functional as F  # noqa: N812

    x, y = torch.tensor(predictions), torch.tensor(labels)
    call = (
        (lambda: F.multi_margin_loss(x, y))
        if loss == "multi_margin"
        else (lambda: F.cosine_embedding_loss(x[:, 0], x[:, 1], y))
    )
    with pytest.raises((RuntimeError, ValueError)):
        call()
