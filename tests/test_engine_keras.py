"""The engine's keras convention against numbers computed by Keras 3 itself (JAX backend).

The fixture is made by tests/reference/generate_keras_fixtures.py in a separate environment
(Keras is not a dependency of this project).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.engine import compute
from tests.tolerance import FLOAT32_MEAN_ULPS, FLOAT32_ULPS, assert_close, class_sum_ulps

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "keras_reference.json").read_text())


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["id"])
def test_matches_keras(case: dict[str, Any]) -> None:
    result = compute(
        case["loss"],
        case["predictions"],
        case["labels"],
        options=case["options"],
        sample_weight=case["sample_weight"],
        dtype=case["dtype"],
        convention="keras",
    )
    extra = class_sum_ulps(case["terms"]) - FLOAT32_ULPS
    weight = max(case["sample_weight"] or [1.0])
    expected = case["expected"]
    assert_close(
        result.per_sample,
        expected["per_sample"],
        case["dtype"],
        what="per_sample",
        ulps=FLOAT32_ULPS + extra,
        weight=weight,
    )
    assert_close(
        result.mean, expected["mean"], case["dtype"], what="mean", ulps=FLOAT32_MEAN_ULPS + extra, weight=weight
    )


def test_fixture_came_from_keras() -> None:
    assert FIXTURE["keras"].startswith("3.")
    assert FIXTURE["backend"] == "jax"
