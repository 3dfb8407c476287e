"""Finiteness is searched once per request: the HTTP layer's array validator searches each array
with the engine's `first_nonfinite`, and the engine, told so (`inputs_finite`), does not search them
again. What the engine alone can see stays its to refuse: a float32 conversion that overflows,
and an answer that is not finite (a 200 never carries inf or NaN)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

import service.engine
import service.server.api.arrays
from service.engine import LossInputError, compute

pytestmark = pytest.mark.anyio

BODY = {
    "loss": "mse",
    "predictions": [[0.5, 1.0], [2.0, 0.0]],
    "labels": [[0.0, 1.0], [1.0, 1.0]],
    "sample_weight": [1.0, 2.0],
}


@pytest.fixture
def searched(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shapes of the arrays searched for NaN and infinities, by the HTTP layer or the engine."""
    shapes: list[tuple[int, ...]] = []
    search = service.engine.first_nonfinite

    def counted(array: np.ndarray[Any, Any]) -> tuple[int, ...] | None:
        shapes.append(array.shape)
        return search(array)

    monkeypatch.setattr(service.server.api.arrays, "first_nonfinite", counted)
    monkeypatch.setattr(service.engine, "first_nonfinite", counted)
    return shapes


async def test_a_loss_request_searches_each_array_once(
    client: httpx.AsyncClient, searched: list[tuple[int, ...]]
) -> None:
    response = await client.post("/v1/loss", json=BODY)
    assert response.status_code == 200, response.text
    assert sorted(searched) == [(2,), (2, 2), (2, 2)]


async def test_an_evaluate_request_searches_each_array_once_whatever_the_losses(
    client: httpx.AsyncClient, searched: list[tuple[int, ...]]
) -> None:
    body = {key: value for key, value in BODY.items() if key != "loss"}
    response = await client.post(
        "/v1/evaluate", json={**body, "losses": [{"loss": "mse"}, {"loss": "mae"}, {"loss": "huber"}]}
    )
    assert response.status_code == 200, response.text
    assert len(searched) == 3


async def test_the_refusals_are_the_ones_they_were(client: httpx.AsyncClient) -> None:
    nan = await client.post(
        "/v1/loss",
        content=b'{"loss": "mse", "predictions": [[0.5], [NaN]], "labels": [[0.0], [1.0]]}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422
    assert nan.json()["errors"] == [{"loc": ["body", "predictions", 1, 0], "msg": "numbers must be finite, got nan"}]
    narrowed = await client.post(
        "/v1/loss", json={**BODY, "predictions": [[0.5, 1e39], [2.0, 0.0]], "dtype": "float32"}
    )
    assert narrowed.status_code == 422
    assert "overflows float32" in narrowed.json()["detail"]
    overflowing = await client.post(
        "/v1/loss", json={"loss": "mse", "predictions": [[1.0], [3e20]], "labels": [[0.0], [0.0]], "dtype": "float32"}
    )
    assert overflowing.status_code == 422
    assert "it overflows the dtype" in overflowing.json()["detail"]


def test_the_engine_searches_what_no_one_searched() -> None:
    with pytest.raises(LossInputError, match=r"predictions\[1\]: nan is not a finite number"):
        compute("mse", [0.5, np.nan], [0.0, 1.0])
    with pytest.raises(LossInputError, match=r"labels\[0\]: inf is not a finite number"):
        compute("scce", [[0.5, 0.5]], [np.inf])
    with pytest.raises(LossInputError, match=r"sample_weight\[1\]: nan is not a finite number"):
        compute("mse", [0.5, 1.0], [0.0, 1.0], sample_weight=[1.0, np.nan])
