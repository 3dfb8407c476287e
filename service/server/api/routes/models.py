"""Delayed labels: configure a model, log its predictions now and its labels when they arrive;
each pair's losses are computed once, when its second half arrives. Routes parse and hand over
to the use cases (`service.usecases.models` and `ingest`); the store's I/O always runs in a
worker thread, among the store's own (`upkeep.StoreThreads`: reads apart from writes, both apart
from anyio's default pool)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Generator
from typing import Annotated, Any

from fastapi import Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from service.engine.calibration import MAX_BINS
from service.server.api.accept import negotiated
from service.server.api.access import authorize, visible
from service.server.api.batches import off_loop
from service.server.api.body import json_decoded_bytes, read_body, validate_json
from service.server.api.config_schemas import ModelConfig, ModelList, ModelStatus, model_config_request_model
from service.server.api.headers import request_header
from service.server.api.history_schemas import History
from service.server.api.inference_logs import EVENT_MEDIA_TYPES, read_event
from service.server.api.model_schemas import EventResult, LabelsLog, LogResult, PredictionsLog
from service.server.api.policy import RoutePolicy, context_of
from service.server.api.responses import PROBLEM_RESPONSES, json_body, json_response
from service.server.api.routing import Routes
from service.server.api.schemas import MODEL_LABEL_PATTERN
from service.store import Side, Store
from service.usecases import events, export, history, ingest, upkeep
from service.usecases import models as model_cases

routes = Routes("/v1/models", tags=["delayed labels"])
READ = RoutePolicy(scope="read", model_param="model")
# A model's configuration is parsed as a loss request is: its parse holds its estimate.
CONFIGURE = RoutePolicy(scope="admin", heavy=True, model_param="model")
DELETE = RoutePolicy(scope="admin", model_param="model")
INGEST = RoutePolicy(scope="ingest", heavy=True, model_param="model")

ModelName = Annotated[
    str, Path(pattern=MODEL_LABEL_PATTERN, description="The model's name (1-64 of A-Z a-z 0-9 _ . : -).")
]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "No such model",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
}
TOO_MANY_PENDING: dict[int | str, dict[str, Any]] = {
    429: {
        "description": "The model already holds LOSS_SERVICE_MAX_PENDING rows waiting for their other half, or the "
        "API key's models would hold more than its quota max_stored_bytes (no Retry-After: waiting frees nothing)",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
}
MODEL_QUOTA: dict[int | str, dict[str, Any]] = {
    429: {
        "description": "Creating the model would give the API key more models than its quota max_models (no "
        "Retry-After: waiting frees nothing)",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
}
SEGMENTS_KEPT: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "The configuration would remove a segment key the model's history is kept by",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
}
FOLLOWED: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "Other models take their labels from this one (labels_from): the problem names them",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
}
FOLLOWS: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "The model takes its labels from another (labels_from): log them for that one",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
}
CONFIG_EXAMPLES = {
    "fraud": {
        "losses": [
            {"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True}},
            {"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True, "label_smoothing": 0.1}},
        ],
        "convention": "torch",
        "dtype": "float32",
        "retention_seconds": 604800,
    }
}
PREDICTION_EXAMPLES = {
    "two": {"ids": ["tx-1", 2], "predictions": [[2.0, -1.0, 0.5], [0.1, 1.2, 0.3]], "timestamps": [1.7e9, 1.7e9]}
}
LABEL_EXAMPLES = {"two": {"ids": ["tx-1", 2], "labels": [0, 1]}}


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


@routes.put(
    "/{model}",
    policy=CONFIGURE,
    summary="Configure a model: the losses to compute when its pairs join",
    response_model=ModelConfig,
    responses={**PROBLEM_RESPONSES, **MODEL_QUOTA, **SEGMENTS_KEPT},
    openapi_extra=json_body("ModelConfigRequest", CONFIG_EXAMPLES),
)
async def configure_model(model: ModelName, request: Request) -> Response:
    _, body = await read_body(request)
    store, settings = store_of(request), request.app.state.settings
    context = context_of(request.scope)
    quota = model_cases.quota_of(context.principal, settings)
    threads = upkeep.store_threads(request.app.state)
    result = await off_loop(
        request,
        len(body),
        lambda: json_decoded_bytes(body),
        lambda: model_cases.configure(
            store,
            model,
            validate_json(model_config_request_model(), body),
            time.time(),
            quota,
            lambda other: authorize(context.principal, other),
        ),
        waits_on_io=True,
        limiter=threads.writes,
    )
    await _report_usage(request)
    return json_response(result)


async def _report_usage(request: Request) -> None:
    """Every key's quota usage into /metrics after a model is created or deleted (a key's own
    writes report its usage as they commit; the retention sweep reports every key's). The change
    is committed: a store that fails now leaves the gauge to the next report, not the answer."""
    app = request.app
    store = store_of(request)
    try:
        await upkeep.store_threads(app.state).read(
            lambda: model_cases.report_usage(store, app.state.monitor, app.state.keys, app.state.settings)
        )
    except Exception as exc:
        ingest.log.warning("quota usage not reported after a change to the models: %s", exc)


@routes.get("", policy=READ, summary="The configured models (those the API key may use)", response_model=ModelList)
async def list_models(request: Request) -> Response:
    models = await upkeep.store_threads(request.app.state).read(store_of(request).models)
    allowed = set(visible(context_of(request.scope).principal, [m.name for m in models]))
    return json_response({"models": [model_cases.model_config(m) for m in models if m.name in allowed]})


@routes.get(
    "/{model}",
    policy=READ,
    summary="A model's configuration and its counts of pending, joined and expired rows",
    response_model=ModelStatus,
    responses={**PROBLEM_RESPONSES, **NOT_FOUND},
)
async def model_status(model: ModelName, request: Request) -> Response:
    store, settings = store_of(request), request.app.state.settings
    principal = context_of(request.scope).principal
    threads = upkeep.store_threads(request.app.state)
    return json_response(
        await threads.read(lambda: model_cases.model_status(store, model, time.time(), principal, settings))
    )


@routes.delete(
    "/{model}",
    policy=DELETE,
    summary="Remove a model and everything stored for it",
    status_code=204,
    response_class=Response,
    responses={**PROBLEM_RESPONSES, **NOT_FOUND, **FOLLOWED},
)
async def delete_model(model: ModelName, request: Request) -> Response:
    if not await upkeep.delete_model(store_of(request), model, upkeep.store_threads(request.app.state)):
        raise model_cases.unknown_model(model)
    request.app.state.monitor.set_pending(model, (0, 0))
    await _report_usage(request)
    return Response(status_code=204)


async def _log(request: Request, model: str, side: Side) -> Response:
    _, body = await read_body(request)
    store, monitor = store_of(request), request.app.state.monitor
    settings = request.app.state.settings
    context = context_of(request.scope)
    schema = PredictionsLog if side == "predictions" else LabelsLog

    def log_rows() -> dict[str, Any]:
        parsed = validate_json(schema, body)
        return ingest.log_rows(store, monitor, settings, model, side, parsed, context, authorize)

    result = await off_loop(
        request,
        len(body),
        lambda: json_decoded_bytes(body),
        log_rows,
        waits_on_io=True,
        limiter=upkeep.store_threads(request.app.state).writes,
    )
    return json_response(result)


@routes.post(
    "/{model}/predictions",
    policy=INGEST,
    summary="Log predictions; those whose labels are waiting join now",
    response_model=LogResult,
    responses={**PROBLEM_RESPONSES, **NOT_FOUND, **TOO_MANY_PENDING},
    openapi_extra=json_body("PredictionsLog", PREDICTION_EXAMPLES),
)
async def log_predictions(model: ModelName, request: Request) -> Response:
    return await _log(request, model, "predictions")


@routes.post(
    "/{model}/labels",
    policy=INGEST,
    summary="Log labels; those whose predictions are waiting join now",
    description="The labels serve every model that takes its labels from this one (labels_from) too, in the same "
    "transaction: `followers` says what they did for each.",
    response_model=LogResult,
    responses={**PROBLEM_RESPONSES, **NOT_FOUND, **TOO_MANY_PENDING, **FOLLOWS},
    openapi_extra=json_body("LabelsLog", LABEL_EXAMPLES),
)
async def log_labels(model: ModelName, request: Request) -> Response:
    return await _log(request, model, "labels")


EVENT_EXAMPLE = {
    "model_name": "churn-v2",
    "id": "b3c1e5a2-4f0e-4f7b-9a57-0d0c3b6f1e2a",
    "outputs": [{"name": "logits", "shape": [2, 1], "datatype": "FP32", "data": [1.2, -0.4]}],
}
EVENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "Binary content mode: the inference's request or response (v1 or v2 protocol JSON) "
                    "as the model received or answered it; the event's attributes are the Ce-* headers (Ce-Id, "
                    "Ce-Type org.kubeflow.serving.inference.request or .response, Ce-Source, Ce-Specversion 1.0, "
                    "Ce-Time).",
                },
                "examples": {"v2 response": {"value": EVENT_EXAMPLE}},
            },
            "application/cloudevents+json": {
                "schema": {
                    "type": "object",
                    "required": ["id", "type", "source", "specversion"],
                    "description": "Structured content mode: the attributes and `data` (or `data_base64`) in one "
                    "object.",
                },
            },
        },
    }
}


@routes.post(
    "/{model}/events",
    policy=INGEST,
    summary="KServe's inference logger: each inference's request and response, as CloudEvents",
    description="Point an InferenceService's `logger` here (`mode: all`). The rows of each inference become "
    "predictions once the halves the model's `events` configuration needs are in: ids `<Ce-Id>:<row>` (or the "
    "configured id input), the prediction the configured output's row. Either half may come first; a repeated "
    "half is a duplicate.",
    response_model=EventResult,
    responses={**PROBLEM_RESPONSES, **NOT_FOUND, **TOO_MANY_PENDING},
    openapi_extra=EVENT_BODY,
)
async def log_event(model: ModelName, request: Request) -> Response:
    media_type, body = await read_body(request, EVENT_MEDIA_TYPES)
    store, monitor = store_of(request), request.app.state.monitor
    settings = request.app.state.settings
    context = context_of(request.scope)

    def log() -> dict[str, Any]:
        event, read_half = read_event(request.scope, media_type, body, settings.max_elements)
        return events.log_event(store, monitor, settings, model, event, read_half, context, authorize)

    result = await off_loop(
        request,
        len(body),
        lambda: json_decoded_bytes(body),
        log,
        waits_on_io=True,
        limiter=upkeep.store_threads(request.app.state).writes,
    )
    return json_response(result)


TIME = "Unix seconds or an RFC 3339 date-time with its offset (2026-01-31T12:00:00Z)."


@routes.get(
    "/{model}/history",
    policy=READ,
    summary="A model's losses, label coverage and label delays by prediction time (and segment)",
    response_model=History,
    response_model_exclude_unset=True,
    responses={**PROBLEM_RESPONSES, **NOT_FOUND},
)
async def model_history(
    model: ModelName,
    request: Request,
    start: Annotated[
        str | None, Query(description=f"{TIME} Default: 24 h before end, floored to a multiple of step.")
    ] = None,
    end: Annotated[str | None, Query(description=f"{TIME} Default: now.")] = None,
    step: Annotated[
        str | None, Query(description="Bucket width in seconds, at least 1 (default 3600); at most 10,000 buckets.")
    ] = None,
    by: Annotated[str | None, Query(description="A declared segment key: one entry per value in each bucket.")] = None,
    calibration: Annotated[
        str | None,
        Query(
            description="true: each bucket gains the calibration of its joined pairs, as POST /v1/calibration answers "
            'it (a model configured with "keep_pairs": true; the rows are read whatever the window). Default false.'
        ),
    ] = None,
    bins: Annotated[str | None, Query(description=f"With calibration: bins, 1 to {MAX_BINS} (default 15).")] = None,
    strategy: Annotated[str | None, Query(description="With calibration: uniform (default) or quantile bins.")] = None,
    from_logits: Annotated[
        str | None,
        Query(
            description="With calibration: true if the stored predictions are logits. Default: the first configured "
            "loss's from_logits option (false where it has none)."
        ),
    ] = None,
) -> Response:
    store = store_of(request)
    threads = upkeep.store_threads(request.app.state)
    return json_response(
        await threads.read(
            lambda: history.history(
                store,
                model,
                start=start,
                end=end,
                step=step,
                by=by,
                calibration=calibration,
                bins=bins,
                strategy=strategy,
                from_logits=from_logits,
            )
        )
    )


EXPORTED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The joined pairs, one row each, streamed in record batches (columns: docs/delayed-labels.md, "
        "'Exporting the pairs'). A store failure after the first batch ends the response without its last chunk.",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in export.MEDIA_TYPES.values()},
    },
    406: {
        "description": "Accept names none of application/vnd.apache.arrow.stream, text/csv, application/x-ndjson",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    },
}


@routes.get(
    "/{model}/pairs",
    policy=READ,
    summary="A model's joined pairs (ids, times, weights, segments, losses, and kept payloads) as Arrow, CSV or NDJSON",
    response_class=StreamingResponse,
    responses={**PROBLEM_RESPONSES, **NOT_FOUND, **EXPORTED},
)
async def model_pairs(
    model: ModelName,
    request: Request,
    start: Annotated[str | None, Query(description=f"{TIME} Default: 24 h before end.")] = None,
    end: Annotated[str | None, Query(description=f"{TIME} Default: now.")] = None,
) -> Response:
    form = negotiated(request_header(request.scope, b"accept"), export.MEDIA_TYPES, "ndjson")
    store = store_of(request)
    threads = upkeep.store_threads(request.app.state)
    found = await threads.read(lambda: export.pairs(store, model, start=start, end=end, form=form))
    return StreamingResponse(_streamed(threads, found.chunks), media_type=found.media_type)


async def _streamed(threads: upkeep.StoreThreads, chunks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
    """Each chunk read on a store thread, one batch at a time: the event loop never waits on the
    store, and memory holds the batch being sent."""
    try:
        while True:
            chunk = await threads.read(lambda: next(chunks, None))
            if chunk is None:
                return
            yield chunk
    finally:
        chunks.close()  # no thread runs it now: a read in flight is waited for, never abandoned
