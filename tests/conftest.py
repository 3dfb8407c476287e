from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import settings

from service.app import create_app

# CI runs the same generated examples every time (a fixed seed per test), so a landing never
# depends on luck; local runs keep exploring new examples. Hypothesis recommends this split.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loss-service") as c:
            yield c
