"""Request bodies inside the worker's memory budget: counted as they arrive, refused before they
are whole, given back on refusal, disconnect and completion; connections and bodies in flight
bounded; and, served, held bodies keep a worker within its budget while small requests are answered.

Without this, 16 connections each sending a 58 KB gzip body that inflates to 60 MB, all but its
last 16 bytes, held one worker at 1,048 MiB RSS under a 256 MiB budget.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
from typing import Any

import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from uvicorn.server import ServerState

from bench import pressure
from service.config import Settings
from service.server import protocol
from service.server.api.guards import INFLATED_PIECE, HeavyRequests, Slot, connection_limit
from service.server.app import create_app
from service.server.protocol import ConnectionLimits, HeaderDeadlineProtocol
from tests.api.test_protocol import Transport, a_turn
from tests.servers import serving

KIB, MIB = 2**10, 2**20
BUDGET = 8 * MIB  # bodies arriving may hold half: 4 MiB


def limiter_of(app: FastAPI) -> HeavyRequests:
    """The app's HeavyRequests guard: the worker's memory budget and what is held of it."""
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    layer: Any = app.middleware_stack
    while not isinstance(layer, HeavyRequests):
        layer = layer.app
    return layer


class Upload:
    """One request, driven message by message as a server would: the app receives what the test
    puts in, and each time it asks for more, what the worker then held of its budget is noted."""

    def __init__(self, app: FastAPI, headers: dict[str, str] | None = None, path: str = "/v1/loss") -> None:
        self.app, self.limiter = app, limiter_of(app)
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.held: list[int] = []  # the budget held when the app asked for each message
        self.sent: list[dict[str, Any]] = []
        fields = {"content-type": "application/json", **(headers or {})}
        self.scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in fields.items()],
            "http_version": "1.1",
            "scheme": "http",
            "server": ("test", 80),
            "client": ("127.0.0.1", 40000),
            "root_path": "",
        }
        self.task: asyncio.Task[None] | None = None

    async def receive(self) -> dict[str, Any]:
        self.held.append(self.limiter.reserved)
        return await self.queue.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def chunk(self, data: bytes, more: bool = True) -> Upload:
        self.queue.put_nowait({"type": "http.request", "body": data, "more_body": more})
        return self

    def leave(self) -> None:
        self.queue.put_nowait({"type": "http.disconnect"})

    def start(self) -> Upload:
        self.task = asyncio.create_task(self.app(self.scope, self.receive, self.send))  # type: ignore[arg-type]
        return self

    async def taken(self) -> None:
        """Until the app has taken every message put in so far."""
        for _ in range(1000):
            if self.queue.empty():
                await a_turn()
                return
            await asyncio.sleep(0)
        raise AssertionError("the app stopped taking messages")

    async def answer(self) -> tuple[int, dict[str, str], dict[str, Any]]:
        assert self.task is not None
        await asyncio.wait_for(self.task, 60)
        headers = {k.decode(): v.decode() for k, v in self.sent[0].get("headers", [])}
        return self.sent[0]["status"], headers, json.loads(self.sent[1]["body"] or b"{}")


@pytest.fixture
async def app() -> Any:
    application = create_app(Settings(memory_budget=BUDGET))
    async with application.router.lifespan_context(application):
        yield application


@pytest.mark.anyio
async def test_a_body_holds_the_budget_as_it_arrives_and_one_that_does_not_fit_is_refused_before_it_is_whole(
    app: FastAPI,
) -> None:
    """The first body's hold grows by each 512 KiB piece; with 2.5 MiB of it held, a second body is
    refused 503 once it passes the 1.5 MiB left to bodies arriving, before its remaining pieces are
    read; its hold goes back at once, the first body's stays until that client leaves."""
    piece = b" " * (512 * KIB)
    first = Upload(app).start()
    for _ in range(5):
        first.chunk(piece)
    await first.taken()
    assert first.held == [i * len(piece) for i in range(6)]
    second = Upload(app).start()
    for _ in range(8):
        second.chunk(piece)
    second.chunk(b"", more=False)
    status, headers, problem = await second.answer()
    assert status == 503
    assert headers["retry-after"] == "1"
    assert problem["detail"].startswith("the request body has reached 2.0 MiB and 1.5 MiB of this worker's memory")
    assert len(second.held) == 4  # three pieces fitted, the fourth was refused: 4 of 9 messages read
    assert limiter_of(app).reserved == 5 * len(piece)  # the second's hold is back
    first.leave()
    await first.answer()
    limiter = limiter_of(app)
    assert (limiter.reserved, limiter.arriving, limiter.bodies) == (0, 0, 0)


