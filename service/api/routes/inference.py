"""Open Inference Protocol v2 (KServe V2 / Triton HTTP), where each catalogue loss is a "model".

Inputs `predictions`, `labels` and optionally `sample_weight`, as JSON tensors or with the binary
tensor data extension; request `parameters` carry the loss's options plus `convention`, `dtype`
and `model` (validated like v1). Outputs `per_sample` and `mean`. Errors are `{"error": "..."}`.

The request's shape is validated first, against the protocol's request (`oip_schema`); only then
are the tensors decoded (`_inputs`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from service import __version__
from service.api.arrays import MAX_ELEMENTS
from service.api.batches import off_loop, run_loss
from service.api.body import (
    Body,
    RepeatedKeyError,
    collector_paused,
    json_decoded_bytes,
    loads,
    read_body_aligned,
    received_body,
)
from service.api.direct import DirectRoute
from service.api.errors import validation_problem
from service.api.guards import REFUSALS
from service.api.headers import byte_count, request_header
from service.api.oip_schema import (
    DATATYPE_NAMES,
    SHOWN_ERRORS,
    InferenceRequestError,
    RequestInput,
    RequestOutput,
    request_schema,
    validated_request,
)
from service.api.problems import shown
from service.api.schemas import loss_request_adapter
from service.engine import LossInputError, UnknownLossError, libraries, resolve
from service.monitoring import Monitor

router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=DirectRoute)

HEADER_LENGTH = "inference-header-content-length"
INPUTS = ("predictions", "labels", "sample_weight")
OUTPUTS = ("per_sample", "mean")
BATCH_PARAMETERS = ("convention", "dtype", "model")
KINDS: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
DATATYPES: dict[str, np.dtype[Any]] = {name: np.dtype(KINDS[name]).newbyteorder("<") for name in DATATYPE_NAMES}


class InferenceError(Exception):
    """An inference protocol error: answered as {"error": message} with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _error(message: str, status: int) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json")


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _catalogue_name(loss: str) -> str:
    """The catalogue name of `loss`, or a library metric's name as given (the `convention`
    parameter then says whose; the engine refuses it under any other)."""
    if libraries.is_library_metric(loss):
        return loss
    try:
        return resolve(loss).name
    except UnknownLossError as exc:
        raise InferenceError(f"unknown loss {shown(loss)}; valid names: {', '.join(exc.valid)}", 404) from None


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return _json({"name": "loss-service", "version": __version__, "extensions": ["binary_tensor_data"]})


@router.get("/health/live", summary="Server liveness")
async def server_live() -> Response:
    return _json({"live": True})


@router.get(
    "/health/ready",
    summary="Server readiness: 503 while starting or draining",
    responses={503: {"description": "Not ready"}},
)
async def server_ready(request: Request) -> Response:
    ready = request.app.state.lifecycle == "ready"
    return _json({"ready": ready}, 200 if ready else 503)


def _tensor_spec(name: str, required: bool) -> dict[str, Any]:
    return {"name": name, "datatype": "FP64", "shape": [-1, -1], "optional": not required}


ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such loss", "content": {"application/json": {"schema": ERROR_SCHEMA}}}
}


@router.get("/models/{loss}", summary="Model metadata: a catalogue loss as a model", responses=NOT_FOUND)
async def model_metadata(loss: str) -> Response:
    try:
        name = _catalogue_name(loss)
    except InferenceError as exc:
        return _error(str(exc), exc.status)
    return _json(
        {
            "name": name,
            "versions": ["1"],
            "platform": "loss-service",
            "inputs": [
                _tensor_spec("predictions", True),
                _tensor_spec("labels", True),
                {"name": "sample_weight", "datatype": "FP64", "shape": [-1], "optional": True},
            ],
            "outputs": [
                {"name": "per_sample", "datatype": "FP64", "shape": [-1]},
                {"name": "mean", "datatype": "FP64", "shape": [1]},
            ],
        }
    )


@router.get(
    "/models/{loss}/ready", summary="Model readiness", responses={**NOT_FOUND, 503: {"description": "Not ready"}}
)
async def model_ready(loss: str, request: Request) -> Response:
    try:
        name = _catalogue_name(loss)
    except InferenceError as exc:
        return _error(str(exc), exc.status)
    ready = request.app.state.lifecycle == "ready"
    return _json({"name": name, "ready": ready}, 200 if ready else 503)


