"""The app built from settings, with a client bound to it in-process and its lifespan run: what
every in-process test of the service starts from. Tests take the `make_app` fixture
(tests/conftest.py), which closes each app at teardown; `app_client` is for a test that starts and
stops an app within itself (to read what the shutdown did, or to run two apps one after another)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from service.config import Settings
from service.server.app import create_app


class AppClient(httpx.AsyncClient):
    """An httpx client whose requests go to `app` through ASGI; `app` is there for its state."""

    def __init__(self, app: FastAPI, *, raise_app_exceptions: bool = True, **options: Any) -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        super().__init__(transport=transport, **{"base_url": "http://loss-service", **options})
        self.app = app


@asynccontextmanager
async def app_client(settings: Settings | None = None, **options: Any) -> AsyncIterator[AppClient]:
    """The app `create_app(settings)` started, and a client bound to it (`options` are the client's,
    `raise_app_exceptions` among them); the app stops when the block ends."""
    app = create_app(settings)
    async with app.router.lifespan_context(app), AppClient(app, **options) as client:
        yield client


# The `make_app` fixture's type, for a test's annotations.
MakeApp = Callable[..., Awaitable[AppClient]]
