"""Request guards: body limits (gzip included), API keys, the concurrency bound, request ids and logs."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import numpy as np
import pytest

from service.api.guards import Deadline
from service.app import create_app
from service.config import Settings
from tests.test_api import problem
from tests.test_monitoring import samples, value

pytestmark = pytest.mark.anyio
BODY = {"loss": "mse", "predictions": [[1.0], [2.0]], "labels": [[1.0], [4.0]], "model": "guarded"}
JSON = {"content-type": "application/json"}


async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://g") as c:
        yield c


@pytest.fixture
async def limited() -> AsyncIterator[httpx.AsyncClient]:
    async for c in client_for(Settings(max_body_bytes=1000)):
        yield c


async def test_a_declared_oversize_body_is_refused_before_reading(limited: httpx.AsyncClient) -> None:
    body = problem(await limited.post("/v1/loss", content=b"x" * 1001, headers=JSON), 413)
    assert "limit is 1,000" in body["detail"]
    assert "LOSS_SERVICE_MAX_BODY_BYTES" in body["detail"]


async def test_a_streamed_oversize_body_is_refused_while_reading(limited: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 100

    response = await limited.post("/v1/loss", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert "more than" in problem(response, 413)["detail"]
    scrape = samples((await limited.get("/metrics")).text)
    assert value(scrape, "loss_service_http_requests_rejected_total", reason="too_large") == 1


def padded(size: int) -> bytes:
    """A valid /v1/loss body of exactly `size` bytes (JSON allows trailing white space)."""
    raw = json.dumps(BODY).encode()
    return raw + b" " * (size - len(raw))


async def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_not(limited: httpx.AsyncClient) -> None:
    assert (await limited.post("/v1/loss", content=padded(1000), headers=JSON)).status_code == 200
    problem(await limited.post("/v1/loss", content=padded(1001), headers=JSON), 413)

    def streamed(body: bytes) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 300):
                yield body[start : start + 300]

        return chunks()

    assert (await limited.post("/v1/loss", content=streamed(padded(1000)), headers=JSON)).status_code == 200
    problem(await limited.post("/v1/loss", content=streamed(padded(1001)), headers=JSON), 413)
    zipped = gzip.compress(padded(1000))
    headers = {**JSON, "content-encoding": "gzip"}
    assert (await limited.post("/v1/loss", content=zipped, headers=headers)).status_code == 200
    problem(await limited.post("/v1/loss", content=gzip.compress(padded(1001)), headers=headers), 413)


async def test_a_gzip_bomb_is_inflated_no_further_than_the_limit(
    limited: httpx.AsyncClient, inflated: list[int]
) -> None:
    """Sent in ten chunks, a bomb of 10 MB of zeros makes the guard inflate at most the limit (plus
    the one byte that proves it is over), however the chunks fall: counted on inflated bytes."""
    bomb = gzip.compress(b"\0" * 10_000_000)

    async def chunks() -> AsyncIterator[bytes]:
        step = len(bomb) // 10 + 1
        for start in range(0, len(bomb), step):
            yield bomb[start : start + step]

    response = await limited.post("/v1/loss", content=chunks(), headers={**JSON, "content-encoding": "gzip"})
    problem(response, 413)
    assert sum(inflated) <= 1001, f"inflated {sum(inflated):,} bytes for a limit of 1,000"


async def test_the_413_detail_reads_well(limited: httpx.AsyncClient) -> None:
    detail = problem(await limited.post("/v1/loss", content=b"x" * 1001, headers=JSON), 413)["detail"]
    assert detail == "the request body is 1,001 bytes; the limit is 1,000 (LOSS_SERVICE_MAX_BODY_BYTES)"


async def test_gzip_bodies_are_inflated(limited: httpx.AsyncClient) -> None:
    plain = await limited.post("/v1/loss", json=BODY)
    zipped = await limited.post(
        "/v1/loss", content=gzip.compress(json.dumps(BODY).encode()), headers={**JSON, "content-encoding": "gzip"}
    )
    assert zipped.status_code == 200
    assert zipped.json() == plain.json()


async def test_a_gzip_bomb_is_refused_at_the_inflated_limit(limited: httpx.AsyncClient) -> None:
    bomb = gzip.compress(b" " * 500_000)
    assert len(bomb) < 1000  # under the limit as sent: only the inflated size is over it
    response = await limited.post("/v1/loss", content=bomb, headers={**JSON, "content-encoding": "gzip"})
    # One chunk is inflated to at most the limit plus one byte, then refused: no more is inflated.
    assert problem(response, 413)["detail"] == (
        "the request body is more than 1,001 bytes; the limit is 1,000 (LOSS_SERVICE_MAX_BODY_BYTES)"
    )


async def test_truncated_gzip_and_unknown_encodings(limited: httpx.AsyncClient) -> None:
    truncated = gzip.compress(json.dumps(BODY).encode())[:-10]
    body = problem(await limited.post("/v1/loss", content=truncated, headers={**JSON, "content-encoding": "gzip"}), 400)
    assert body["detail"] == "malformed gzip body: it ends before the gzip stream does"
    not_gzip = await limited.post("/v1/loss", content=b"plain text", headers={**JSON, "content-encoding": "gzip"})
    assert problem(not_gzip, 400)["detail"].startswith("malformed gzip body: Error -3 while decompressing data")
    body = problem(await limited.post("/v1/loss", content=b"{}", headers={**JSON, "content-encoding": "br"}), 415)
    assert "use gzip" in body["detail"]


PROTECTED = [
    ("POST", "/v1/loss"),
    ("POST", "/v1/evaluate"),
    ("GET", "/v1/losses"),
    ("GET", "/v1/losses/mse"),
    ("GET", "/v2"),
    ("GET", "/v2/models/mse"),
    ("POST", "/v2/models/mse/infer"),
]


def refusal(response: httpx.Response, status: int) -> str:
    """The refusal's message: problem details on /v1, the Open Inference Protocol's error on /v2."""
    if response.request.url.path.startswith("/v2"):
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"error"}
        return str(response.json()["error"])
    return str(problem(response, status)["detail"])


async def test_oip_routes_refuse_in_the_protocols_error_shape() -> None:
    infer = "/v2/models/mse/infer"
    async for c in client_for(Settings(max_body_bytes=1000)):
        assert "limit is 1,000" in refusal(await c.post(infer, content=b"x" * 1001), 413)

        async def oversize_stream() -> AsyncIterator[bytes]:
            yield b"x" * 1001

        assert "limit is 1,000" in refusal(await c.post(infer, content=oversize_stream()), 413)


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    key_file = tmp_path / "keys"
    key_file.write_text("first-key\nsecond-key\n")
    async for c in client_for(Settings(api_keys=str(key_file))):  # type: ignore[arg-type]
        yield c


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_routes_need_a_valid_key(keyed: httpx.AsyncClient, method: str, path: str) -> None:
    missing = await keyed.request(method, path, json=BODY)
    assert refusal(missing, 401).startswith("an API key is required")
    assert missing.headers["www-authenticate"] == 'Bearer realm="loss-service"'
    # A wrong key, a prefix of a valid one, a valid one extended, another scheme: all refused.
    for header in (
        "Bearer nope",
        "Bearer second-ke",
        "Bearer second-keyX",
        "Bearer first-keysecond-key",
        "Basic second-key",
    ):
        wrong = await keyed.request(method, path, json=BODY, headers={"authorization": header})
        assert refusal(wrong, 401) == "the API key is not valid", header
        assert "invalid_token" in wrong.headers["www-authenticate"]
    right = await keyed.request(method, path, json=BODY, headers={"authorization": "Bearer second-key"})
    assert right.status_code not in (401, 403)
    assert right.status_code < 500, right.text


async def test_health_and_metrics_stay_open_unless_metrics_auth(keyed: httpx.AsyncClient) -> None:
    for path in ("/livez", "/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"):
        assert (await keyed.get(path)).status_code == 200, path
    async for strict in client_for(Settings(api_keys=["k"], metrics_auth=True)):
        problem(await strict.get("/metrics"), 401)
        assert (await strict.get("/metrics", headers={"authorization": "Bearer k"})).status_code == 200


@contextmanager
def computations_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Every loss computation waits, in its worker thread, until `release` is set; `entered` is set
    once one waits. With offload_bytes=0 every request computes in a worker thread."""
    from service.api import batches

    entered, release = threading.Event(), threading.Event()
    real = batches.compute

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)
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


