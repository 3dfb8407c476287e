"""The Open Inference Protocol's tensors, below both transports (HTTP in routes/inference.py,
gRPC in service/server/grpc): a catalogue loss as a model, input tensors decoded to NumPy by datatype,
the batch validated and computed as /v1/loss's is, and the outputs to answer with.

Each transport reads its own envelope (JSON header and binary tensor data; protobuf and
`raw_input_contents`) into the protocol's request (`oip_schema.InferenceRequest`) and its tensors'
bytes, and writes the answer its own way; the messages of `InferenceError` are the same for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.engine import LossInputError, UnknownLossError, libraries, resolve
from service.server.api.arrays import MAX_ELEMENTS
from service.server.api.batches import run_loss
from service.server.api.errors import validation_problem
from service.server.api.oip_schema import DATATYPE_NAMES, SHOWN_ERRORS, InferenceRequest, RequestInput, RequestOutput
from service.server.api.policy import RequestContext
from service.server.api.problems import shown
from service.server.api.schemas import loss_request_adapter
from service.server.monitoring import Monitor

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
    """An inference protocol error: answered as {"error": message} with `status` (an HTTP status;
    gRPC answers with the code that corresponds)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def catalogue_name(loss: str) -> str:
    """The model's name in the catalogue (a loss by any of its names), else a library metric's name
    as given (the `convention` parameter then says whose; the engine refuses it under any other), or 404."""
    try:
        return resolve(loss).name
    except UnknownLossError as exc:
        if libraries.is_library_metric(loss):
            return loss
        raise InferenceError(f"unknown loss {shown(loss)}; valid names: {', '.join(exc.valid)}", 404) from None


def inference_name(loss: str) -> str:
    """The name an inference request computes: a library metric's as given, whatever catalogue loss
    shares it (LightGBM's `mse`, XGBoost's `mae`: the request's convention decides), else the
    catalogue's; or 404."""
    found = catalogue_name(loss)
    return loss if libraries.is_library_metric(loss) else found


EXTENSIONS = ("binary_tensor_data",)


def model_metadata(name: str) -> dict[str, Any]:
    """A catalogue loss's metadata as a model: its inputs and outputs (shapes -1 where any size goes)."""
    return {
        "name": name,
        "versions": ["1"],
        "platform": "loss-service",
        "inputs": [
            {"name": "predictions", "datatype": "FP64", "shape": [-1, -1], "optional": False},
            {"name": "labels", "datatype": "FP64", "shape": [-1, -1], "optional": False},
            {"name": "sample_weight", "datatype": "FP64", "shape": [-1], "optional": True},
        ],
        "outputs": [
            {"name": "per_sample", "datatype": "FP64", "shape": [-1]},
            {"name": "mean", "datatype": "FP64", "shape": [1]},
        ],
    }


@dataclass
class Answer:
    """A computed inference: the outputs wanted (True: as binary data) and the request's parameters."""

    model: str
    request_id: str | None
    outputs: dict[str, np.ndarray[Any, Any]]
    parameters: dict[str, Any]
    wanted: dict[str, bool]


def compute(
    name: str,
    request: InferenceRequest,
    arrays: dict[str, np.ndarray[Any, Any]],
    wanted: dict[str, bool],
    monitor: Monitor,
    context: RequestContext,
    limit: int,
) -> Answer:
    """The loss `name` over the decoded input tensors, with the request's parameters as its options."""
    request_parameters = request.parameters.__pydantic_extra__ if request.parameters is not None else {}
    return compute_batch(name, request.id, request_parameters, arrays, wanted, monitor, context, limit)