@pytest.mark.anyio
async def test_a_body_larger_than_bodies_may_hold_gets_413_and_one_that_does_not_fit_503(app: FastAPI) -> None:
    """Alone over the 4 MiB that bodies arriving may hold: 413, from its Content-Length before
    anything is counted, or as it passes 4 MiB; a body that would fit alone: 503 + Retry-After."""
    declared = Upload(app, {"content-length": str(5 * MIB)}).start().chunk(b" " * (64 * KIB))
    status, headers, problem = await declared.answer()
    assert (status, "retry-after" in headers) == (413, False)
    assert problem["detail"] == (
        "the request body is 5,242,880 bytes; bodies may take 4,194,304 bytes of a worker's memory while they "
        "arrive (half of LOSS_SERVICE_MEMORY_BUDGET)"
    )
    streamed = Upload(app).start()
    for _ in range(6):
        streamed.chunk(b" " * MIB)
    status, headers, problem = await streamed.answer()
    assert (status, "retry-after" in headers) == (413, False)
    assert problem["detail"].startswith("the request body is more than 5,242,880 bytes")
    assert streamed.held[-1] == 4 * MIB  # refused at the fifth MiB, before it was held
    holder = Upload(app).start().chunk(b" " * (3 * MIB))
    await holder.taken()
    fits_alone = Upload(app).start().chunk(b" " * (2 * MIB))
    status, headers, _ = await fits_alone.answer()
    assert (status, headers["retry-after"]) == (503, "1")
    holder.leave()
    await holder.answer()
    limiter = limiter_of(app)
    assert (limiter.reserved, limiter.arriving, limiter.bodies) == (0, 0, 0)


@pytest.mark.anyio
async def test_a_gzip_body_is_held_by_its_inflated_bytes_and_refused_before_it_is_inflated_whole(
    app: FastAPI, inflated: list[int]
) -> None:
    """32 KB of gzip, sent in one message, inflate to 32 MB: the guard inflates a piece at a time
    and the budget counts each, so the body is refused 413 once past 4 MiB, never 32 MB in memory;
    and what it held is freed with the request."""
    bomb = gzip.compress(b" " * (32 * MIB), compresslevel=9)
    assert len(bomb) < 40 * KIB
    upload = Upload(app, {"content-encoding": "gzip", "content-length": str(len(bomb))})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        status, _, problem = await upload.start().chunk(bomb, more=False).answer()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413, problem
    assert max(inflated) <= INFLATED_PIECE
    assert sum(inflated) <= 4 * MIB + INFLATED_PIECE
    assert peak - before < 6 * MIB, f"held {(peak - before) / MIB:.1f} MiB at its peak"
    assert current - before < 1 * MIB  # the pieces were dropped with the refusal
    assert limiter_of(app).reserved == 0


@pytest.mark.anyio
async def test_a_client_that_leaves_mid_body_gives_its_hold_back(app: FastAPI) -> None:
    upload = Upload(app).start().chunk(b" " * MIB).chunk(b" " * MIB)
    await upload.taken()
    limiter = limiter_of(app)
    assert (limiter.reserved, limiter.arriving, limiter.bodies) == (2 * MIB, 2 * MIB, 1)
    upload.leave()
    await upload.answer()
    assert (limiter.reserved, limiter.arriving, limiter.bodies) == (0, 0, 0)


@pytest.mark.anyio
async def test_a_body_that_stalls_on_a_route_that_is_not_heavy_gets_408_and_gives_its_hold_back() -> None:
    """A model's configuration (PUT) is no computation, but its body holds the budget as any body
    does: stalled, it is cut at LOSS_SERVICE_REQUEST_TIMEOUT like a heavy request's."""
    application = create_app(Settings(memory_budget=BUDGET, request_timeout=0.2))
    async with application.router.lifespan_context(application):
        upload = Upload(application, path="/v1/models/stalled")
        upload.scope["method"] = "PUT"
        upload.start().chunk(b" " * MIB)
        await upload.taken()
        limiter = limiter_of(application)
        assert limiter.reserved == MIB
        status, headers, _ = await upload.answer()
        assert (status, headers["connection"]) == (408, "close")
        assert (limiter.reserved, limiter.arriving, limiter.bodies) == (0, 0, 0)