async def test_heavy_requests_beyond_the_limit_get_503_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    results: dict[str, httpx.Response] = {}

    async def first(c: httpx.AsyncClient) -> None:
        results["first"] = await c.post("/v1/loss", json=BODY)

    with computations_held(monkeypatch) as (entered, release):
        async for c in client_for(Settings(max_concurrent=1, offload_bytes=0)):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(first, c)
                await wait_for_event(entered)  # the first request holds the only slot, computing
                second = await c.post("/v1/loss", json=BODY)
                assert problem(second, 503)["detail"].startswith("1 requests are already being computed")
                assert second.headers["retry-after"] == "1"
                assert (await c.get("/v1/losses/mse")).status_code == 200  # light requests are not limited
                oip = await c.post("/v2/models/mse/infer", content=b"{}", headers=JSON)
                assert refusal(oip, 503).startswith("1 requests are already being computed")
                release.set()
            assert results["first"].status_code == 200
            assert (await c.post("/v1/loss", json=BODY)).status_code == 200  # the slot was released
            scrape = samples((await c.get("/metrics")).text)
            assert value(scrape, "loss_service_http_requests_rejected_total", reason="overloaded") == 2


async def test_a_draining_readiness_probe_is_not_counted_as_overload() -> None:
    app = create_app(Settings())
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://g") as c:
        app.state.lifecycle = "draining"
        assert (await c.get("/readyz")).status_code == 503
        scrape = samples((await c.get("/metrics")).text)
        assert value(scrape, "loss_service_http_requests_rejected_total", reason="overloaded") == 0


