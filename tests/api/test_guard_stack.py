"""The guards as one stack in the app: lifespan events through every middleware, and CORS, the
middleware in front of them."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from service.config import Settings
from service.server.app import create_app
from tests.apps import app_client

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
    async with app_client(Settings(cors_origins=["https://dash.example"])) as c:
        response = await c.options("/v1/loss", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://dash.example"
