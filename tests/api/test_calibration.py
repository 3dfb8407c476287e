"""POST /v1/calibration: the engine's numbers over HTTP (tests/engine/test_calibration.py holds them
against TorchMetrics, scikit-learn and a naive PAV), refusals naming field and index, and no NaN."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from service.engine.calibration import calibration
from tests.apps import MakeApp

pytestmark = pytest.mark.anyio


def _finite(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


async def test_the_answer_is_the_engines(make_app: MakeApp) -> None:
    client = await make_app()
    rng = np.random.default_rng(8)
    logits = rng.normal(0, 2, (200, 5))
    labels = rng.integers(0, 5, 200)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)
    for body, expected in (
        ({"predictions": p.tolist(), "labels": y.tolist()}, calibration(p, y)),
        (
            {"predictions": logits.tolist(), "labels": labels.tolist(), "from_logits": True, "strategy": "quantile"},
            calibration(logits, labels, from_logits=True, strategy="quantile"),
        ),
        (
            {"predictions": p[:, None].tolist(), "labels": y[:, None].tolist(), "bins": 40},
            calibration(p, y, bins=40),
        ),
    ):
        response = await client.post("/v1/calibration", json=body)
        assert response.status_code == 200, response.text
        assert response.json() == expected.answer()
        assert set(response.json()) == {"ece", "mce", "bins", "brier"}


async def test_small_and_degenerate_batches_answer_without_nan(make_app: MakeApp) -> None:
    """One sample, one class present, all confidences equal, more bins than samples: empty bins are
    left out, so no 0/0 reaches the answer."""
    client = await make_app()
    for body in (
        {"predictions": [0.3], "labels": [1]},
        {"predictions": [0.3, 0.3, 0.3], "labels": [0, 0, 0], "strategy": "quantile", "bins": 1000},
        {"predictions": [[1.0, 0.0], [0.0, 1.0]], "labels": [0, 1], "bins": 1},
        {"predictions": [[1e4, -1e4]], "labels": [1], "from_logits": True},
    ):
        response = await client.post("/v1/calibration", json=body)
        assert response.status_code == 200, (body, response.text)
        answer = response.json()
        assert _finite(answer), answer
        assert all(b["count"] >= 1 for b in answer["bins"])
        assert sum(b["count"] for b in answer["bins"]) == len(body["predictions"])


@pytest.mark.parametrize(
    ("change", "loc", "message"),
    [
        ({"predictions": [0.2, 1.7, 0.1]}, ["body", "predictions", 1], "must lie in [0, 1]"),
        ({"predictions": [[0.2, 0.8], [0.5, 0.4], [0.1, 0.9]]}, ["body", "predictions", 1], "must sum to 1"),
        ({"labels": [0, 1, 3]}, ["body", "labels", 2], "binary labels must be one of [0.0, 1.0]"),
        (
            {"predictions": [[0.2, 0.8], [0.5, 0.5], [0.1, 0.9]], "labels": [0, 1, 2]},
            ["body", "labels", 2],
            "outside [0, 1]",
        ),
        ({"bins": 0}, ["body", "bins"], "greater than or equal to 1"),
        ({"bins": 1001}, ["body", "bins"], "less than or equal to 1000"),
        ({"strategy": "equal"}, ["body", "strategy"], "'uniform' or 'quantile'"),
    ],
)
async def test_refusals_name_field_and_index(
    make_app: MakeApp, change: dict[str, Any], loc: list[Any], message: str
) -> None:
    client = await make_app()
    response = await client.post(
        "/v1/calibration", json={"predictions": [0.2, 0.7, 0.1], "labels": [0, 1, 0], **change}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    (error,) = response.json()["errors"]
    assert error["loc"] == loc
    assert message in error["msg"]
