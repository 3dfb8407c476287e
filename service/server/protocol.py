"""uvicorn's httptools protocol with a deadline for request headers and a bound on connections,
writing each response in one piece.

uvicorn closes a keep-alive connection that stays idle after a response, but not one that opens
and sends nothing, nor one that sends part of a request line or headers and stops: 4,000 such
connections stayed open for as long as they liked, a file descriptor each. Here every request's
headers must be complete within `LOSS_SERVICE_HEADER_TIMEOUT` seconds of the connection opening
or of the request's first byte; otherwise the connection is answered 408 and closed. (The body
has its own deadline, `LOSS_SERVICE_REQUEST_TIMEOUT`, kept by the app's guards.)

A request's line and headers may take MAX_HEADER_BYTES (64 KiB): the parser keeps them whole
until they end, so within the header deadline a connection could otherwise pile up as much as it
can send (67 MB in 10 s over loopback). Beyond it the connection is answered 431 and closed.

Each connection may also hold a few hundred KiB that no memory budget sees (uvicorn's buffers),
so a worker keeps at most `LOSS_SERVICE_MAX_CONNECTIONS` open (by default derived from
`LOSS_SERVICE_MEMORY_BUDGET`: `service.server.api.guards.connection_limit`; the header deadline
and this bound reach the protocol from the settings, as `ConnectionLimits`). A connection opened beyond
them is kept only to answer its first request 503 with Retry-After, then closed: the connections
already open, and their keep-alive clients, are served as before. Health probes (HEALTH_PATHS) are
answered on any connection: a client holding every connection must not make the orchestrator see a
dead worker and restart it.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.config import Settings

if TYPE_CHECKING:
    from service.server.api.policy import Dialect
    from service.server.api.routing import RouteTable

REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 43\r\nconnection: close\r\n\r\nthe request headers did not arrive in time\n"
)
# Request line and headers may take this many bytes; the parser holds them until they end.
MAX_HEADER_BYTES = 64 * 1024
HEADERS_TOO_LARGE_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 49\r\nconnection: close\r\n\r\nthe request line and headers exceed 65,536 bytes\n"
)


# Liveness and readiness, loss-service's and the Open Inference Protocol's: answered even on a
# connection beyond the limit (they read no body and hold nothing).
HEALTH_PATHS = frozenset({b"/livez", b"/healthz", b"/readyz", b"/v2/health/live", b"/v2/health/ready"})


@dataclass
class ConnectionLimits:
    """How long a request's headers may take, and how many connections a worker keeps open: from
    the server's settings, handed to the protocol by `service.server.boot`."""

    header_timeout: float
    configured_connections: int  # LOSS_SERVICE_MAX_CONNECTIONS; 0: derived from the memory budget
    memory_budget: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.header_timeout, settings.max_connections, settings.memory_budget)

    @functools.cached_property
    def max_connections(self) -> int:
        """LOSS_SERVICE_MAX_CONNECTIONS, or one per MiB of LOSS_SERVICE_MEMORY_BUDGET (at least 64)."""
        from service.server.api.guards import connection_limit  # the app's modules load in the worker, not here

        return self.configured_connections or connection_limit(self.memory_budget)


async def too_many_connections(limit: int, scope: Any, receive: Any, send: Any) -> None:
    """The answer to a request on a connection opened beyond `limit`: 503, in the dialect of the
    route it asks for (problem details, or `{"error"}` on the Open Inference Protocol's routes;
    the app hands its route table over in its lifespan state), and the connection closed."""
    from service.server.api.errors import refusal_response
    from service.server.api.routing import ROUTES_STATE

    routes: RouteTable | None = scope.get("state", {}).get(ROUTES_STATE)
    dialect: Dialect = "problem" if routes is None else routes.dialect_of(scope)
    detail = (
        f"this worker already has its most connections open, {limit:,} (LOSS_SERVICE_MAX_CONNECTIONS); retry shortly"
    )
    headers = {"Retry-After": "1", "Connection": "close"}  # pragma: no mutate (Starlette lowercases header names)
    await refusal_response(dialect, 503, detail, headers)(scope, receive, send)


class OneWritePerTurn:
    """A transport that passes on everything written to it in one turn of the event loop as one
    write, at the end of that turn.

    uvicorn writes a response's status line and headers, then its body: for a small response,
    two send() calls and two TCP segments where one does (what one write is worth over loopback:
    docs/performance.md, "Over HTTP"). Several pieces go out as one `writelines` (one writev,
    nothing copied).
    Everything else is the transport's own.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        chunks, self._pending = self._pending, []
        if chunks and not self._transport.is_closing():  # a connection already lost takes nothing more
            self._transport.writelines(chunks)

    def close(self) -> None:
        self._flush()  # what was written before close is sent, as by the transport itself
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that closes connections whose request headers do not arrive in time,
    refuses requests on connections opened beyond `limits.max_connections`, and writes each
    response in one piece (`OneWritePerTurn`).

    `limits` comes from the server's settings (`service.server.boot` binds it); a protocol named
    to uvicorn by its import path alone (`--http service.server.protocol:HeaderDeadlineProtocol`)
    gets the settings' defaults, with no environment read."""

    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits if limits is not None else ConnectionLimits.from_settings(Settings.model_construct())
        self.header_timeout = self.limits.header_timeout
        self.header_deadline: asyncio.TimerHandle | None = None
        self.header_bytes = 0  # of the request line and headers awaited
        self.headers_awaited = 0  # counts the times they began to be awaited
        self.beyond_limit = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWritePerTurn(transport, self.loop))  # type: ignore[arg-type]
        self.beyond_limit = len(self.connections) > self.limits.max_connections  # this one included
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Feed the parser, and refuse a request line and headers past MAX_HEADER_BYTES.

        A chunk counts when the same request's headers were awaited before it and still are after
        it: then all of it is header bytes. A chunk in which a request begins is not counted (its
        start may be the previous request's body), so a connection holds at most MAX_HEADER_BYTES
        of headers and one socket read more."""
        awaited, began = self.header_deadline is not None, self.headers_awaited
        super().data_received(data)
        if not awaited or began != self.headers_awaited or self.header_deadline is None:
            return
        self.header_bytes += len(data)
        if self.header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self._disarm()
            if self.cycle is None or self.cycle.response_complete:  # no response of ours is under way
                self.transport.write(HEADERS_TOO_LARGE_RESPONSE)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # a request's headers get the whole timeout from its first byte

    def on_headers_complete(self) -> None:
        self._disarm()
        if not self.beyond_limit or self.url.partition(b"?")[0] in HEALTH_PATHS:
            super().on_headers_complete()
            return
        # the app uvicorn starts for this request
        app, self.app = self.app, functools.partial(too_many_connections, self.limits.max_connections)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.header_bytes = 0
        self.headers_awaited += 1
        self.header_deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _expired(self) -> None:
        self.header_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # no response of ours is under way
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()
