"""The request middleware (service/server/monitoring/middleware.py): a request id per request and one JSON
access line, its duration to the microsecond."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

import httpx
import pytest

from tests.apps import MakeApp
from tests.guarded import BODY

pytestmark = pytest.mark.anyio


async def test_request_ids_and_one_json_log_line_per_request(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("loss_service.access")
    logger.addHandler(caplog.handler)
    try:
        started = time.perf_counter()
        echoed = await client.post(
            "/v1/loss", json=BODY, headers={"x-request-id": "abc-123", "authorization": "Bearer secret"}
        )
        observed_ms = (time.perf_counter() - started) * 1000  # the whole request, as the test saw it
        generated = await client.get("/livez")
    finally:
        logger.removeHandler(caplog.handler)
    assert echoed.headers["x-request-id"] == "abc-123"
    assert len(generated.headers["x-request-id"]) == 32
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "loss_service.access"]
    assert lines[0] == {
        "request_id": "abc-123",
        "method": "POST",
        "route": "/v1/loss",
        "status": 200,
        "duration_ms": lines[0]["duration_ms"],
        "body_bytes": lines[0]["body_bytes"],
        "model": "guarded",
        "loss": "mean_squared_error",
        "batch_size": 2,
    }
    assert lines[0]["body_bytes"] == len(json.dumps(BODY, separators=(",", ":")).encode())
    assert 0 < lines[0]["duration_ms"] <= observed_ms  # in milliseconds: in seconds or µs it would not fit
    assert round(lines[0]["duration_ms"], 3) == lines[0]["duration_ms"]  # microseconds, no finer
    assert "secret" not in caplog.text
    assert "predictions" not in caplog.text
    assert lines[1]["route"] == "/livez"


@pytest.mark.parametrize(("given", "kept"), [("a" * 128, True), ("a" * 129, False), ("bad\tid", False)])
async def test_a_request_id_is_kept_only_if_short_and_printable(
    client: httpx.AsyncClient, given: str, kept: bool
) -> None:
    echoed = (await client.get("/livez", headers={"x-request-id": given})).headers["x-request-id"]
    assert (echoed == given) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", echoed)


async def test_generated_request_ids_are_32_hex_digits_and_distinct(client: httpx.AsyncClient) -> None:
    """128 random bits each; 64 of them, so that an id of another length would show."""
    ids = [(await client.get("/livez")).headers["x-request-id"] for _ in range(64)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", given) for given in ids)
    assert len(set(ids)) == len(ids)


async def test_a_response_started_without_headers_gets_its_request_id() -> None:
    """ASGI makes a response start's headers optional: an app that sends none is tagged all the same."""
    from service.config import Settings
    from service.server.monitoring import Monitor, RequestMonitor

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"x-request-id", b"bare-1")]}
    await RequestMonitor(bare, Monitor(Settings()))(scope, receive, send)
    assert sent[0]["headers"] == [(b"x-request-id", b"bare-1")]


async def test_a_request_that_fails_unexpectedly_is_logged_as_the_500_it_is_answered(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route raised before any response began: the access line and the request metrics say 500."""
    from service.server.api.routes import losses as losses_routes

    def broken(name: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(losses_routes, "resolve", broken)
    api = await make_app(raise_app_exceptions=False)
    logger = logging.getLogger("loss_service.access")
    logger.addHandler(caplog.handler)
    try:
        assert (await api.get("/v1/losses/mse")).status_code == 500
    finally:
        logger.removeHandler(caplog.handler)
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "loss_service.access"]
    assert (line["route"], line["status"]) == ("/v1/losses/{name}", 500)


async def test_the_access_line_gives_the_duration_in_milliseconds_to_the_microsecond(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.server.monitoring import middleware

    clock, real = iter([100.0, 100.0123456]), time.perf_counter

    def perf_counter() -> float:  # the monitor's two readings; httpx's own timing as it was
        return (
            next(clock) if sys._getframe(1).f_globals["__name__"] == "service.server.monitoring.middleware" else real()
        )

    monkeypatch.setattr(middleware.time, "perf_counter", perf_counter)
    logger = logging.getLogger("loss_service.access")
    logger.addHandler(caplog.handler)
    try:
        await client.get("/livez")
    finally:
        logger.removeHandler(caplog.handler)
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "loss_service.access"]
    assert line["duration_ms"] == 12.346
    assert line["status"] == 200
