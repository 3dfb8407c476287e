"""The HTTP protocol's transport passes on a response's head and body as one write; its limits
come from the settings `loss-service serve` hands it."""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from service.config import Settings
from service.server import boot
from service.server.protocol import ConnectionLimits, HeaderDeadlineProtocol, OneWritePerTurn


class Transport:
    """What a socket transport does with writes, recorded."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False
        self.written_after_close = 0  # a socket transport raises then, in a callback of the loop

    def write(self, data: bytes) -> None:
        if self.closed:
            self.written_after_close += 1
            return
        self.writes.append(bytes(data))

    def writelines(self, chunks: list[bytes]) -> None:  # one writev: one write, as far as the peer sees
        self.write(b"".join(chunks))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def a_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


@pytest.mark.anyio
async def test_writes_in_one_turn_leave_as_one_write_at_its_end() -> None:
    transport = Transport()
    one = OneWritePerTurn(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    one.write(b"HTTP/1.1 200 OK\r\n\r\n")
    one.writelines([b"he", b"llo"])
    assert transport.writes == []
    assert one.get_write_buffer_size() == 7 + 24  # the transport's own and what waits here
    await a_turn()
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\nhello"]
    one.write(b"next")
    await a_turn()
    assert transport.writes[1:] == [b"next"]  # a later turn, a write of its own


@pytest.mark.anyio
async def test_close_sends_what_was_written_first_and_a_lost_connection_takes_nothing() -> None:
    loop = asyncio.get_running_loop()
    closed, aborted, lost = Transport(), Transport(), Transport()
    closing = OneWritePerTurn(closed, loop)  # type: ignore[arg-type]
    closing.write(b"last words")
    closing.close()
    dropping = OneWritePerTurn(aborted, loop)  # type: ignore[arg-type]
    dropping.write(b"never sent")
    dropping.abort()
    losing = OneWritePerTurn(lost, loop)  # type: ignore[arg-type]
    losing.write(b"too late")
    lost.closed = True  # the connection is lost before the turn ends
    await a_turn()
    assert closed.writes == [b"last words"]
    assert closed.closed
    assert aborted.writes == []
    assert aborted.aborted
    assert lost.writes == []
    assert closed.written_after_close == aborted.written_after_close == lost.written_after_close == 0


def connected_protocol(header_timeout: float | None = None) -> tuple[HeaderDeadlineProtocol, Transport]:
    """The server's protocol on a recorded transport, serving an app that answers "ok"."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    config.load()
    limits = ConnectionLimits(header_timeout if header_timeout is not None else 10.0, 0, 2**30)
    protocol = HeaderDeadlineProtocol(config=config, server_state=ServerState(), app_state={}, limits=limits)
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


@pytest.mark.anyio
async def test_the_servers_protocol_answers_a_request_in_one_write() -> None:
    protocol, transport = connected_protocol()
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
    for _ in range(10):
        await a_turn()
    protocol.connection_lost(None)
    assert len(transport.writes) == 1, transport.writes
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nok")


@pytest.mark.anyio
async def test_headers_late_get_408_and_the_connection_closed_in_time_ones_do_not() -> None:
    silent, silent_transport = connected_protocol(0.02)
    partial, partial_transport = connected_protocol(0.02)
    partial.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Le")
    complete, complete_transport = connected_protocol(0.02)
    complete.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    await asyncio.sleep(0.1)
    for transport in (silent_transport, partial_transport):
        assert transport.writes[0].startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert transport.closed
    assert not complete_transport.closed  # its headers came in time; the connection stays open
    assert complete_transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    for protocol in (silent, partial, complete):
        protocol.connection_lost(None)


