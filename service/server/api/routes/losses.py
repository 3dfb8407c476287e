"""The v1 loss endpoints, each with its policy. Routes parse, call the engine, and shape the response."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from service.engine import LossInputError, catalogue, libraries, resolve
from service.engine.conventions import Library
from service.server.api.access import authorize
from service.server.api.batches import off_loop, reserve, run_loss
from service.server.api.body import (
    BATCH_MEDIA_TYPES,
    JSON_MEDIA_TYPE,
    NPZ_MEDIA_TYPE,
    decoded_bytes,
    json_decoded_bytes,
    read_body,
    validate_binary,
    validate_json,
)
from service.server.api.catalogue_schemas import Catalogue, LibraryCatalogue, LossInfo, library_metric_info, loss_info
from service.server.api.headers import request_header
from service.server.api.policy import RequestContext, RoutePolicy, context_of
from service.server.api.problems import ProblemError
from service.server.api.responses import PROBLEM_RESPONSES, json_body, json_response
from service.server.api.routing import Routes
from service.server.api.schemas import EvaluateResult, LossResult, evaluate_request_model, loss_request_adapter
from service.server.monitoring import Monitor
from service.usecases.compute import compute_bytes, compute_loss, record_batch, request_values

# Any path under /v1 that no route answers: its 404 is for key holders only.
routes = Routes("/v1", tags=["losses"], unmatched=[("/{rest:path}", RoutePolicy())])
COMPUTE = RoutePolicy(scope="compute", heavy=True)
CATALOGUE = RoutePolicy()  # any valid key

LOSS_EXAMPLES = {
    "sparse_categorical_crossentropy": {
        "loss": "sparse_categorical_crossentropy",
        "predictions": [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]],
        "labels": [1, 2],
        "options": {"from_logits": False},
        "model": "fraud-v3",
    },
    "binary_crossentropy_torch_logits": {
        "loss": "bce",
        "predictions": [[2.0, -1.0], [0.5, 3.0]],
        "labels": [[1, 0], [0, 1]],
        "options": {"from_logits": True, "pos_weight": [2.0, 1.0]},
        "convention": "torch",
        "dtype": "float32",
    },
    "mean_squared_error": {"loss": "mse", "predictions": [[1.0, 2.0], [3.0, 4.0]], "labels": [[1.5, 2.0], [2.0, 4.0]]},
}
EVALUATE_EXAMPLES = {
    "three_losses": {
        "predictions": [[2.0, 0.5, -1.0], [0.1, 1.2, 0.3]],
        "labels": [0, 1],
        "convention": "torch",
        "losses": [
            {"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True}},
            {"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True, "label_smoothing": 0.1}},
        ],
    }
}


def _npz(result: dict[str, Any]) -> Response:
    """The result as an npz archive: arrays, 0-d numbers and 0-d strings (no pickles)."""
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {key: np.asarray(value) for key, value in result.items()}
    np.savez(buffer, **arrays)
    return Response(buffer.getvalue(), media_type=NPZ_MEDIA_TYPE)


def _wants_npz(request: Request) -> bool:
    return NPZ_MEDIA_TYPE in (request_header(request.scope, b"accept") or "")


def _validate(
    schema: Any, body: bytes, monitor: Monitor, limit: int, media_type: str = JSON_MEDIA_TYPE, query: Any = None
) -> Any:
    try:
        if media_type == JSON_MEDIA_TYPE:
            return validate_json(schema, body, limit)
        return validate_binary(schema, media_type, body, query or {}, limit)
    except ProblemError as problem:
        monitor.record_nonfinite(problem.nonfinite_fields)
        raise


def _compute_one(
    body: bytes, monitor: Monitor, limit: int, media_type: str, query: Any, context: RequestContext
) -> dict[str, Any]:
    request = _validate(loss_request_adapter(), body, monitor, limit, media_type, query)
    _, reduced = run_loss(request, monitor, context)
    return reduced.answer()


def _compute_many(body: bytes, monitor: Monitor, limit: int, context: RequestContext) -> dict[str, Any]:
    request = _validate(evaluate_request_model(), body, monitor, limit)
    authorize(context.principal, request.model, request_values(request))
    reserve(context, compute_bytes(request, len(request.losses)), f"this request ({len(request.losses)} losses)")
    results = []
    for position, call in enumerate(request.losses):
        try:
            name, reduced = compute_loss(request, call.loss, call.options)
        except LossInputError as exc:
            if exc.field.startswith("options.") or exc.field == "loss":
                raise LossInputError(f"losses.{position}.{exc.field}", exc.reason, exc.index) from None
            raise
        results.append((name, reduced))
    # Observed only once every loss succeeded, so a refused request leaves no partial trace.
    for name, reduced in results:
        record_batch(monitor, request.model, name, reduced)
    return {"results": [reduced.answer() for _, reduced in results]}


@routes.post(
    "/loss",
    policy=COMPUTE,
    summary="Per-sample losses and their mean for one batch (JSON, npz or Arrow body)",
    response_model=LossResult,
    responses={
        **PROBLEM_RESPONSES,
        200: {
            "description": "The result; as an npz archive of the same fields when Accept is application/x-npz",
            "content": {NPZ_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
    },
    openapi_extra=json_body("LossRequest", LOSS_EXAMPLES, binary=True),
)
async def loss(request: Request) -> Response:
    media_type, body = await read_body(request, BATCH_MEDIA_TYPES)
    monitor = request.app.state.monitor
    query = request.query_params if media_type != JSON_MEDIA_TYPE else None  # binary bodies' fields
    context = context_of(request.scope)
    limit = request.app.state.settings.max_elements
    result = await off_loop(
        request,
        len(body),
        lambda: decoded_bytes(media_type, body),
        lambda: _compute_one(body, monitor, limit, media_type, query, context),
    )
    return _npz(result) if _wants_npz(request) else json_response(result)


@routes.post(
    "/evaluate",
    policy=COMPUTE,
    summary="Several losses over one batch",
    response_model=EvaluateResult,
    responses=PROBLEM_RESPONSES,
    openapi_extra=json_body("EvaluateRequest", EVALUATE_EXAMPLES),
)
async def evaluate(request: Request) -> Response:
    _, body = await read_body(request)
    monitor = request.app.state.monitor
    limit = request.app.state.settings.max_elements
    context = context_of(request.scope)
    result = await off_loop(
        request,
        len(body),
        lambda: json_decoded_bytes(body),
        lambda: _compute_many(body, monitor, limit, context),
        losses=lambda: max(1, body.count(b'"loss"')),  # each loss is an object with this key
    )
    return json_response(result)


@routes.get(
    "/losses",
    policy=CATALOGUE,
    summary="The loss catalogue: names, aliases, formulas, shapes and options",
    response_model=Catalogue,
)
async def losses() -> Catalogue:
    return Catalogue(losses=[loss_info(spec) for spec in catalogue()])


@routes.get(
    "/losses/{name}",
    policy=CATALOGUE,
    summary="One catalogue entry, by name or alias",
    response_model=LossInfo,
    responses={
        404: {
            "description": "No such loss",
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    },
)
async def loss_entry(name: str) -> LossInfo:
    return loss_info(resolve(name))


@routes.get(
    "/conventions/{convention}",
    policy=CATALOGUE,
    summary="A library convention's metrics: names as the library writes them, options, link, precision",
    response_model=LibraryCatalogue,
    responses={422: {**PROBLEM_RESPONSES[422], "description": "Not a library convention"}},
)
async def library_catalogue(convention: Library) -> LibraryCatalogue:
    return LibraryCatalogue(
        convention=convention, metrics=[library_metric_info(m) for m in libraries.metrics(convention)]
    )