@router.post(
    "/models/{loss}/infer",
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
        log = request.scope.setdefault("state", {})
        limit = request.app.state.settings.max_elements
        return await off_loop(  # type: ignore[no-any-return]
            request,
            len(body),
            lambda: _decoded_bytes(body, split),
            lambda: _infer_paused(loss, body, header_length, monitor, log, limit),
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
    loss: str, body: Body, header_length: str | None, monitor: Monitor, log: dict[str, Any], limit: int
) -> Response:
    # JSON tensors are lists until the request is validated (see collector_paused).
    with collector_paused(len(body)):
        return _infer(loss, body, header_length, monitor, log, limit)


def _infer(
    loss: str, body: Body, header_length: str | None, monitor: Monitor, log: dict[str, Any], limit: int
) -> Response:
    name = _catalogue_name(loss)
    header, binary = _split(body, header_length)
    try:
        request = validated_request(header)  # the protocol's shape, before any tensor is decoded
    except InferenceRequestError as exc:
        raise InferenceError(str(exc)) from None
    request_parameters = request.parameters.__pydantic_extra__ if request.parameters is not None else {}
    binary_by_default = request.parameters is not None and request.parameters.binary_data_output is True
    wanted = _wanted_outputs(request.outputs, binary_by_default)
    arrays = _inputs(request.inputs, binary, limit)
    fields = {key: request_parameters[key] for key in BATCH_PARAMETERS if key in request_parameters}
    options = {key: value for key, value in request_parameters.items() if key not in BATCH_PARAMETERS}
    try:
        validated = loss_request_adapter().validate_python(
            {"loss": name, **fields, **arrays, "options": options}, context={MAX_ELEMENTS: limit}
        )
        computed, reduced = run_loss(validated, monitor, log)
    except ValidationError as exc:
        problem = validation_problem(exc)
        monitor.record_nonfinite(problem.nonfinite_fields)
        raise InferenceError(_oip_message(problem.errors or [])) from None
    except LossInputError as exc:
        field = exc.field.replace("options.", "parameters.", 1)
        where = field if field.startswith("parameters.") else f"input {field}"
        raise InferenceError(f"{where}{''.join(f'[{i}]' for i in exc.index)}: {exc.reason}") from None
    out_dtype = np.float32 if validated.dtype == "float32" else np.float64
    outputs = {
        "per_sample": reduced.per_sample.astype(out_dtype),
        "mean": np.asarray([reduced.mean], dtype=out_dtype),
    }
    extra = {
        "sum": reduced.sum,
        "count": reduced.count,
        "denominator": reduced.denominator,
        "aggregate": reduced.aggregate,
        "convention": validated.convention,
        "dtype": validated.dtype,
    }
    return _response(computed, request.id, outputs, extra, wanted)


def _oip_message(errors: list[dict[str, Any]]) -> str:
    """Problem details in the protocol's one-string form, with v2's own names for the fields: the
    first SHOWN_ERRORS of them, then how many more there are."""
    parts = []
    for error in errors[:SHOWN_ERRORS]:
        loc = [str(part) for part in error["loc"][1:]]
        if loc and loc[0] == "options":
            loc[0] = "parameters"
        elif loc and loc[0] in (*BATCH_PARAMETERS, "loss"):
            loc.insert(0, "parameters")
        elif loc and loc[0] in INPUTS:
            loc = [f"input {loc[0]}", *loc[1:]]
        parts.append(f"{'.'.join(loc) or 'request'}: {error['msg']}")
    if len(errors) > SHOWN_ERRORS:
        parts.append(f"and {len(errors) - SHOWN_ERRORS} more")
    return "; ".join(parts)


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


def _inputs(specs: list[RequestInput], binary: memoryview, limit: int) -> dict[str, np.ndarray[Any, Any]]:
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for spec in specs:
        if spec.name not in INPUTS:
            raise InferenceError(f"unexpected input {shown(spec.name)}; inputs are {', '.join(INPUTS)}")
        if spec.name in arrays:
            raise InferenceError(f"input {shown(spec.name)} given twice")
        array, offset = _tensor(spec, binary, offset, limit)
        # Class labels and 0/1 targets may come as BOOL; the loss reads them as numbers.
        arrays[spec.name] = array.astype(np.int64) if array.dtype == np.bool_ else array
    if offset != len(binary):
        raise InferenceError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    return arrays


def _tensor(spec: RequestInput, binary: memoryview, offset: int, limit: int) -> tuple[np.ndarray[Any, Any], int]:
    name, shape, datatype = spec.name, spec.shape, spec.datatype
    if datatype not in DATATYPES:
        raise InferenceError(f"input {name}: unsupported datatype {shown(datatype)}; use one of {', '.join(DATATYPES)}")
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    if count > limit:
        raise InferenceError(
            f"input {name}: {count:,} numbers; the limit is {limit:,} (LOSS_SERVICE_MAX_ELEMENTS)", 413
        )
    if any(d > limit for d in shape):  # [2**40, 2**40, 0] holds no number, but no array has that shape
        raise InferenceError(
            f"input {name}: shape {shown(shape)} has a dimension over {limit:,} (LOSS_SERVICE_MAX_ELEMENTS)", 413
        )
    size = spec.parameters.binary_data_size if spec.parameters is not None else None
    if size is not None:
        expected = count * dtype.itemsize
        if size != expected:
            raise InferenceError(
                f"input {name}: binary_data_size {size} but shape {shape} of {datatype} needs {expected}"
            )
        if offset + size > len(binary):
            raise InferenceError(f"input {name}: the body ends before its {size} bytes of binary data")
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
        return array, offset + size
    if spec.data is None:
        raise InferenceError(f"input {name}: needs data, or binary_data_size with the binary extension")
    try:
        array = np.asarray(spec.data)
    except ValueError as exc:
        raise InferenceError(f"input {name}: data is not a rectangular array: {exc}") from None
    if array.dtype.kind not in "biuf" or array.size != count:
        raise InferenceError(f"input {name}: data must hold {count} numbers for shape {shape}")
    return _as_datatype(array, dtype, name, datatype).reshape(shape), offset


def _as_datatype(array: np.ndarray[Any, Any], dtype: np.dtype[Any], name: str, datatype: str) -> np.ndarray[Any, Any]:
    """JSON numbers as the tensor's datatype. Floats are rounded to it, as Triton, KServe and
    MLServer do: clients write FP32 tensors at float32's shortest decimals (0.1, not
    0.10000000149011612). Refused: a finite number that overflows the datatype to infinity, and
    for integer and BOOL datatypes any number that would change (a fraction, out of range)."""
    if array.dtype == dtype:
        return array  # FP64 decimals, INT64 integers: nothing to round, nothing that can change
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(dtype)
    if dtype.kind == "f":
        changed = np.isfinite(array) & ~np.isfinite(converted) if array.dtype.kind == "f" else ~np.isfinite(converted)
        reason = f"overflows {datatype} to infinity"
    else:
        changed = converted != array
        reason = f"is not a value of {datatype}"
        if array.dtype.kind == "f" and dtype.kind in "iu":
            reason = f"is not an integer or is outside the range of {datatype}"
    if changed.any():
        index = tuple(int(i) for i in np.argwhere(changed)[0])
        where = "".join(f"[{i}]" for i in index)
        raise InferenceError(f"input {name}{where}: {array[index].item()!r} {reason}")
    return converted


def _wanted_outputs(requested: list[RequestOutput] | None, binary_by_default: bool) -> dict[str, bool]:
    """The outputs to answer with, each marked True when it goes as binary tensor data."""
    if requested is None:
        return dict.fromkeys(OUTPUTS, binary_by_default)
    wanted: dict[str, bool] = {}
    for index, output in enumerate(requested):
        if output.name not in OUTPUTS:
            raise InferenceError(
                f"outputs[{index}]: unknown output {shown(output.name)}; outputs are {', '.join(OUTPUTS)}"
            )
        if output.name in wanted:
            raise InferenceError(f"outputs[{index}]: output {shown(output.name)} requested twice")
        binary = output.parameters.binary_data if output.parameters is not None else None
        wanted[output.name] = binary_by_default if binary is None else binary
    return wanted


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
