"""What every loss route does once its body is validated: run the engine, record the batch.

Shared by /v1/loss and the Open Inference Protocol routes so they cannot drift apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Request
from pydantic import BaseModel

from service.api.access import authorize
from service.api.guards import HEAVY_SLOT, Slot
from service.engine import LIBRARIES, Reduced, compute, loss_name, resolve, working_bytes
from service.monitoring import Monitor


def compute_loss(batch: Any, loss: str, options: BaseModel) -> tuple[str, Reduced]:
    """One loss over a validated batch (any `Batch` model): its name (`loss_name`) and result.

    A library metric gets only the options given: its defaults, and those its name sets
    (`error@0.7`), are the engine's to fill."""
    library = batch.convention in LIBRARIES
    given = options.model_dump(exclude_unset=library)
    name = loss_name(loss, batch.convention, given) if library else resolve(loss).name
    reduced = compute(
        loss if library else name,
        batch.predictions,
        batch.labels,
        options=given,
        sample_weight=batch.sample_weight,
        dtype=batch.dtype,
        convention=batch.convention,
        chunk=batch.chunk,
        inputs_finite=True,  # the batch's arrays were searched as they were validated (NumericArray)
    )
    return name, reduced


def run_loss(request: Any, monitor: Monitor, log: dict[str, Any] | None = None) -> tuple[str, Reduced]:
    """Compute a validated loss request (a generated `<Loss>Request` model) and record it.

    `log`: the request's scope state, where the access log finds model, loss and batch size, and
    where the request's API key is checked for the model and its value budget.
    """
    authorize(log, request.model, request_values(request))
    reserve(log, compute_bytes(request), "this request")
    name, reduced = compute_loss(request, request.loss, request.options)
    record_batch(monitor, request.model, name, reduced)
    if log is not None:
        log.update(model=request.model, loss=name, batch_size=len(request.predictions))
    return name, reduced


# An answer's per-sample value: the float64 array and its JSON text (orjson writes up to 24 characters).
ANSWER_BYTES_PER_VALUE = 32


def compute_bytes(batch: Any, losses: int = 1) -> int:
    """What computing `losses` losses over a validated batch holds at most: its arrays, the
    engine's working arrays (one loss at a time) and every loss's per-sample answer."""
    elements = int(batch.predictions.size)
    arrays = sum(array.nbytes for array in (batch.predictions, batch.labels, batch.sample_weight) if array is not None)
    return int(arrays) + working_bytes(elements, batch.dtype) + losses * elements * ANSWER_BYTES_PER_VALUE


def reserve(state: dict[str, Any] | None, nbytes: int, purpose: str) -> None:
    """Hold `nbytes` of the worker's memory budget for the request whose scope state this is
    (see `Slot.reserve`); requests outside the heavy-request guard hold none."""
    slot: Slot | None = (state or {}).get(HEAVY_SLOT)
    if slot is not None:
        slot.reserve(nbytes, purpose)


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
    state = request.scope.setdefault("state", {})
    offload = request.app.state.settings.offload_bytes
    counted = decoded() if size <= offload and not waits_on_io else None
    if counted is not None and counted * (losses() if losses is not None else 1) <= offload:
        reserve(state, counted, "parsing this body")
        return work()

    def parsing_reserved() -> Any:
        # Counted on the loop already for a small body; a large one is counted here, off the loop.
        reserve(state, counted if counted is not None else decoded(), "parsing this body")
        return work()

    slot: Slot | None = state.get(HEAVY_SLOT)
    if slot is None:
        return await anyio.to_thread.run_sync(parsing_reserved, limiter=limiter)
    slot.hold()
    releaser = threading.Lock()  # taken once: by the thread as it starts, or by the request
    abandoned = threading.Event()

    def holding_the_slot() -> Any:
        if not releaser.acquire(blocking=False):
            return None  # the request already gave up and released the hold
        token = _abandoned.set(abandoned)
        try:
            return parsing_reserved()
        finally:
            _abandoned.reset(token)
            slot.release()

    try:
        return await anyio.to_thread.run_sync(holding_the_slot, abandon_on_cancel=True, limiter=limiter)
    except BaseException:
        abandoned.set()  # cancelled by the deadline
        raise
    finally:
        if releaser.acquire(blocking=False):
            slot.release()  # no thread started the work, and none will