async def test_bodies_still_arriving_hold_no_slot() -> None:
    """Eight connections that send a first byte and then nothing: with two slots, an ordinary
    request is still computed at once (the slot is claimed when a body has fully arrived)."""
    stalled = anyio.Event()

    async def one_byte_then_nothing() -> AsyncIterator[bytes]:
        yield b"{"
        await stalled.wait()

    async for c in client_for(Settings(max_concurrent=2, request_timeout=30)):
        async with anyio.create_task_group() as tasks:
            for _ in range(8):
                tasks.start_soon(partial(c.post, "/v1/loss", content=one_byte_then_nothing(), headers=JSON))
            await anyio.sleep(0.2)
            with anyio.fail_after(60):  # stops a hang only
                assert (await c.post("/v1/loss", json=BODY)).status_code == 200
            tasks.cancel_scope.cancel()


async def test_a_body_still_arriving_at_the_deadline_gets_408_and_frees_its_slot() -> None:
    async def stalled_body() -> AsyncIterator[bytes]:
        yield json.dumps(BODY).encode()[:10]
        await anyio.sleep(60)

    async for c in client_for(Settings(request_timeout=0.2, max_concurrent=1)):
        with anyio.fail_after(60):  # stops a hang only
            response = await c.post("/v1/loss", content=stalled_body(), headers=JSON)
        body = problem(response, 408)
        assert body["detail"] == "the request body did not arrive within 0.2 s (LOSS_SERVICE_REQUEST_TIMEOUT)"
        assert response.headers["connection"] == "close"
        assert (await c.post("/v1/loss", json=BODY)).status_code == 200


