"""Delayed labels: configure a model, log its predictions now and its labels when they arrive;
each pair's losses are computed once, when its second half arrives. Here, the configuration
routes (put, list, read and delete a model: `service.usecases.models`) and what every route under
/v1/models shares: the model's path parameter, its 404, the read policy, the store.

The routes that log rows stand in `model_logs`, those that read a model's history and pairs in
`model_reads`, the comparison of two models in `comparisons`. Routes parse and hand over to the
use cases; the store's I/O always runs in a worker thread, among the store's own
(`upkeep.StoreThreads`: reads apart from writes, both apart from anyio's default pool)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.responses import Response

from service.server.api.access import authorize, visible
from service.server.api.batches import off_loop
from service.server.api.body import json_decoded_bytes, read_body, validate_json
from service.server.api.config_schemas import ModelConfig, ModelList, ModelStatus, model_config_request_model
from service.server.api.policy import RoutePolicy, context_of
from service.server.api.responses import PROBLEM_RESPONSES, json_body, json_response
from service.server.api.routing import Routes
from service.server.api.schemas import MODEL_LABEL_PATTERN
from service.store import Store
from service.usecases import ingest, upkeep
from service.usecases import models as model_cases

routes = Routes("/v1/models", tags=["delayed labels"])
READ = RoutePolicy(scope="read", model_param="model")
# A model's configuration is parsed as a loss request is: its parse holds its estimate.
CONFIGURE = RoutePolicy(scope="admin", heavy=True, model_param="model")
DELETE = RoutePolicy(scope="admin", model_param="model")

ModelName = Annotated[
    str, Path(pattern=MODEL_LABEL_PATTERN, description="The model's name (1-64 of A-Z a-z 0-9 _ . : -).")
]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "No such model",
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

TIME = "Unix seconds or an RFC 3339 date-time with its offset (2026-01-31T12:00:00Z)."


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
