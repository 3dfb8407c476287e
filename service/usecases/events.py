"""KServe's inference logger as a source of predictions: each inference's request and response
arrive as two CloudEvents sharing one id, in either order; the rows of the inference become
predictions once the halves the model's `events` configuration needs are in.

The HTTP layer reads the CloudEvent (`Event`) and hands over a function that reads the half it
carries (`RequestHalf`, `ResponseHalf`) from the event's data under the model's `events`
configuration. Where the response alone gives every row's id (`"id": "ce-id"`, no segments), a
response is logged at once as POST .../predictions logs rows, and a request event keeps nothing.
Otherwise the first half waits in the store (`Store.log_event`) and the second completes the
event: both halves' rows are logged in the transaction that drops the waiting half, so an event
is logged whole or not at all, and a repeated half (the logger's, or a proxy's, retry) is a
duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from service.config import Settings
from service.store import DTYPES, REQUEST, RESPONSE, EventBounds, EventCounts, EventRows, Model, Store
from service.usecases import estimate_fit, ingest, models
from service.usecases.errors import InvalidInputError
from service.usecases.recorder import Recorder
from service.values.text import shown

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
CE_ID = "ce-id"
MAX_ID_LENGTH = 128
_CODES = {dtype: code for code, dtype in DTYPES.items()}

Segments = dict[str, list[str | None]]


@dataclass(frozen=True)
class Event:
    """A CloudEvent of the logger, as the HTTP layer read it: its id, which half of the
    inference it carries, and its time (`Ce-Time`, Unix seconds; None when absent)."""

    id: str
    kind: Literal["request", "response"]
    time: float | None


@dataclass(frozen=True)
class RequestHalf:
    """What the model's `events` configuration needs of an inference request: one id per row
    (`ids`), or one id for the inference (`base`: rows are `<base>:<row>`; None: the event id),
    and each segment's value per row. `rows`: the rows these give, None when none does."""

    rows: int | None
    ids: list[str] | None
    base: str | None
    segments: Segments


@dataclass(frozen=True)
class ResponseHalf:
    """The prediction rows of an inference response (first axis: the batch) and their time."""

    predictions: np.ndarray[Any, Any]
    at: float | None = None


Half = RequestHalf | ResponseHalf
# Reads the half an event carries from its data, given the model's `events` configuration.
ReadHalf = Callable[[dict[str, Any]], Half]


@dataclass(frozen=True)
class PredictionRows:
    """An inference's rows as POST .../predictions takes them (`ingest.log_rows`)."""

    ids: list[str]
    predictions: np.ndarray[Any, Any]
    timestamps: np.ndarray[Any, Any]
    segments: Segments


def needs_request(config: dict[str, Any]) -> bool:
    """Whether an event's rows need its request: for ids other than the event id, or segments."""
    return config["id"] != CE_ID or bool(config["segments"])


def log_event(
    store: Store,
    monitor: Recorder,
    settings: Settings,
    name: str,
    event: Event,
    read_half: ReadHalf,
    caller: ingest.Caller,
    authorize: ingest.Authorize,
) -> dict[str, Any]:
    """One CloudEvent of KServe's inference logger for model `name` (see the module's docstring)."""
    model = store.model(name)
    if model is None:
        raise models.unknown_model(name)
    caller.model = name
    config = _events_config(model, name)
    half = read_half(config)
    now = time.time()
    if not needs_request(config):
        return _log_response_alone(store, monitor, settings, name, event, half, now, caller, authorize)
    if isinstance(half, ResponseHalf):
        half = _timed(half, event, now)
    principal = caller.principal
    meta, payload = _encoded(half)
    bounds = EventBounds(settings.event_max_pending, settings.event_max_pending_bytes, settings.event_ttl)
    with ingest.store_errors(name, "predictions"):
        logged = store.log_event(
            name,
            event.id,
            REQUEST if isinstance(half, RequestHalf) else RESPONSE,
            meta,
            payload,
            now=now,
            bounds=bounds,
            max_pending=settings.max_pending,
            complete=_completion(event, half, settings, caller, principal, authorize),
            quota=models.quota_of(principal, settings),
        )
    if logged.outcome != "completed":
        return _answer(event, logged.outcome, None, logged.events)
    assert logged.logged is not None
    estimate_fit.after_log(store, logged.logged, now)
    answer = ingest.recorded(monitor, name, "predictions", logged.logged, principal)
    return _answer(event, "logged", answer, logged.events)


def _events_config(model: Model, name: str) -> dict[str, Any]:
    """The model's `events` configuration: without it, nothing says where an inference's
    predictions are, so the error names the PUT that adds one."""
    config: dict[str, Any] | None = model.config.get("events")
    if config is None:
        message = (
            f"model {shown(name)} has no `events` configuration, which says where its predictions are in an "
            f"inference; PUT /v1/models/{name} with one"
        )
        raise InvalidInputError("events", message, detail=message)
    return config