def test_the_connection_bound_is_the_setting_or_one_per_mib_of_the_memory_budget() -> None:
    mib = 2**20
    assert ConnectionLimits.from_settings(Settings(max_connections=7, memory_budget=500 * mib)).max_connections == 7
    assert ConnectionLimits.from_settings(Settings(max_connections=0, memory_budget=500 * mib)).max_connections == 500
    assert ConnectionLimits.from_settings(Settings(max_connections=0, memory_budget=10 * mib)).max_connections == 64
    odd = ConnectionLimits.from_settings(Settings(max_connections=0, memory_budget=500 * mib + mib // 2))
    assert (odd.max_connections, type(odd.max_connections)) == (500, int)  # whole connections: "500" in a 503


@pytest.mark.anyio
async def test_serve_hands_the_protocol_the_limits_of_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """`loss-service serve` reads the settings once and binds the protocol's limits to them; the
    binding survives the pickling that hands it to spawned workers."""
    given: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: given.update(options, app=app))
    monkeypatch.setattr(boot, "tune_malloc", lambda: None)  # not this test process's allocator
    monkeypatch.setattr(boot, "tune_grpc", lambda: None)  # nor its environment
    monkeypatch.setattr(boot.signal, "signal", lambda *_: None)  # nor its signal handlers
    monkeypatch.setenv("LOSS_SERVICE_HEADER_TIMEOUT", "0.5")
    monkeypatch.setenv("LOSS_SERVICE_MAX_CONNECTIONS", "7")
    assert boot.serve(workers=1) == 0
    assert (given["app"], given["factory"]) == ("service.server.app:create_app", True)
    http = pickle.loads(pickle.dumps(given["http"]))
    assert isinstance(http, functools.partial)
    config = uvicorn.Config(given["app"], factory=True, lifespan="off")
    protocol = http(config=config, server_state=ServerState(), app_state={})
    assert isinstance(protocol, HeaderDeadlineProtocol)
    assert (protocol.header_timeout, protocol.limits.max_connections) == (0.5, 7)


@pytest.mark.anyio
async def test_a_protocol_named_by_its_path_alone_takes_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Named to uvicorn as `--http service.server.protocol:HeaderDeadlineProtocol`, the protocol gets
    no settings: it takes their defaults and reads no environment."""
    monkeypatch.setenv("LOSS_SERVICE_HEADER_TIMEOUT", "0.5")
    config = uvicorn.Config("service.server.app:create_app", factory=True, lifespan="off")
    protocol = HeaderDeadlineProtocol(config=config, server_state=ServerState(), app_state={})
    assert protocol.header_timeout == Settings.model_fields["header_timeout"].default == 10.0


@pytest.mark.anyio
async def test_the_protocol_takes_uvicorns_arguments_by_position_too() -> None:
    """HttpToolsProtocol(config, server_state, app_state): the subclass passes them on as given."""
    config = uvicorn.Config("service.server.app:create_app", factory=True, lifespan="off")
    state, app_state = ServerState(), {"a": 1}
    protocol = HeaderDeadlineProtocol(config, state, app_state, limits=ConnectionLimits(3.0, 5, 2**30))
    assert (protocol.config, protocol.server_state, protocol.app_state) == (config, state, app_state)
    assert (protocol.header_timeout, protocol.limits.max_connections) == (3.0, 5)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "state", "content_type"),
    [
        ("/v1/loss", True, "application/problem+json"),
        ("/v2/models/mse/infer", True, "application/json"),
        ("/v2/models/mse/infer", False, "application/problem+json"),  # no route table: problem details
    ],
)
async def test_too_many_connections_answers_in_the_dialect_of_the_route_asked_for(
    path: str, state: bool, content_type: str
) -> None:
    import json

    from service.server.api.routing import ROUTES_STATE
    from service.server.app import create_app
    from service.server.protocol import too_many_connections

    app = create_app(Settings())
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": [], "query_string": b""}
    if state:
        scope["state"] = {ROUTES_STATE: app.state.routes}
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    await too_many_connections(1234, scope, receive, send)
    start, body = sent
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    assert start["status"] == 503
    assert (headers["retry-after"], headers["connection"], headers["content-type"]) == ("1", "close", content_type)
    detail = "this worker already has its most connections open, 1,234 (LOSS_SERVICE_MAX_CONNECTIONS); retry shortly"
    answer = json.loads(body["body"])
    assert (answer if content_type == "application/json" else answer["detail"]) == (
        {"error": detail} if content_type == "application/json" else detail
    )


def test_grpc_core_is_tuned_unless_the_environment_sets_its_experiments(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`tune_grpc` sets GRPC_EXPERIMENTS where it is unset, keeps what the environment set (even
    empty: grpcio's defaults), and warns when grpcio was imported first (it read them then)."""
    import grpc  # noqa: F401 - this test process has grpcio imported, as the warning needs

    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    boot.tune_grpc()
    assert os.environ["GRPC_EXPERIMENTS"] == "-event_engine_listener"
    assert "this process keeps its GRPC_EXPERIMENTS" in caplog.text
    for given in ("", "-event_engine_client"):
        monkeypatch.setenv("GRPC_EXPERIMENTS", given)
        boot.tune_grpc()
        assert os.environ["GRPC_EXPERIMENTS"] == given
