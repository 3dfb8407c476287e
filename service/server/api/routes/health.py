"""Liveness and readiness probes.

Neither waits for a thread of the store's (`upkeep.StoreThreads`) or of anyio's default pool:
/livez answers on the event loop, and /readyz probes the store in a thread of its own, waiting at
most PROBE_WAIT for it. A worker whose threads all wait on the database still answers both.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.server.api.policy import OPEN
from service.server.api.routing import Routes

routes = Routes(tags=["health"])

# Seconds between probes of the store from /readyz, by the store's status. A full disk is probed
# as often as its Retry-After: on PostgreSQL the probe is a write that changes nothing, which may
# succeed while new rows still find no room.
PROBE_INTERVAL = {"ok": 5.0, "unavailable": 1.0, "full": 30.0}
# Longest /readyz waits for a probe it started (at most the store's timeout): the probe goes on
# in its thread, and a later /readyz reports what it found. Under Kubernetes' default 1 s timeout.
PROBE_WAIT = 0.8


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    store: str | None = None
    reason: str | None = None


@routes.get("/livez", policy=OPEN, response_model=Health, summary="The process is up")
@routes.get("/healthz", policy=OPEN, response_model=Health, summary="Alias of /livez")
async def livez() -> JSONResponse:
    return JSONResponse({"status": "ok"})


class StoreProbe:
    """Probes of the store for /readyz: at most one at a time, in a thread of its own (never the
    thread pool the requests' store operations queue in), at most once per PROBE_INTERVAL."""

    def __init__(self, database: Any) -> None:
        self.database = database
        self._done: asyncio.Event | None = None

    async def run(self) -> None:
        health = self.database.health
        interval = PROBE_INTERVAL[health.status]
        if self._done is None and time.monotonic() - health.last_probe >= interval:
            health.last_probe = time.monotonic()
            done, loop = asyncio.Event(), asyncio.get_running_loop()
            self._done = done

            def probe() -> None:
                try:
                    self.database.probe()
                finally:
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
                        loop.call_soon_threadsafe(self._finished, done)

            threading.Thread(target=probe, name="loss-service-store-probe", daemon=True).start()
        if self._done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), min(PROBE_WAIT, self.database.timeout))

    def _finished(self, done: asyncio.Event) -> None:
        done.set()
        if self._done is done:
            self._done = None


@routes.get(
    "/readyz",
    policy=OPEN,
    response_model=Readiness,
    summary="Ready to serve: 200 once started, 503 while starting, draining, or while the store cannot write",
    responses={
        503: {
            "model": Readiness,
            "description": "Starting or draining; or the store's disk is full (`store`: full) or the database "
            "cannot be reached (`store`: unavailable), with the reason",
        }
    },
)
async def readyz(request: Request) -> JSONResponse:
    state: str = request.app.state.lifecycle
    store = getattr(request.app.state, "store", None)
    if state != "ready" or store is None:
        return JSONResponse({"status": state}, status_code=503)
    probe = getattr(request.app.state, "store_probe", None)
    if probe is None or probe.database is not store.database:
        probe = request.app.state.store_probe = StoreProbe(store.database)
    await probe.run()
    health = store.database.health
    if health.status != "ok":
        return JSONResponse({"status": "unready", "store": health.status, "reason": health.reason}, status_code=503)
    return JSONResponse({"status": "ready"})
