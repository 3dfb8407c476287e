"""What the guard tests share: a body, held computations, raw ASGI calls."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import pytest

from tests.api.test_api import problem

BODY = {"loss": "mse", "predictions": [[1.0], [2.0]], "labels": [[1.0], [4.0]], "model": "guarded"}
JSON = {"content-type": "application/json"}


def refusal(response: httpx.Response, status: int) -> str:
    """The refusal's message: problem details on /v1, the Open Inference Protocol's error on /v2."""
    if response.request.url.path.startswith("/v2"):
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"error"}
        return str(response.json()["error"])
    return str(problem(response, status)["detail"])


@contextmanager
def computations_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Every loss computation waits, in its worker thread, until `release` is set; `entered` is set
    once one waits. With offload_bytes=0 every request computes in a worker thread."""
    from service.usecases import compute as batches

    entered, release = threading.Event(), threading.Event()
    real = batches.compute

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(60)  # stops a hang only
        return real(*args, **kwargs)

    monkeypatch.setattr(batches, "compute", held)
    try:
        yield entered, release
    finally:
        release.set()


async def wait_for_event(event: threading.Event) -> None:
    with anyio.fail_after(60):  # stops a hang only
        while not event.is_set():
            await anyio.sleep(0.01)


async def drive(app: Any, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    """Call an ASGI app once with these request messages (as a server might send them, optional
    keys left out); return what it sent."""
    pending, sent = list(messages), []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/loss", "headers": headers, "query_string": b""}
    await app(scope, receive, send)
    return sent


def heavy_route(app: Any) -> Any:
    """`app` behind a matcher that finds a heavy route for every request (as `routing.Matching`
    does for a route whose policy says heavy), for a guard tried alone."""
    from service.server.api.policy import RequestContext, RoutePolicy
    from service.server.monitoring import CONTEXT

    async def matched(scope: Any, receive: Any, send: Any) -> None:
        scope[CONTEXT] = RequestContext(matched=True, policy=RoutePolicy(heavy=True))
        await app(scope, receive, send)

    return matched


class Recorder:
    """An app that reads the whole body and answers 200, keeping what it saw."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.state: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from service.server.monitoring import CONTEXT

        self.headers, self.state = scope["headers"], scope.get(CONTEXT)
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def padded(size: int) -> bytes:
    """A valid /v1/loss body of exactly `size` bytes (JSON allows trailing white space)."""
    raw = json.dumps(BODY).encode()
    return raw + b" " * (size - len(raw))
