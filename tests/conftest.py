from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from hypothesis import settings

from service.app import create_app

# Every app and served process of the suite keeps its delayed-labels store in a fresh directory,
# never in the checkout's data/; tests of the store itself give each app a file of its own.
STORE_DIRECTORY = tempfile.mkdtemp(prefix="loss-service-tests-")
os.environ.setdefault("LOSS_SERVICE_STORE_URL", f"sqlite:///{STORE_DIRECTORY}/shared.sqlite3")

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One throwaway PostgreSQL cluster for the session; skips where PostgreSQL is absent."""
    from tests import postgres

    if postgres.binaries() is None:
        pytest.skip(postgres.MISSING)
    with postgres.cluster() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's cluster."""
    from tests.postgres import fresh_database

    return fresh_database(postgres_server)
