"""The request middleware: every HTTP request observed once, in the metrics and the access log,
under a request id."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.server.monitoring.accesslog import access_log, write_access_line
from service.server.monitoring.labels import request_state
from service.server.monitoring.monitor import Monitor

CONTEXT = "loss_service.context"  # the scope key of the request's context


class Observed(Protocol):
    """What the monitor reads of a request's context once it is answered."""

    key: str | None
    refusal: str | None
    model: str | None
    loss: str | None
    batch_size: int | None


@dataclass(slots=True)
class Observation:
    """The context of a request served without a richer one (an app that only counts requests)."""

    key: str | None = None
    refusal: str | None = None
    model: str | None = None
    loss: str | None = None
    batch_size: int | None = None


class RequestMonitor:
    """Observes every HTTP request once: metrics (route template, not the raw path; status,
    latency, body size, in flight), one JSON access line, and an X-Request-ID accepted or
    generated and echoed.

    The line holds id, method, route template, status, duration, body size, and the `model`,
    `loss` and batch size the route recorded in the request's context; never payload data or
    credentials. The context is made here, by `context` (the HTTP layer's `RequestContext`), so that
    it outlives every layer below, whichever copies the scope.
    """

    def __init__(self, app: ASGIApp, monitor: Monitor, context: Callable[[], Observed] = Observation) -> None:
        self.app = app
        self.monitor = monitor
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"").decode("latin-1")
        # A generated id needs to be unique, not unpredictable: `random` (reseeded in each forked
        # worker) costs a fraction of uuid4's read of the system's entropy (docs/performance.md).
        request_id = given if given and len(given) <= 128 and given.isprintable() else f"{random.getrandbits(128):032x}"
        started, status, received = time.perf_counter(), 500, 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        self.monitor.in_flight.inc()
        state = scope[CONTEXT] = self.context()
        watched = request_state.set(state)
        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            request_state.reset(watched)
            self.monitor.in_flight.dec()
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.monitor.record_request(route, scope["method"], status, seconds, received, state.key, state.refusal)
            if access_log.isEnabledFor(logging.INFO):  # the line is not built for a level that drops it
                line = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1e3, 3),
                    "body_bytes": received,
                    "model": state.model,
                    "loss": state.loss,
                    "batch_size": state.batch_size,
                }
                write_access_line(line)
