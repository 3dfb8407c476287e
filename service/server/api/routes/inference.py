"""Open Inference Protocol v2 (KServe V2 / Triton HTTP), where each catalogue loss is a "model".

Inputs `predictions`, `labels` and optionally `sample_weight`, as JSON tensors or with the binary
tensor data extension; request `parameters` carry the loss's options plus `convention`, `dtype`
and `model` (validated like v1). Outputs `per_sample` and `mean`. Errors are `{"error": "..."}`.

The request's shape is validated first, against the protocol's request (`oip_schema`); only then
are the tensors decoded (`_inputs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response

from service import __version__
from service.server.api.batches import off_loop
from service.server.api.body import (
    Body,
    RepeatedKeyError,
    collector_paused,
    json_decoded_bytes,
    loads,
    read_body_aligned,
    received_body,
)
from service.server.api.guards import REFUSALS
from service.server.api.headers import byte_count, request_header
from service.server.api.oip_codec import (
    EXTENSIONS,
    InferenceError,
    catalogue_name,
    compute,
    decode_inputs,
    inference_name,
    wanted_outputs,
)
from service.server.api.oip_codec import model_metadata as metadata_of
from service.server.api.oip_schema import InferenceRequestError, request_schema, validated_request
from service.server.api.policy import RequestContext, RoutePolicy, context_of
from service.server.api.routing import Routes
from service.server.monitoring import Monitor

METADATA = RoutePolicy(dialect="oip")  # any valid key
INFER = RoutePolicy(scope="compute", heavy=True, dialect="oip")
HEALTH = RoutePolicy(key="none", dialect="oip")  # probes stay open, as /livez and /readyz do
routes = Routes(
    "/v2",
    tags=["open inference protocol"],
    # Paths no route answers: open under /v2/health/, for key holders elsewhere; their refusals
    # in this protocol's shape.
    unmatched=[("/health/{rest:path}", HEALTH), ("{rest:path}", METADATA)],
)

HEADER_LENGTH = "inference-header-content-length"


def _error(message: str, status: int) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json")


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


@routes.get("", policy=METADATA, summary="Server metadata")
async def server_metadata() -> Response:
    return _json({"name": "loss-service", "version": __version__, "extensions": list(EXTENSIONS)})


@routes.get("/health/live", policy=HEALTH, summary="Server liveness")
async def server_live() -> Response:
    return _json({"live": True})


@routes.get(
    "/health/ready",
    policy=HEALTH,
    summary="Server readiness: 503 while starting or draining",
    responses={503: {"description": "Not ready"}},
)
async def server_ready(request: Request) -> Response:
    ready = request.app.state.lifecycle == "ready"
    return _json({"ready": ready}, 200 if ready else 503)


ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such loss", "content": {"application/json": {"schema": ERROR_SCHEMA}}}
}


@routes.get(
    "/models/{loss}", policy=METADATA, summary="Model metadata: a catalogue loss as a model", responses=NOT_FOUND
)
async def model_metadata(loss: str) -> Response:
    try:
        name = catalogue_name(loss)
    except InferenceError as exc:
        return _error(str(exc), exc.status)
    return _json(metadata_of(name))


@routes.get(
    "/models/{loss}/ready",
    policy=METADATA,
    summary="Model readiness",
    responses={**NOT_FOUND, 503: {"description": "Not ready"}},
)
async def model_ready(loss: str, request: Request) -> Response:
    try:
        name = catalogue_name(loss)
    except InferenceError as exc:
        return _error(str(exc), exc.status)
    ready = request.app.state.lifecycle == "ready"
    return _json({"name": name, "ready": ready}, 200 if ready else 503)


@routes.post(
    "/models/{loss}/infer",
    policy=INFER,
    summary="Per-sample losses and their mean (JSON tensors or the binary tensor data extension)",
    responses={
        **NOT_FOUND,
        400: {"description": "Invalid inference request", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
        **{
            status: {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for status, description in REFUSALS.items()  # the guards', in this protocol's shape
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": request_schema()},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def infer(loss: str, request: Request) -> Response:
    header_length = request_header(request.scope, HEADER_LENGTH.encode())
    split = byte_count(header_length)
    if split is not None:
        body = await read_body_aligned(request, split)  # the tensors start there
    else:
        body = await received_body(request)
    monitor: Monitor = request.app.state.monitor
    try:
        context = context_of(request.scope)
        limit = request.app.state.settings.max_elements
        return await off_loop(  # type: ignore[no-any-return]
            request,
            len(body),
            lambda: _decoded_bytes(body, split),
            lambda: _infer_paused(loss, body, header_length, monitor, context, limit),
        )
    except InferenceError as exc:
        return _error(str(exc), exc.status)


def _decoded_bytes(body: Body, split: int | None) -> int:
    """Parsing's memory: the JSON header's (see `json_decoded_bytes`), and binary tensors viewed in
    place plus one conversion each."""
    if split is None or split > len(body):
        return json_decoded_bytes(body)
    return json_decoded_bytes(body[:split]) + 2 * (len(body) - split)


def _infer_paused(
    loss: str, body: Body, header_length: str | None, monitor: Monitor, context: RequestContext, limit: int
) -> Response:
    # JSON tensors are lists until the request is validated (see collector_paused).
    with collector_paused(len(body)):
        return _infer(loss, body, header_length, monitor, context, limit)


def _infer(
    loss: str, body: Body, header_length: str | None, monitor: Monitor, context: RequestContext, limit: int
) -> Response:
    name = inference_name(loss)
    header, binary = _split(body, header_length)
    try:
        request = validated_request(header)  # the protocol's shape, before any tensor is decoded
    except InferenceRequestError as exc:
        raise InferenceError(str(exc)) from None
    binary_by_default = request.parameters is not None and request.parameters.binary_data_output is True
    wanted = wanted_outputs(request.outputs, binary_by_default)
    arrays = decode_inputs(request.inputs, binary, limit)
    answer = compute(name, request, arrays, wanted, monitor, context, limit)
    return _response(answer.model, answer.request_id, answer.outputs, answer.parameters, answer.wanted)


TENSOR_DATA = frozenset({"data"})  # JSON tensors' numbers, read straight into NumPy when large


def _split(body: Body, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON inference header and the binary tensor data after it."""
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise InferenceError("Inference-Header-Content-Length must be an integer") from None
        if not 0 < size <= len(body):
            raise InferenceError(f"Inference-Header-Content-Length {size} does not fit a body of {len(body)} bytes")
    try:
        header = loads(bytes(body[:size]), TENSOR_DATA)
    except orjson.JSONDecodeError as exc:
        raise InferenceError(f"malformed inference request JSON: {exc}") from None
    except RepeatedKeyError as exc:
        raise InferenceError(f"inference request JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InferenceError("the inference request must be a JSON object")
    return header, memoryview(body)[size:]


def _response(
    model: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray[Any, Any]],
    parameters: dict[str, Any],
    wanted: dict[str, bool],
) -> Response:
    datatype = "FP32" if next(iter(outputs.values())).dtype == np.float32 else "FP64"
    tensors, chunks = [], []
    for name, binary in wanted.items():
        array = outputs[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    result: dict[str, Any] = {"model_name": model, "model_version": "1", "parameters": parameters, "outputs": tensors}
    if request_id is not None:
        result["id"] = request_id
    encoded = orjson.dumps(result)
    if not chunks:
        return Response(encoded, media_type="application/json")
    return Response(
        encoded + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(encoded))},
    )
