"""Receiving a body (service/server/api/body/receive.py): a client that leaves mid-body, and the refusals
of a wrong content type or an empty body, in their words."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from service.config import Settings
from service.server.app import create_app
from tests.api.test_api import problem
from tests.guarded import JSON

pytestmark = pytest.mark.anyio


async def test_a_client_that_leaves_mid_body_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """A client gone before its body arrived logged a traceback and a 500 ("unhandled error")."""
    app = create_app(Settings())
    messages = iter([{"type": "http.request", "body": b'{"loss": ', "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/loss",
        "raw_path": b"/v1/loss",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"200")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("t", 80),
        "client": ("c", 1),
        "root_path": "",
    }
    with caplog.at_level(logging.INFO):
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert sent[0]["status"] == 400
    assert any("client disconnected before its request body arrived" in r.getMessage() for r in caplog.records)


async def test_content_type_and_empty_body_refusals_in_their_words(client: httpx.AsyncClient) -> None:
    text = await client.post("/v1/loss", content=b"{}", headers={"content-type": "text/plain; charset=utf-8"})
    assert problem(text, 415)["detail"] == (
        "Content-Type must be application/json or application/x-npz or application/vnd.apache.arrow.stream, "
        "got text/plain"
    )
    for headers in ({"content-type": ""}, {}):
        missing = await client.post("/v1/evaluate", content=b"{}", headers=headers)
        assert "content-type" not in missing.request.headers or not headers["content-type"]
        assert problem(missing, 415)["detail"] == "Content-Type must be application/json, got none"
    for nothing in (b"", b" \t\r\n"):
        empty = await client.post("/v1/loss", content=nothing, headers=JSON)
        assert problem(empty, 400)["detail"] == "the request body is empty"
