"""What every loss route does once its body is validated: run the engine, record the batch.

Shared by /v1/loss and the Open Inference Protocol routes so they cannot drift apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import anyio.to_thread
from fastapi import Request
from pydantic import BaseModel

from service.api.access import authorize
from service.api.guards import HEAVY_SLOT, Slot
from service.engine import Reduced, compute, resolve
from service.monitoring import Monitor


def compute_loss(batch: Any, loss: str, options: BaseModel) -> tuple[str, Reduced]:
    """One loss over a validated batch (any `Batch` model): its catalogue name and result."""
    name = resolve(loss).name
    reduced = compute(
        name,
        batch.predictions,
        batch.labels,
        options=options.model_dump(),
        sample_weight=batch.sample_weight,
        dtype=batch.dtype,
        convention=batch.convention,
        chunk=batch.chunk,
    )
    return name, reduced


def run_loss(request: Any, monitor: Monitor, log: dict[str, Any] | None = None) -> tuple[str, Reduced]:
    """Compute a validated loss request (a generated `<Loss>Request` model) and record it.

    `log`: the request's scope state, where the access log finds model, loss and batch size, and
    where the request's API key is checked for the model and its value budget.
    """
    authorize(log, request.model, request_values(request))
    name, reduced = compute_loss(request, request.loss, request.options)
    record_batch(monitor, request.model, name, reduced)
    if log is not None:
        log.update(model=request.model, loss=name, batch_size=len(request.predictions))
    return name, reduced


def request_values(batch: Any) -> int:
    """Numbers in predictions and labels: what a key's values-per-second budget counts."""
    return int(batch.predictions.size + batch.labels.size)


# Set in a worker thread's context: the event is set once its request stopped waiting (504).
_abandoned: ContextVar[threading.Event | None] = ContextVar("abandoned", default=None)


def record_batch(monitor: Monitor, model: str | None, name: str, reduced: Reduced) -> None:
    """Observe a computed batch in the loss metrics, unless its request already answered 504:
    that client never saw these losses and will likely send the same batch again."""
    abandoned = _abandoned.get()
    if abandoned is None or not abandoned.is_set():
        monitor.observe_batch(model, name, reduced.per_sample, reduced.mean)


async def off_loop(request: Request, size: int, work: Callable[[], Any], *, waits_on_io: bool = False) -> Any:
    """Large bodies are parsed and computed in a worker thread so the event loop keeps serving;
    so is any work that `waits_on_io` (a database), whatever its size.

    A request that times out stops waiting for its thread, which cannot be interrupted; the
    thread keeps the request's concurrency slot until it is done, and does not record its batch
    in the loss metrics (unless it was already recording when the deadline passed). Work
    abandoned before any thread picked it up never runs (anyio drops it), so then the request
    gives the slot back.
    """
    if size <= request.app.state.settings.offload_bytes and not waits_on_io:
        return work()
    slot: Slot | None = request.scope.get("state", {}).get(HEAVY_SLOT)
    if slot is None:
        return await anyio.to_thread.run_sync(work)
    slot.hold()
    releaser = threading.Lock()  # taken once: by the thread as it starts, or by the request
    abandoned = threading.Event()

    def holding_the_slot() -> Any:
        if not releaser.acquire(blocking=False):
            return None  # the request already gave up and released the hold
        token = _abandoned.set(abandoned)
        try:
            return work()
        finally:
            _abandoned.reset(token)
            slot.release()

    try:
        return await anyio.to_thread.run_sync(holding_the_slot, abandon_on_cancel=True)
    except BaseException:
        abandoned.set()  # cancelled by the deadline
        raise
    finally:
        if releaser.acquire(blocking=False):
            slot.release()  # no thread started the work, and none will