def _log_response_alone(
    store: Store,
    monitor: Recorder,
    settings: Settings,
    name: str,
    event: Event,
    half: Half,
    now: float,
    caller: ingest.Caller,
    authorize: ingest.Authorize,
) -> dict[str, Any]:
    """An event whose response gives every row's id: a response logged at once, as POST
    .../predictions logs rows, and a request kept nowhere, since no row needs it."""
    if isinstance(half, RequestHalf):
        return _answer(event, "not_needed", None, _counts(store, name))
    rows = _rows(event, None, _timed(half, event, now))
    caller.batch_size = len(rows.ids)
    answer = ingest.log_rows(store, monitor, settings, name, "predictions", rows, caller, authorize)
    return _answer(event, "logged", answer, _counts(store, name))


def _completion(
    event: Event,
    half: Half,
    settings: Settings,
    caller: ingest.Caller,
    principal: models.Principal | None,
    authorize: ingest.Authorize,
) -> Callable[[Model, int, str, bytes | None], EventRows[Any]]:
    """What the store calls when `half` meets its waiting other half: both halves' rows, checked
    as POST .../predictions checks them, inside the transaction that drops the waiting half."""

    def complete(model: Model, other: int, meta: str, payload: bytes | None) -> EventRows[Any]:
        waiting = _decoded(other, meta, payload)
        request, response = (half, waiting) if isinstance(half, RequestHalf) else (waiting, half)
        assert isinstance(request, RequestHalf)
        assert isinstance(response, ResponseHalf)
        rows = _rows(event, request, response)
        caller.batch_size = len(rows.ids)
        stored = ingest.checked_rows(rows.predictions, "predictions", model, principal, settings, authorize)
        on_join = ingest.pair_losses("predictions", rows.ids)
        return EventRows(rows.ids, stored, rows.timestamps.tolist(), on_join, rows.segments, ingest.history_of)

    return complete


def _timed(half: Half, event: Event, now: float) -> ResponseHalf:
    """A response's rows with their time: the event's `Ce-Time`, else its arrival."""
    assert isinstance(half, ResponseHalf)
    return ResponseHalf(half.predictions, event.time if event.time is not None else now)


def _rows(event: Event, request: RequestHalf | None, response: ResponseHalf) -> PredictionRows:
    """The inference's prediction rows under their ids, with the request's segments."""
    count = response.predictions.shape[0]
    if count == 0:
        raise InvalidInputError("outputs", "the response holds no rows of predictions: nothing to log")
    if request is not None and request.rows is not None and request.rows != count:
        raise InvalidInputError(
            "outputs",
            f"the response holds {count} rows of predictions and its request {request.rows} rows; one prediction "
            f"per row of the inference (event {shown(event.id)}); nothing of this event was logged",
        )
    if request is not None and request.ids is not None:
        ids = request.ids
    else:
        base = event.id if request is None or request.base is None else request.base
        ids = [f"{base}:{row}" for row in range(count)]
        if count and len(ids[-1]) > MAX_ID_LENGTH:
            raise InvalidInputError(
                "id",
                f"the prediction id {shown(ids[-1])} has {len(ids[-1])} characters; ids have at most {MAX_ID_LENGTH}",
            )
    segments = {} if request is None else request.segments
    assert response.at is not None
    timestamps = np.full(count, response.at, dtype=np.float64)
    return PredictionRows(ids, response.predictions, timestamps, segments_for_predictions(segments, count))


def segments_for_predictions(segments: Segments, count: int) -> Segments:
    """The `segments` of POST .../predictions for an inference's `count` rows: key -> one value per
    row (every key of the model's `events.segments`, each list as long as the rows)."""
    for key, values in segments.items():
        if len(values) != count:
            raise InvalidInputError(
                "segments",
                f"segment {shown(key)} has {len(values)} values and the inference {count} rows; one value per row",
            )
    return segments


def _encoded(half: Half) -> tuple[str, bytes | None]:
    """A half as the store keeps it while it waits: JSON, and a response's rows as raw bytes."""
    if isinstance(half, RequestHalf):
        kept = {"rows": half.rows, "ids": half.ids, "base": half.base, "segments": half.segments}
        return orjson.dumps(kept).decode(), None
    rows = np.ascontiguousarray(half.predictions)
    if rows.dtype not in _CODES:  # FP16, INT8..UINT32, BOOL: widened exactly
        rows = rows.astype(np.float64 if rows.dtype.kind == "f" else np.int64)
    meta = {"shape": list(rows.shape), "dtype": _CODES[rows.dtype], "at": half.at}
    return orjson.dumps(meta).decode(), rows.tobytes()


def _decoded(half: int, meta: str, payload: bytes | None) -> Half:
    found = orjson.loads(meta)
    if half == REQUEST:
        return RequestHalf(found["rows"], found["ids"], found["base"], found["segments"])
    rows = np.frombuffer(payload or b"", dtype=DTYPES[found["dtype"]]).reshape(found["shape"])
    return ResponseHalf(rows, found["at"])


def _counts(store: Store, name: str) -> EventCounts:
    counts = store.event_counts(name)
    if counts is None:
        raise models.unknown_model(name)
    return counts


def _answer(event: Event, outcome: str, log: dict[str, Any] | None, counts: EventCounts) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.kind,
        "outcome": outcome,
        "log": log,
        "events": {"pending": counts.pending, "pending_bytes": counts.pending_bytes, "expired": counts.expired},
    }
