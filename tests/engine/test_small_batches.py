"""The shortcuts a small batch takes through the engine's checks: the work each one skips is
counted, and the answers and refusals are those of the element-wise checks they skip."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from service.engine import LossInputError, as_working_array, compute
from service.engine.checks import check_in_range, class_indices_in_range
from service.engine.losses import _targets
from service.engine.losses._shared import per_sample_mean


class Counted(np.ndarray):
    """An array that records every ufunc call made on it (name and method) in `calls`."""

    calls: ClassVar[list[tuple[str, str]]] = []

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        Counted.calls.append((ufunc.__name__, method))
        plain = [x.view(np.ndarray) if isinstance(x, Counted) else x for x in inputs]
        return getattr(ufunc, method)(*plain, **kwargs)


def counted(values: Any) -> Any:
    Counted.calls = []
    return np.asarray(values, dtype=np.float64).view(Counted)


def naive_cross_entropy(logits: np.ndarray, labels: np.ndarray, ignore: int) -> tuple[list[float], float]:
    """PyTorch's CrossEntropyLoss(reduction='none' and 'mean') in float64, one sample at a time."""
    per_sample, kept = [], []
    for row, label in zip(logits.astype(np.float64).tolist(), labels.tolist(), strict=True):
        if label == ignore:
            per_sample.append(0.0)
            continue
        top = max(row)
        loss = float(np.log(sum(np.exp(v - top) for v in row))) - (row[label] - top)
        per_sample.append(loss)
        kept.append(loss)
    return per_sample, sum(kept) / len(kept)


@pytest.mark.parametrize(
    ("ignore_index", "labels", "element_wise_checks"),
    [
        (None, [0, 1, 2, 3, 1], 0),  # PyTorch's -100 cannot be a class: no label checked one by one
        (2, [0, 1, 3, 3, 1], 0),  # an ignore index that is a class no label names
        (2, [0, 2, 3, 2, 1], 0),  # ...and one that labels name: masked
        (None, [0, -100, 3, 1, -100], 1),  # a label out of range: each label checked
    ],
)
def test_class_labels_in_range_are_checked_once_and_ignored_targets_still_masked(
    monkeypatch: pytest.MonkeyPatch, ignore_index: int | None, labels: list[int], element_wise_checks: int
) -> None:
    calls = []
    full_check = _targets.check_class_indices

    def check(*args: Any) -> Any:
        calls.append(args)
        return full_check(*args)

    monkeypatch.setattr(_targets, "check_class_indices", check)
    logits = np.random.default_rng(5).normal(0, 3, (5, 4))
    targets = np.asarray(labels)
    options = {"from_logits": True, "ignore_index": ignore_index}
    result = compute("sparse_categorical_crossentropy", logits, targets, options=options, convention="torch")
    assert len(calls) == element_wise_checks
    per_sample, mean = naive_cross_entropy(logits, targets, -100 if ignore_index is None else ignore_index)
    np.testing.assert_allclose(result.per_sample, per_sample, rtol=1e-13, atol=1e-15)
    assert result.mean == pytest.approx(mean, rel=1e-13)


@pytest.mark.parametrize(
    ("labels", "inside"), [([0, 3, 2], True), ([0, 4, 2], False), ([0, -1, 2], False), ([], True), ([[3], [0]], True)]
)
def test_class_indices_in_range_reads_both_bounds(labels: list[Any], inside: bool) -> None:
    array = np.asarray(labels, dtype=np.intp)
    assert class_indices_in_range(array, 4) is inside
    assert inside == bool(((array >= 0) & (array < 4)).all())


def test_a_range_check_of_values_inside_takes_their_smallest_and_largest_only() -> None:
    check_in_range(counted([[0.0, 0.5], [1.0, 0.25]]), "labels", 0.0, 1.0, "binary targets")
    assert Counted.calls == [("minimum", "reduce"), ("maximum", "reduce")]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([[0.5, 1.5], [-0.5, 0.0]], "binary targets must lie in [0, 1], got 1.5"),
        ([[0.5, 0.0], [-0.5, 0.0]], "binary targets must lie in [0, 1], got -0.5"),
    ],
)
def test_a_value_out_of_range_is_refused_at_its_first_position(values: list[list[float]], message: str) -> None:
    with pytest.raises(LossInputError) as raised:
        check_in_range(counted(values), "labels", 0.0, 1.0, "binary targets")
    first = next((i, j) for i, row in enumerate(values) for j, v in enumerate(row) if not 0.0 <= v <= 1.0)
    assert (raised.value.field, raised.value.reason, raised.value.index) == ("labels", message, first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 1), (3, 4, 1)])
def test_the_mean_over_a_last_axis_of_one_is_numpys_mean_bit_for_bit(shape: tuple[int, ...], dtype: type) -> None:
    values = (np.random.default_rng(1).normal(size=shape) * 1e3).astype(dtype)
    got = per_sample_mean(values, "keras")
    expected = values.mean(axis=-1)
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("source", "target", "error_states"),
    [
        (np.float32, np.float32, 0),
        (np.float32, np.float64, 0),
        (np.int64, np.float32, 0),
        (np.float64, np.float32, 1),  # only a narrowing can overflow
    ],
)
def test_only_a_narrowing_conversion_sets_an_error_state(
    monkeypatch: pytest.MonkeyPatch, source: type, target: type, error_states: int
) -> None:
    states = []
    errstate = np.errstate

    def counting(**kwargs: Any) -> Any:
        states.append(kwargs)
        return errstate(**kwargs)

    monkeypatch.setattr(np, "errstate", counting)
    values = np.asarray([1, -2, 3], dtype=source)
    converted = as_working_array(values, "predictions", np.dtype(target))
    assert len(states) == error_states
    assert converted.dtype == target
    np.testing.assert_array_equal(converted, [1.0, -2.0, 3.0])


def test_a_narrowing_that_overflows_is_still_refused() -> None:
    with pytest.raises(LossInputError) as raised:
        as_working_array(np.asarray([1.0, 1e300]), "labels", np.dtype(np.float32))
    assert raised.value.index == (1,)
    assert raised.value.reason == "inf overflows float32 (magnitude above 3.403e+38)"