async def test_an_oip_binary_body_still_arriving_at_the_deadline_gets_408() -> None:
    """The aligned receive of OIP tensors (a declared Content-Length) honours the same deadline."""
    header = b'{"inputs": []}'
    declared = {"content-length": str(len(header) + 400), "inference-header-content-length": str(len(header))}

    async def stalled_body() -> AsyncIterator[bytes]:
        yield header + b"\0" * 100
        await anyio.sleep(60)

    async for c in client_for(Settings(request_timeout=0.2, max_concurrent=1)):
        with anyio.fail_after(60):  # stops a hang only
            response = await c.post("/v2/models/mse/infer", content=stalled_body(), headers=declared)
        assert refusal(response, 408) == "the request body did not arrive within 0.2 s (LOSS_SERVICE_REQUEST_TIMEOUT)"
        assert response.headers["connection"] == "close"


async def test_a_computation_past_the_deadline_gets_504_and_its_thread_keeps_the_slot() -> None:
    # 2e6 numbers, 20 MB: parsing alone takes ~100 ms, well past the 50 ms deadline, in a worker thread.
    values = np.random.default_rng(0).random((100_000, 10)).round(6).tolist()
    heavy = json.dumps({"loss": "mse", "predictions": values, "labels": values, "model": "late"}).encode()
    async for c in client_for(Settings(request_timeout=0.05, max_concurrent=1)):
        body = problem(await c.post("/v1/loss", content=heavy, headers=JSON), 504)
        assert (
            body["detail"]
            == "the loss was not computed within 0.05 s (LOSS_SERVICE_REQUEST_TIMEOUT); try a smaller batch"
        )
        # The abandoned thread still holds the only slot: the next request is refused, not queued.
        assert problem(await c.post("/v1/loss", json=BODY), 503)["detail"].startswith("1 requests are already")
        with anyio.fail_after(60):  # stops a hang only
            while (await c.post("/v1/loss", json=BODY)).status_code == 503:
                await anyio.sleep(0.02)
        # The thread computed the batch, but its client got a 504: the loss metrics must not count it.
        scrape = samples((await c.get("/metrics")).text)
        assert value(scrape, "loss_service_batches_total", model="guarded", loss="mean_squared_error") >= 1
        assert not [key for key in scrape if ("model", "late") in key[1]]


async def test_work_abandoned_before_a_thread_took_it_gives_its_slot_back() -> None:
    # Every worker thread busy: the computation waits for one, times out, and never starts.
    limiter = anyio.to_thread.current_default_thread_limiter()
    total, limiter.total_tokens = limiter.total_tokens, 1
    unblock = threading.Event()
    try:
        async for c in client_for(Settings(request_timeout=0.1, max_concurrent=1, offload_bytes=0)):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(anyio.to_thread.run_sync, unblock.wait)
                await anyio.sleep(0.05)
                problem(await c.post("/v1/loss", json=BODY), 504)
                unblock.set()
            assert (await c.post("/v1/loss", json=BODY)).status_code == 200  # not 503: the slot came back
    finally:
        unblock.set()
        limiter.total_tokens = total