@pytest.mark.anyio
async def test_a_whole_body_hands_its_hold_to_the_slot_and_the_parse_replaces_it(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In three pieces, a body holds twice its size once whole (the pieces and the body joined
    from them); the request's slot takes that hold over, and each estimate replaces it: the
    ledger never holds the body and its parse side by side."""
    limiter = limiter_of(app)
    seen: list[tuple[int, int, int]] = []  # (slot's hold before, estimate, ledger after)
    real = Slot.reserve

    def recording(slot: Slot, nbytes: int, purpose: str) -> None:
        before = slot.reserved
        real(slot, nbytes, purpose)
        seen.append((before, nbytes, limiter.reserved))

    monkeypatch.setattr(Slot, "reserve", recording)
    body = orjson.dumps({"loss": "mse", "predictions": [[0.5]] * 3000, "labels": [[1.0]] * 3000})
    third = len(body) // 3
    upload = Upload(app).start()
    upload.chunk(body[:third]).chunk(body[third : 2 * third]).chunk(body[2 * third :], more=False)
    status, _, result = await upload.answer()
    assert status == 200, result
    assert seen[0][0] == 2 * len(body)  # the body's hold, taken over by the slot
    assert all(after == estimate for _, estimate, after in seen)  # each estimate in place of the last
    assert limiter.reserved == 0


@pytest.mark.anyio
async def test_bodies_arriving_at_once_are_bounded_by_the_budget() -> None:
    """A 64 MiB budget lets 64 bodies arrive at once (one per MiB, at least 64); the 65th gets 503
    until one of them is done."""
    assert [connection_limit(n * MIB) for n in (1, 64, 256, 1024)] == [64, 64, 256, 1024]
    application = create_app(Settings(memory_budget=64 * MIB))
    async with application.router.lifespan_context(application):
        arriving = [Upload(application).start().chunk(b" ") for _ in range(64)]
        for upload in arriving:
            await upload.taken()
        extra = Upload(application).start().chunk(b" ")
        status, headers, problem = await extra.answer()
        assert (status, headers["retry-after"]) == (503, "1")
        assert problem["detail"] == "64 request bodies are already arriving at this worker; retry shortly"
        arriving[0].leave()
        await arriving[0].answer()
        later = Upload(application).start().chunk(b" ")
        await later.taken()
        assert later.task is not None
        assert not later.task.done()  # it arrives: a body went
        for upload in [*arriving[1:], later]:
            upload.leave()
            await upload.answer()
        assert limiter_of(application).bodies == 0


def connection(state: ServerState, max_connections: int = 0) -> tuple[HeaderDeadlineProtocol, Transport]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    config.load()
    limits = ConnectionLimits(header_timeout=10.0, configured_connections=max_connections, memory_budget=2**30)
    server = HeaderDeadlineProtocol(config=config, server_state=state, app_state={}, limits=limits)
    transport = Transport()
    server.connection_made(transport)  # type: ignore[arg-type]
    return server, transport


@pytest.mark.anyio
async def test_a_connection_beyond_the_limit_gets_503_and_is_closed_the_others_are_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = ServerState()
    opened = [connection(state, 2) for _ in range(3)]
    for server, _ in opened:
        server.data_received(b"POST /v1/loss HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
    for _ in range(10):
        await a_turn()
    first, second, third = (transport for _, transport in opened)
    for served in (first, second):
        assert served.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert not served.closed
    head, _, body = third.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"retry-after: 1\r\n" in head.lower()
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["detail"].startswith("this worker already has its most connections open, 2")
    assert third.closed
    opened[2][0].connection_lost(None)
    opened[0][0].connection_lost(None)  # one of the two leaves: a new connection is served
    fourth, fourth_transport = connection(state, 2)
    fourth.data_received(b"POST /v1/loss HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
    for _ in range(10):
        await a_turn()
    assert fourth_transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    for server in (opened[1][0], fourth):
        server.connection_lost(None)


@pytest.mark.parametrize("path", [b"/livez", b"/readyz", b"/healthz?verbose=1", b"/v2/health/ready"])
@pytest.mark.anyio
async def test_a_health_probe_is_answered_on_a_connection_beyond_the_limit(
    monkeypatch: pytest.MonkeyPatch, path: bytes
) -> None:
    """A client holding every connection must not fail the orchestrator's probes (and get the
    worker restarted): a probe is served on a connection beyond the limit, anything else is not."""
    state = ServerState()
    held, _ = connection(state, 1)
    probe, probe_transport = connection(state, 1)
    probe.data_received(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    for _ in range(10):
        await a_turn()
    assert probe_transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    other, other_transport = connection(state, 1)
    other.data_received(b"GET /v1/losses HTTP/1.1\r\nHost: t\r\n\r\n")
    for _ in range(10):
        await a_turn()
    assert other_transport.writes[0].startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    for server in (held, probe, other):
        server.connection_lost(None)


@pytest.mark.parametrize("start", [b"GET /livez HTTP/1.1\r\nHost: t\r\nX-Big: ", b"GET /livez?"])
@pytest.mark.anyio
async def test_a_request_line_or_headers_past_64_kib_get_431_and_the_connection_closed(start: bytes) -> None:
    """The parser keeps a header (or the request line) whole until it ends: without a bound, one
    connection piled up 67 MB of one header within the header deadline."""
    server, transport = connection(ServerState())
    server.data_received(start)
    fed = len(start)
    while not transport.closed and fed < 10 * MIB:
        server.data_received(b"a" * (8 * KIB))
        fed += 8 * KIB
    assert transport.writes[0].startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nthe request line and headers exceed 65,536 bytes\n")
    assert fed <= protocol.MAX_HEADER_BYTES + 2 * 8 * KIB
    server.connection_lost(None)


@pytest.mark.anyio
async def test_headers_of_exactly_64_kib_after_the_first_read_pass_and_one_byte_more_does_not() -> None:
    """The bound counts the reads after the one a request begins in: 65,536 bytes of them are
    allowed, the 65,537th closes the connection with 431."""
    server, transport = connection(ServerState())
    server.data_received(b"GET /livez HTTP/1.1\r\nHost: t\r\nX-Big: ")  # where the request begins: not counted
    for _ in range(protocol.MAX_HEADER_BYTES // (8 * KIB)):
        server.data_received(b"a" * (8 * KIB))
    assert (server.header_bytes, transport.closed, transport.writes) == (protocol.MAX_HEADER_BYTES, False, [])
    server.data_received(b"a")
    assert transport.closed
    assert transport.writes[0].startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    server.connection_lost(None)


@pytest.mark.anyio
async def test_body_bytes_in_the_same_read_as_headers_do_not_count_as_headers() -> None:
    """One read holding the end of a request's headers, its 200 KiB body and the start of the next
    request: the body is not counted as either request's headers, and both are served."""
    server, transport = connection(ServerState())
    body = b" " * (200 * KIB)
    server.data_received(b"POST /x HTTP/1.1\r\nHo")
    server.data_received(b"st: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body + b"POST /x HTTP/1.1\r\nHo")
    for piece in (b"st: t\r\nContent-Le", b"ngth: 2\r\n\r\n{}"):
        server.data_received(piece)
    for _ in range(20):
        await a_turn()
    assert [write[:15] for write in transport.writes] == [b"HTTP/1.1 200 OK"] * 2
    assert not transport.closed
    server.connection_lost(None)


@pytest.mark.slow  # starts a server
def test_held_gzip_and_plain_bodies_keep_the_served_worker_within_its_budget() -> None:
    """bench/pressure.py's probes against `loss-service serve` with a 256 MiB budget: 16
    connections hold 58 KB gzip bodies that inflate to 60 MB, then 6 hold 60 MB plain bodies, each
    all but its last 16 bytes. The worker's peak RSS stays within the budget + 64 MiB, most held
    bodies are refused, and every small request sent meanwhile is answered 200."""
    budget = 256 * MIB
    with serving(env={"LOSS_SERVICE_MEMORY_BUDGET": str(budget)}) as (url, process):
        port = int(url.rsplit(":", 1)[1])
        for probe_of in (pressure.gzip_probe, pressure.plain_probe):
            probe = asyncio.run(probe_of(port, process.pid))
            peak = pressure.peak_rss(process.pid)
            assert peak <= budget + pressure.SLACK, f"{probe.name}: peak RSS {peak / MIB:.0f} MiB"
            assert probe.answers["503"] >= 1, probe
            assert sum(probe.small.values()) > 0
            assert probe.small == {200: probe.small[200]}, probe.small


@pytest.mark.anyio
async def test_after_a_gzip_body_is_passed_on_whole_receive_is_the_servers_again() -> None:
    """An app that waits for the client to leave once the body is in (as a streaming response
    does) gets the server's http.disconnect, not the inflated body's last message again and again."""
    from service.server.api.guards import BodyLimit

    seen: list[dict[str, Any]] = []

    async def waits_for_disconnect(scope: Any, receive: Any, send: Any) -> None:
        while not seen or seen[-1].get("more_body", False):
            seen.append(await receive())
        seen.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    messages = [{"type": "http.request", "body": gzip.compress(b" " * (600 * KIB)), "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/v1/loss", "headers": [(b"content-encoding", b"gzip")]}
    await asyncio.wait_for(BodyLimit(waits_for_disconnect, 64 * MIB)(scope, receive, send), 60)
    assert [len(message.get("body", b"")) for message in seen[:-1]] == [256 * KIB, 256 * KIB, 88 * KIB]
    assert seen[-1] == {"type": "http.disconnect"}
