"""Liveness and readiness probes.

Both answer on the event loop from the app's state: they never wait for a worker thread, neither
the store's (`ingest.StoreThreads`) nor anyio's default pool, so a worker whose threads all wait
on the database still answers them at once.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


@router.get("/livez", response_model=Health, summary="The process is up")
@router.get("/healthz", response_model=Health, summary="Alias of /livez")
async def livez() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Health,
    summary="Ready to serve: 200 once started, 503 while starting or draining",
    responses={503: {"model": Health, "description": "Starting or draining"}},
)
async def readyz(request: Request) -> JSONResponse:
    state: str = request.app.state.lifecycle
    return JSONResponse({"status": state}, status_code=200 if state == "ready" else 503)
