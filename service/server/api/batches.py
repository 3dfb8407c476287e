"""The HTTP side of a computation: the key's checks and the memory held for a validated batch
around the compute use case (`service.usecases.compute`), and the work run off the event loop
with the request's slot."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Request

from service.engine import LossResult
from service.server.api.access import authorize
from service.server.api.policy import RequestContext, context_of
from service.server.monitoring import Monitor
from service.usecases.compute import abandoned_when, compute_bytes, compute_loss, record_batch, request_values


def run_loss(request: Any, monitor: Monitor, context: RequestContext) -> tuple[str, LossResult]:
    """Compute a validated loss request (a generated `<Loss>Request` model) and record it.

    `context`: the request's, where the access log finds model, loss and batch size, and whose
    API key is checked for the model and its value budget.
    """
    authorize(context.principal, request.model, request_values(request))
    reserve(context, compute_bytes(request), "this request")
    name, reduced = compute_loss(request, request.loss, request.options)
    record_batch(monitor, request.model, name, reduced)
    context.model, context.loss, context.batch_size = request.model, name, len(request.predictions)
    return name, reduced


def reserve(context: RequestContext, nbytes: int, purpose: str) -> None:
    """Hold `nbytes` of the worker's memory budget for the request whose context this is (see
    `Slot.reserve`); requests outside the heavy-request guard hold none."""
    slot = context.slot
    if slot is not None:
        slot.reserve(nbytes, purpose)


async def off_loop(
    request: Request,
    size: int,
    decoded: Callable[[], int],
    work: Callable[[], Any],
    *,
    losses: Callable[[], int] | None = None,
    waits_on_io: bool = False,
    limiter: anyio.CapacityLimiter | None = None,
) -> Any:
    """Run `work` (parse a body of `size` bytes, then compute) with the memory that parsing needs,
    `decoded()` bytes, held from the worker's budget; in a worker thread, so the event loop keeps
    serving, when the decoded body times its `losses()` is larger than `offload_bytes`, and
    whenever the work `waits_on_io` (a database). `limiter`: the threads to run it among
    (default: anyio's default pool).

    The decision is by decoded size, not body size: a small compressed npz or a short
    /v1/evaluate body with many losses is heavy work. Bodies larger than `offload_bytes` go to
    the thread without being counted on the loop.

    A request that times out stops waiting for its thread, which cannot be interrupted; the
    thread keeps the request's concurrency slot until it is done, and does not record its batch
    in the loss metrics (unless it was already recording when the deadline passed). Work
    abandoned before any thread picked it up never runs (anyio drops it), so then the request
    gives the slot back.
    """
    context = context_of(request.scope)
    offload = request.app.state.settings.offload_bytes
    counted = decoded() if size <= offload and not waits_on_io else None
    if counted is not None and counted * (losses() if losses is not None else 1) <= offload:
        reserve(context, counted, "parsing this body")
        return work()

    def parsing_reserved() -> Any:
        # Counted on the loop already for a small body; a large one is counted here, off the loop.
        reserve(context, counted if counted is not None else decoded(), "parsing this body")
        return work()

    slot = context.slot
    if slot is None:
        return await anyio.to_thread.run_sync(parsing_reserved, limiter=limiter)
    slot.hold()
    releaser = threading.Lock()  # taken once: by the thread as it starts, or by the request
    abandoned = threading.Event()

    def holding_the_slot() -> Any:
        if not releaser.acquire(blocking=False):
            return None  # the request already gave up and released the hold
        try:
            with abandoned_when(abandoned):
                return parsing_reserved()
        finally:
            slot.release()

    try:
        return await anyio.to_thread.run_sync(holding_the_slot, abandon_on_cancel=True, limiter=limiter)
    except BaseException:
        abandoned.set()  # cancelled by the deadline
        raise
    finally:
        if releaser.acquire(blocking=False):
            slot.release()  # no thread started the work, and none will