async def test_request_ids_and_one_json_log_line_per_request(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("loss_service.access")
    logger.addHandler(caplog.handler)
    try:
        echoed = await client.post(
            "/v1/loss", json=BODY, headers={"x-request-id": "abc-123", "authorization": "Bearer secret"}
        )
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
    assert 0 < lines[0]["duration_ms"] < 10_000
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


@pytest.mark.parametrize(
    "settings",
    [Settings(), Settings(api_keys=["k"], cors_origins=["http://x"], metrics_auth=True)],
    ids=["defaults", "keys-and-cors"],
)
async def test_the_lifespan_passes_through_every_middleware(settings: Settings) -> None:
    """uvicorn sends the app its lifespan events through the whole middleware stack."""
    app = create_app(settings)
    events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        if events:
            return events.pop(0)
        await anyio.sleep_forever()
        return {}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    with anyio.fail_after(60):  # stops a hang only
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert app.state.lifecycle in ("ready", "draining", "stopped")


async def test_cors_is_off_by_default_and_configurable(client: httpx.AsyncClient) -> None:
    preflight = {"origin": "https://dash.example", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in (await client.options("/v1/loss", headers=preflight)).headers
    async for c in client_for(Settings(cors_origins=["https://dash.example"])):
        response = await c.options("/v1/loss", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://dash.example"


async def test_arrays_over_max_elements_get_413_before_numpy_allocates() -> None:
    import io

    import numpy as np

    async for c in client_for(Settings(max_elements=10)):
        big = {"loss": "mse", "predictions": [[0.0] * 11], "labels": [[0.0] * 11]}
        body = problem(await c.post("/v1/loss", json=big), 413)
        assert body["detail"] == "an array holds 11 numbers; the limit is 10 (LOSS_SERVICE_MAX_ELEMENTS)"
        assert (
            await c.post("/v1/loss", json={**big, "predictions": [[0.0] * 10], "labels": [[0.0] * 10]})
        ).status_code == 200
        buffer = io.BytesIO()
        np.savez(buffer, predictions=np.zeros((1, 11)), labels=np.zeros((1, 11)))
        npz = await c.post(
            "/v1/loss", params={"loss": "mse"}, content=buffer.getvalue(), headers={"content-type": "application/x-npz"}
        )
        assert "LOSS_SERVICE_MAX_ELEMENTS" in problem(npz, 413)["detail"]
        evaluate = await c.post(
            "/v1/evaluate", json={**{k: v for k, v in big.items() if k != "loss"}, "losses": ["mse"]}
        )
        problem(evaluate, 413)
        tensor = {"name": "predictions", "shape": [1, 11], "datatype": "FP64", "data": [0.0] * 11}
        oip = await c.post("/v2/models/mse/infer", json={"inputs": [tensor]})
        assert oip.status_code == 413
        assert "LOSS_SERVICE_MAX_ELEMENTS" in oip.json()["error"]
        binary = {"name": "predictions", "shape": [1, 11], "datatype": "FP64", "parameters": {"binary_data_size": 88}}
        header = json.dumps({"inputs": [binary]}).encode()
        raw = await c.post(
            "/v2/models/mse/infer",
            content=header + bytes(88),
            headers={"inference-header-content-length": str(len(header))},
        )
        assert raw.status_code == 413


async def test_a_deadline_passed_while_the_loop_was_busy_still_answers_504() -> None:
    """Synchronous work blocks the loop past the deadline; the timer fires at the app's next await,
    and the client gets the whole 504, nothing of the late response, and the slot back."""
    from service.api.guards import HeavyRequests

    async def busy_app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        time.sleep(0.05)  # blocks the loop: the 10 ms deadline can fire only at the next await
        await anyio.sleep(0.001)  # a real suspension, as when a route awaits its thread
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    guarded = HeavyRequests(busy_app, limit=1, timeout=0.01)
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://g") as c:
        response = await c.post("/v1/loss", content=b"{}")
        assert "not computed within 0.01 s" in problem(response, 504)["detail"]
        assert guarded.busy == 0


@pytest.mark.parametrize("setting", ["", ",", " , ", "/run/secrets/no-such-file"])
def test_a_key_setting_that_yields_no_key_stops_the_start(setting: str) -> None:
    """Set to nothing, authentication would silently be off; a missing secrets file would become a
    key itself (`Bearer /run/secrets/...` let in)."""
    with pytest.raises(ValueError, match=r"holds no key|no keys file"):
        Settings(api_keys=setting)  # type: ignore[arg-type]


async def test_comment_lines_in_a_key_file_are_not_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# the fraud team\nfirst-key\n\n   # rotated on 2026-11-01\n")
    caplog.set_level(logging.WARNING)
    async for c in client_for(Settings(api_keys=str(key_file))):  # type: ignore[arg-type]
        for comment in ("# the fraud team", "#"):
            refusal(await c.post("/v1/loss", json=BODY, headers={"authorization": f"Bearer {comment}"}), 401)
        assert (await c.post("/v1/loss", json=BODY, headers={"authorization": "Bearer first-key"})).status_code == 200
    assert "authentication is on: /v1 and /v2 need one of 1 API keys" in caplog.text
    key_file.write_text("# nothing but comments\n")
    with pytest.raises(ValueError, match="holds no key"):
        Settings(api_keys=str(key_file))  # type: ignore[arg-type]


async def test_the_start_says_when_authentication_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async for _ in client_for(Settings()):
        pass
    assert "authentication is off: anyone who reaches this service may call /v1 and /v2" in caplog.text


async def test_a_trailing_slash_is_not_redirected_to_the_host_the_client_named(limited: httpx.AsyncClient) -> None:
    response = await limited.post("/v1/loss/", json=BODY, headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404
    assert "location" not in response.headers


async def test_a_browser_may_send_a_key_across_origins() -> None:
    async for c in client_for(Settings(cors_origins=["https://app.example"], api_keys=["k"])):  # type: ignore[arg-type]
        preflight = await c.options(
            "/v1/loss",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed
        assert "content-type" in allowed
        answer = await c.post(
            "/v1/loss", json=BODY, headers={"origin": "https://app.example", "authorization": "Bearer k"}
        )
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


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


async def test_a_gzip_body_streamed_in_chunks_is_inflated_whole(limited: httpx.AsyncClient) -> None:
    """Chunk by chunk, as a client streams it: the end of the gzip stream is only checked at the
    end of the body, and a stream cut short in its last chunk is still caught."""
    compressed = gzip.compress(json.dumps(BODY).encode())

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 7):
            yield data[start : start + 7]

    headers = {**JSON, "content-encoding": "gzip"}
    answer = await limited.post("/v1/loss", content=chunks(compressed), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["mean"] == 2.0
    cut = await limited.post("/v1/loss", content=chunks(compressed[:-10]), headers=headers)
    assert problem(cut, 400)["detail"] == "malformed gzip body: it ends before the gzip stream does"


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


class Recorder:
    """An app that reads the whole body and answers 200, keeping what it saw."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.state: dict[str, Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.headers, self.state = scope["headers"], scope.get("state", {})
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_downstream_sees_the_inflated_body_and_not_the_compressed_bodys_headers() -> None:
    from service.api.guards import BodyLimit

    raw = json.dumps(BODY).encode()
    zipped = gzip.compress(raw)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(zipped))]
    recorder = Recorder()
    # One message with no more_body: ASGI's default, the whole body.
    gzipped = [*headers, (b"content-encoding", b"gzip")]
    sent = await drive(BodyLimit(recorder, 1000), [{"type": "http.request", "body": zipped}], gzipped)
    assert sent[0]["status"] == 200
    assert recorder.body == raw
    assert recorder.headers == [(b"content-type", b"application/json")]
    recorder = Recorder()
    await drive(BodyLimit(recorder, 1000), [{"type": "http.request"}], headers)  # a message without a body
    assert (recorder.body, recorder.headers) == (b"", headers)


async def test_a_truncated_gzip_body_in_one_message_is_refused() -> None:
    from service.api.guards import BodyLimit

    truncated = gzip.compress(json.dumps(BODY).encode())[:-10]
    sent = await drive(
        BodyLimit(Recorder(), 1000), [{"type": "http.request", "body": truncated}], [(b"content-encoding", b"gzip")]
    )
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["detail"] == "malformed gzip body: it ends before the gzip stream does"


async def test_a_zlib_body_is_not_gzip(limited: httpx.AsyncClient) -> None:
    headers = {**JSON, "content-encoding": "gzip"}
    response = await limited.post("/v1/loss", content=zlib.compress(json.dumps(BODY).encode()), headers=headers)
    detail = problem(response, 400)["detail"]
    assert detail == "malformed gzip body: Error -3 while decompressing data: incorrect header check"


async def test_a_refusal_after_the_response_started_is_raised_not_sent() -> None:
    """A second response cannot follow a first: the error goes to the server, which closes the
    connection, instead of a 413 sent after a 200's headers."""
    from service.api.guards import BodyLimit
    from service.api.problems import ProblemError

    async def answers_first(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await receive()

    with pytest.raises(ProblemError):
        await drive(BodyLimit(answers_first, 10), [{"type": "http.request", "body": b"x" * 11}], [])


async def test_a_gzip_body_whose_later_chunk_is_a_bomb_is_inflated_no_further_than_the_limit(
    limited: httpx.AsyncClient, inflated: list[int]
) -> None:
    """600 bytes inflated from the first chunk leave 400 (and the one that proves the excess) for
    the rest, whatever the rest would inflate to."""
    writer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    first = writer.compress(padded(600)) + writer.flush(zlib.Z_SYNC_FLUSH)  # all 600 bytes inflate from it
    rest = writer.compress(b"\0" * 10_000_000) + writer.flush()

    async def chunks() -> AsyncIterator[bytes]:
        yield first
        yield rest

    response = await limited.post("/v1/loss", content=chunks(), headers={**JSON, "content-encoding": "gzip"})
    problem(response, 413)
    assert inflated[0] == 600
    assert sum(inflated) == 1001


async def test_the_slot_is_claimed_by_a_last_message_that_leaves_out_more_body() -> None:
    from service.api.guards import HEAVY_SLOT, HeavyRequests, Slot

    recorder = Recorder()
    guarded = HeavyRequests(recorder, limit=1, timeout=5)
    await drive(guarded, [{"type": "http.request", "body": b"{}"}], [])
    assert isinstance(recorder.state.get(HEAVY_SLOT), Slot)
    assert guarded.busy == 0


def test_a_size_header_is_plain_ascii_digits_or_nothing() -> None:
    from service.api.headers import byte_count

    assert [byte_count(v) for v in ("0", "12", "0012")] == [0, 12, 12]
    for header in (None, "", "+1", " 1", "1 ", "-1", "1.0", "0x10", "\u0661"):
        assert byte_count(header) is None, repr(header)


def test_a_header_is_read_from_the_scope_first_value_first() -> None:
    from service.api.headers import request_header

    scope = {"headers": [(b"accept", b"a/b"), (b"x-name", b"caf\xe9"), (b"accept", b"c/d")]}
    assert request_header(scope, b"accept") == "a/b"
    assert request_header(scope, b"x-name") == "caf\u00e9"  # latin-1, as Starlette reads it
    assert request_header(scope, b"content-type") is None


async def test_the_access_line_gives_the_duration_in_milliseconds_to_the_microsecond(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.monitoring import middleware

    clock, real = iter([100.0, 100.0123456]), time.perf_counter

    def perf_counter() -> float:  # the monitor's two readings; httpx's own timing as it was
        return next(clock) if sys._getframe(1).f_globals["__name__"] == "service.monitoring.middleware" else real()

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


@pytest.mark.anyio
async def test_a_deadline_cancels_the_block_once_it_passes_and_swallows_only_its_own_cancellation() -> None:
    with Deadline(0.01) as passed:
        await asyncio.sleep(1)
    assert passed.expired
    with Deadline(1) as kept:
        await asyncio.sleep(0.01)
    assert not kept.expired
    with Deadline(0.01) as stopped:
        stopped.stop()  # a response under way is left to finish
        await asyncio.sleep(0.03)
    assert not stopped.expired

    async def failing() -> None:
        with Deadline(0.01):
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                raise ValueError("the block's own") from None  # an error of its own: not swallowed

    with pytest.raises(ValueError, match="the block's own"):
        await failing()


@pytest.mark.anyio
async def test_a_cancellation_requested_elsewhere_goes_on_through_a_deadline() -> None:
    """A server shutting down cancels the request's task; the deadline must not eat that, whether
    or not it passed too."""

    async def guarded(seconds: float) -> str:
        with Deadline(seconds):
            time.sleep(0.03)  # the loop is busy: both timers below come due meanwhile
            await asyncio.sleep(0)  # they fire here, the shutdown's first, then the deadline's if it is due
            await asyncio.sleep(1)
        return "swallowed"

    loop = asyncio.get_running_loop()
    for seconds in (10.0, 0.01):  # the deadline far off; passed alongside the other cancellation
        task = asyncio.ensure_future(guarded(seconds))
        loop.call_later(0.005, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
