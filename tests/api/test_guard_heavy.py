"""The heavy requests guard and its slots (service/server/api/guards/heavy.py, slots.py): the concurrency
bound, the deadlines (408 for a body, 504 for a computation) and who holds a slot when."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from service.config import Settings
from tests.api.test_api import problem
from tests.apps import app_client
from tests.guarded import (
    BODY,
    JSON,
    Recorder,
    computations_held,
    drive,
    heavy_route,
    refusal,
    wait_for_event,
)
from tests.monitoring.test_monitoring import samples, value

pytestmark = pytest.mark.anyio


async def test_heavy_requests_beyond_the_limit_get_503_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    results: dict[str, httpx.Response] = {}

    async def first(c: httpx.AsyncClient) -> None:
        results["first"] = await c.post("/v1/loss", json=BODY)

    with computations_held(monkeypatch) as (entered, release):
        async with app_client(Settings(max_concurrent=1, offload_bytes=0)) as c:
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
    async with app_client(Settings()) as c:
        c.app.state.lifecycle = "draining"
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

    async with app_client(Settings(max_concurrent=2, request_timeout=30)) as c, anyio.create_task_group() as tasks:
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

    async with app_client(Settings(request_timeout=0.2, max_concurrent=1)) as c:
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

    async with app_client(Settings(request_timeout=0.2, max_concurrent=1)) as c:
        with anyio.fail_after(60):  # stops a hang only
            response = await c.post("/v2/models/mse/infer", content=stalled_body(), headers=declared)
        assert refusal(response, 408) == "the request body did not arrive within 0.2 s (LOSS_SERVICE_REQUEST_TIMEOUT)"
        assert response.headers["connection"] == "close"


async def test_a_computation_past_the_deadline_gets_504_and_its_thread_keeps_the_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The computation waits in its worker thread until released, so the 50 ms deadline passes
    # first on any machine (a body that only takes long to parse would be quick on a fast one).
    late = {**BODY, "model": "late"}
    with computations_held(monkeypatch) as (entered, release):
        async with app_client(Settings(request_timeout=0.05, max_concurrent=1, offload_bytes=0)) as c:
            body = problem(await c.post("/v1/loss", json=late), 504)
            assert entered.is_set()
            assert (
                body["detail"]
                == "the loss was not computed within 0.05 s (LOSS_SERVICE_REQUEST_TIMEOUT); try a smaller batch"
            )
            # The abandoned thread still holds the only slot: the next request is refused, not queued.
            assert problem(await c.post("/v1/loss", json=BODY), 503)["detail"].startswith("1 requests are already")
            release.set()
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
        async with app_client(Settings(request_timeout=0.1, max_concurrent=1, offload_bytes=0)) as c:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(anyio.to_thread.run_sync, unblock.wait)
                await anyio.sleep(0.05)
                problem(await c.post("/v1/loss", json=BODY), 504)
                unblock.set()
            assert (await c.post("/v1/loss", json=BODY)).status_code == 200  # not 503: the slot came back
    finally:
        unblock.set()
        limiter.total_tokens = total


async def test_a_deadline_passed_while_the_loop_was_busy_still_answers_504() -> None:
    """Synchronous work blocks the loop past the deadline; the timer fires at the app's next await,
    and the client gets the whole 504, nothing of the late response, and the slot back."""
    from service.server.api.guards.heavy import HeavyRequests

    async def busy_app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        time.sleep(0.05)  # blocks the loop: the 10 ms deadline can fire only at the next await
        await anyio.sleep(0.001)  # a real suspension, as when a route awaits its thread
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    guarded = HeavyRequests(busy_app, limit=1, timeout=0.01)
    transport = httpx.ASGITransport(app=heavy_route(guarded))
    async with httpx.AsyncClient(transport=transport, base_url="http://g") as c:
        response = await c.post("/v1/loss", content=b"{}")
        assert "not computed within 0.01 s" in problem(response, 504)["detail"]
        assert guarded.busy == 0


async def test_the_slot_is_claimed_by_a_last_message_that_leaves_out_more_body() -> None:
    from service.server.api.guards.heavy import HeavyRequests
    from service.server.api.guards.slots import Slot

    recorder = Recorder()
    guarded = HeavyRequests(recorder, limit=1, timeout=5)
    await drive(heavy_route(guarded), [{"type": "http.request", "body": b"{}"}], [])
    assert isinstance(recorder.state.slot, Slot)
    assert guarded.busy == 0
