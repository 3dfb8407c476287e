"""Delayed labels, logging: a model's predictions, its labels, and KServe's inference logger's
CloudEvents, each parsed and stored by `service.usecases.ingest` or `events` in one of the store's
write threads, off the event loop."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from service.server.api.access import authorize
from service.server.api.batches import off_loop
from service.server.api.body import json_decoded_bytes, read_body, validate_json
from service.server.api.inference_logs import EVENT_MEDIA_TYPES, read_event
from service.server.api.model_schemas import EventResult, LabelsLog, LogResult, PredictionsLog
from service.server.api.policy import RoutePolicy, context_of
from service.server.api.responses import PROBLEM_RESPONSES, json_body, json_response
from service.server.api.routes.models import NOT_FOUND, ModelName, store_of
from service.server.api.routing import Routes
from service.store import Side
from service.usecases import events, ingest, upkeep

routes = Routes("/v1/models", tags=["delayed labels"])
INGEST = RoutePolicy(scope="ingest", heavy=True, model_param="model")

TOO_MANY_PENDING: dict[int | str, dict[str, Any]] = {
    429: {
        "description": "The model already holds LOSS_SERVICE_MAX_PENDING rows waiting for their other half, or the "
        "API key's models would hold more than its quota max_stored_bytes (no Retry-After: waiting frees nothing)",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
}
FOLLOWS: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "The model takes its labels from another (labels_from): log them for that one",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
}
PREDICTION_EXAMPLES = {
    "two": {"ids": ["tx-1", 2], "predictions": [[2.0, -1.0, 0.5], [0.1, 1.2, 0.3]], "timestamps": [1.7e9, 1.7e9]}
}
LABEL_EXAMPLES = {"two": {"ids": ["tx-1", 2], "labels": [0, 1]}}


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
