"""Computing a validated batch's losses: the engine's call, what it holds of memory and of a key's
value budget, and the batch recorded in the loss metrics. The result is the engine's `LossResult`
(`service.values.results`), which writes its own answer (`LossResult.answer`).

Shared by /v1/loss, /v1/evaluate and the Open Inference Protocol (HTTP and gRPC), so they cannot
drift apart. A batch is any validated request with `predictions`, `labels`, `sample_weight`,
`dtype`, `convention` and `chunk` (the API's `Batch` models).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel

from service.engine import LIBRARIES, LossResult, compute, loss_name, resolve, working_bytes
from service.usecases.recorder import Recorder


def compute_loss(batch: Any, loss: str, options: BaseModel) -> tuple[str, LossResult]:
    """One loss over a validated batch: its name (`loss_name`) and result.

    A library metric gets only the options given: its defaults, and those its name sets
    (`error@0.7`), are the engine's to fill."""
    library = batch.convention in LIBRARIES
    # A catalogue loss's options model holds every option, each a plain value (number, string,
    # list or dict of numbers, no model), so its fields are what `model_dump()` would copy out.
    given = options.model_dump(exclude_unset=True) if library else dict(options.__dict__)
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
        inputs_finite=True,  # the batch's arrays were searched as they were validated (the API's NumericArray)
    )
    return name, reduced


# An answer's per-sample value: the float64 array and its JSON text (orjson writes up to 24 characters).
ANSWER_BYTES_PER_VALUE = 32


def compute_bytes(batch: Any, losses: int = 1) -> int:
    """What computing `losses` losses over a validated batch holds at most: its arrays, the
    engine's working arrays (one loss at a time) and every loss's per-sample answer."""
    elements = int(batch.predictions.size)
    weight = batch.sample_weight
    arrays = int(batch.predictions.nbytes + batch.labels.nbytes + (0 if weight is None else weight.nbytes))
    return arrays + working_bytes(elements, batch.dtype) + losses * elements * ANSWER_BYTES_PER_VALUE


def request_values(batch: Any) -> int:
    """Numbers in predictions and labels: what a key's values-per-second budget counts."""
    return int(batch.predictions.size + batch.labels.size)


# Set in a worker thread's context: the event is set once its request stopped waiting (504).
_abandoned: ContextVar[threading.Event | None] = ContextVar("abandoned", default=None)


@contextmanager
def abandoned_when(event: threading.Event) -> Iterator[None]:
    """The work in this block belongs to a request that gives up waiting when `event` is set."""
    token = _abandoned.set(event)
    try:
        yield
    finally:
        _abandoned.reset(token)


def record_batch(monitor: Recorder, model: str | None, name: str, reduced: LossResult) -> None:
    """Observe a computed batch in the loss metrics, unless its request already answered 504:
    that client never saw these losses and will likely send the same batch again."""
    abandoned = _abandoned.get()
    if abandoned is None or not abandoned.is_set():
        monitor.observe_batch(model, name, reduced.per_sample, reduced.mean)
