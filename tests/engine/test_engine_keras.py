"""The engine's keras convention against numbers computed by Keras 3 itself (JAX backend).

The fixture is made by tests/reference/generate_keras_fixtures.py in a separate environment
(Keras is not a dependency of this project).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.tolerance import assert_matches_reference

FIXTURE = json.loads((Path(__file__).parent.parent / "fixtures" / "keras_reference.json").read_text())


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["id"])
def test_matches_keras(case: dict[str, Any]) -> None:
    weight = max(case["sample_weight"] or [1.0])
    expected = case["expected"]
    assert_matches_reference(
        case, expected["per_sample"], expected["mean"], convention="keras", weight=weight, terms=case["terms"]
    )


def test_fixture_came_from_keras() -> None:
    assert FIXTURE["keras"].startswith("3.")
    assert FIXTURE["backend"] == "jax"
