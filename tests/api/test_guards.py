"""The guards as one stack in the app: lifespan events through every middleware, CORS, the element
limit in every body format, and no redirect to the host a client names."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from service.app import create_app
from service.config import Settings
from tests.api.test_api import problem
from tests.guarded import BODY, client_for

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "settings",
    [Settings(), Settings(api_keys=["k"], cors_origins=["http://x"], metrics_auth=True)],
    ids=["defaults", "keys-and-cors"],
)
async def test_the_lifespan_passes_through_every_middleware(settings: Settings) -> None:
    """uvicorn sends the app its lifespan events through the whole middleware stack."""
    app = create_app(settings)
    events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        if events:
            return events.pop(0)
        await anyio.sleep_forever()
        return {}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    with anyio.fail_after(60):  # stops a hang only
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert app.state.lifecycle in ("ready", "draining", "stopped")


async def test_cors_is_off_by_default_and_configurable(client: httpx.AsyncClient) -> None:
    preflight = {"origin": "https://dash.example", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in (await client.options("/v1/loss", headers=preflight)).headers
    async for c in client_for(Settings(cors_origins=["https://dash.example"])):
        response = await c.options("/v1/loss", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://dash.example"


async def test_arrays_over_max_elements_get_413_before_numpy_allocates() -> None:
    import io

    async for c in client_for(Settings(max_elements=10)):
        big = {"loss": "mse", "predictions": [[0.0] * 11], "labels": [[0.0] * 11]}
        body = problem(await c.post("/v1/loss", json=big), 413)
        assert body["detail"] == "an array holds 11 numbers; the limit is 10 (LOSS_SERVICE_MAX_ELEMENTS)"
        assert (
            await c.post("/v1/loss", json={**big, "predictions": [[0.0] * 10], "labels": [[0.0] * 10]})
        ).status_code == 200
        buffer = io.BytesIO()
        np.savez(buffer, predictions=np.zeros((1, 11)), labels=np.zeros((1, 11)))
        npz = await c.post(
            "/v1/loss", params={"loss": "mse"}, content=buffer.getvalue(), headers={"content-type": "application/x-npz"}
        )
        assert "LOSS_SERVICE_MAX_ELEMENTS" in problem(npz, 413)["detail"]
        evaluate = await c.post(
            "/v1/evaluate", json={**{k: v for k, v in big.items() if k != "loss"}, "losses": ["mse"]}
        )
        problem(evaluate, 413)
        tensor = {"name": "predictions", "shape": [1, 11], "datatype": "FP64", "data": [0.0] * 11}
        oip = await c.post("/v2/models/mse/infer", json={"inputs": [tensor]})
        assert oip.status_code == 413
        assert "LOSS_SERVICE_MAX_ELEMENTS" in oip.json()["error"]
        binary = {"name": "predictions", "shape": [1, 11], "datatype": "FP64", "parameters": {"binary_data_size": 88}}
        header = json.dumps({"inputs": [binary]}).encode()
        raw = await c.post(
            "/v2/models/mse/infer",
            content=header + bytes(88),
            headers={"inference-header-content-length": str(len(header))},
        )
        assert raw.status_code == 413


async def test_a_trailing_slash_is_not_redirected_to_the_host_the_client_named(limited: httpx.AsyncClient) -> None:
    response = await limited.post("/v1/loss/", json=BODY, headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404
    assert "location" not in response.headers
