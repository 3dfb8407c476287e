"""What every loss route does once its body is validated: run the engine, record the batch.

Shared by /v1/loss and the Open Inference Protocol routes so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.to_thread
from fastapi import Request

from service.engine import Reduced, compute, resolve
from service.monitoring import Monitor


def run_loss(request: Any, monitor: Monitor) -> tuple[str, Reduced]:
    """Compute a validated loss request (a generated `<Loss>Request` model) and record it."""
    name = resolve(request.loss).name
    reduced = compute(
        name,
        request.predictions,
        request.labels,
        options=request.options.model_dump(),
        sample_weight=request.sample_weight,
        dtype=request.dtype,
        convention=request.convention,
        chunk=request.chunk,
    )
    monitor.observe_batch(request.model, name, reduced.per_sample, reduced.mean)
    return name, reduced


async def off_loop(request: Request, size: int, work: Callable[[], Any]) -> Any:
    """Large bodies are parsed and computed in a worker thread so the event loop keeps serving."""
    if size > request.app.state.settings.offload_bytes:
        return await anyio.to_thread.run_sync(work)
    return work()
