"""What the library-convention tests (xgboost, lightgbm, catboost) share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from service.engine import LossInputError, compute


def assert_refused(
    convention: str, loss: str, predictions: Any, labels: Any, options: Any, field: str, index: Any, reason: str
) -> None:
    """`compute` refuses with a LossInputError naming `field`, `index` and (within its reason)
    `reason`; a refusal on `sample_weight` is sent weights [0.0]."""
    weight = [0.0] if field == "sample_weight" else None
    with pytest.raises(LossInputError) as caught:
        compute(loss, predictions, labels, options=options, sample_weight=weight, convention=convention)
    assert caught.value.field == field
    assert caught.value.index == index
    assert reason in caught.value.reason


def first_case(
    cases: Sequence[dict[str, Any]],
    name: str,
    *,
    weighted: bool = True,
    margin: bool = False,
    name_of: Callable[[dict[str, Any]], str] = lambda case: str(case["metric"]),
) -> dict[str, Any]:
    """The first fixture case of the metric `name`, weighted or not, on margins or on `predict()`."""
    return next(
        case
        for case in cases
        if name_of(case) == name and (case["sample_weight"] is not None) == weighted and case["margin"] == margin
    )
