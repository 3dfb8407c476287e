"""Prometheus exposition."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    summary="Prometheus metrics: request health and per-model loss distributions",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"}},
)
async def metrics(request: Request) -> Response:
    # Rendered in a worker thread, once for all the scrapes that arrive meanwhile: with many models
    # it takes long enough (10 MB, ~1 s) to hold liveness probes past their timeout on the event loop.
    body, media_type = await anyio.to_thread.run_sync(request.app.state.monitor.exposition_shared)
    return Response(body, media_type=media_type)