def compute_batch(
    name: str,
    request_id: str | None,
    request_parameters: dict[str, Any],
    arrays: dict[str, np.ndarray[Any, Any]],
    wanted: dict[str, bool],
    monitor: Monitor,
    context: RequestContext,
    limit: int,
) -> Answer:
    """`compute` for a request read without its Pydantic model: its id, and its parameters but
    `binary_data_output` (what `RequestParameters` keeps as extra), in the request's order."""
    fields = {key: request_parameters[key] for key in BATCH_PARAMETERS if key in request_parameters}
    options = {key: value for key, value in request_parameters.items() if key not in BATCH_PARAMETERS}
    try:
        validated = loss_request_adapter().validate_python(
            {"loss": name, **fields, **arrays, "options": options}, context={MAX_ELEMENTS: limit}
        )
        computed, reduced = run_loss(validated, monitor, context)
    except ValidationError as exc:
        problem = validation_problem(exc)
        monitor.record_nonfinite(problem.nonfinite_fields)
        raise InferenceError(oip_message(problem.errors or [])) from None
    except LossInputError as exc:
        field = exc.field.replace("options.", "parameters.", 1)
        where = field if field.startswith("parameters.") else f"input {field}"
        raise InferenceError(f"{where}{''.join(f'[{i}]' for i in exc.index)}: {exc.reason}") from None
    out_dtype = np.float32 if validated.dtype == "float32" else np.float64
    outputs = {
        "per_sample": reduced.per_sample.astype(out_dtype, copy=False),
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
    return Answer(computed, request_id, outputs, extra, wanted)


def oip_message(errors: list[dict[str, Any]]) -> str:
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


def decode_inputs(specs: list[RequestInput], binary: memoryview, limit: int) -> dict[str, np.ndarray[Any, Any]]:
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for spec in specs:
        check_input_name(spec.name, arrays)
        array, offset = _tensor(spec, binary, offset, limit)
        arrays[spec.name] = as_numbers(array)
    if offset != len(binary):
        raise InferenceError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    return arrays


def check_input_name(name: str, decoded: dict[str, Any]) -> None:
    """`name` is one of the inputs and not one already decoded."""
    if name not in INPUTS:
        raise InferenceError(f"unexpected input {shown(name)}; inputs are {', '.join(INPUTS)}")
    if name in decoded:
        raise InferenceError(f"input {shown(name)} given twice")


def as_numbers(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Class labels and 0/1 targets may come as BOOL; the loss reads them as numbers."""
    return array.astype(np.int64) if array.dtype == np.bool_ else array


def _tensor(spec: RequestInput, binary: memoryview, offset: int, limit: int) -> tuple[np.ndarray[Any, Any], int]:
    name, shape, datatype = spec.name, spec.shape, spec.datatype
    dtype, count = checked_tensor(name, shape, datatype, limit)
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
    return tensor_from_numbers(array, name, shape, datatype), offset


def checked_tensor(name: str, shape: list[int], datatype: str, limit: int) -> tuple[np.dtype[Any], int]:
    """The datatype's little-endian dtype and the count of numbers, for a tensor within `limit`."""
    if datatype not in DATATYPES:
        raise InferenceError(f"input {name}: unsupported datatype {shown(datatype)}; use one of {', '.join(DATATYPES)}")
    count = math.prod(shape)
    if count > limit:
        raise InferenceError(
            f"input {name}: {count:,} numbers; the limit is {limit:,} (LOSS_SERVICE_MAX_ELEMENTS)", 413
        )
    if any(d > limit for d in shape):  # [2**40, 2**40, 0] holds no number, but no array has that shape
        raise InferenceError(
            f"input {name}: shape {shown(shape)} has a dimension over {limit:,} (LOSS_SERVICE_MAX_ELEMENTS)", 413
        )
    return DATATYPES[datatype], count


def tensor_from_numbers(
    array: np.ndarray[Any, Any], name: str, shape: list[int], datatype: str
) -> np.ndarray[Any, Any]:
    """Numbers written out (JSON `data`, gRPC `contents`) as the tensor of `shape` and `datatype`."""
    count = math.prod(shape)
    if array.dtype.kind not in "biuf" or array.size != count:
        raise InferenceError(f"input {name}: data must hold {count} numbers for shape {shape}")
    return _as_datatype(array, DATATYPES[datatype], name, datatype).reshape(shape)


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


def wanted_outputs(requested: list[RequestOutput] | None, binary_by_default: bool) -> dict[str, bool]:
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
