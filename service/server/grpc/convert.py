"""A `ModelInferRequest` read into the protocol's request and its tensors, and an answer written
as a `ModelInferResponse`: the gRPC side of `service.server.api.oip_codec`.

The request's envelope (id, parameters, input names, shapes and datatypes, requested outputs)
is validated as the HTTP route validates its JSON header (`oip_schema.validated_request`), so a
wrong field gets the same message. A tensor's numbers come from `raw_input_contents` (one entry
per input, in order, little-endian, viewed in place) or from its `contents` field for its
datatype, checked as JSON `data` is; an input's `binary_data_size` parameter (which KServe's
client sets) is ignored. Outputs are always answered in `raw_output_contents`.

Most requests are one shape: raw tensors that fit, scalar parameters, outputs named without
parameters. `common_request` reads those in one pass over the message, without the JSON
header's dict and Pydantic model; whatever it does not take whole (any mistake included) is
read by the generic path, so answers and messages are the generic path's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.server.api.arrays import MAX_DIMENSIONS
from service.server.api.oip_codec import (
    DATATYPES,
    INPUTS,
    OUTPUTS,
    Answer,
    InferenceError,
    as_numbers,
    check_input_name,
    checked_tensor,
    compute,
    compute_batch,
    tensor_from_numbers,
    wanted_outputs,
)
from service.server.api.oip_schema import MAX_INPUTS, MAX_OUTPUTS, InferenceRequestError, validated_request
from service.server.api.policy import RequestContext
from service.server.grpc.proto import grpc_predict_v2_pb2 as pb
from service.server.monitoring import Monitor

# Each datatype's `contents` field and the NumPy type of its numbers (FP16 has none: raw only).
CONTENTS: dict[str, tuple[str, type[np.generic]]] = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint32),
    "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}
NUMBER_FIELDS = sorted({field for field, _ in CONTENTS.values()})


def decoded_bytes(size: int) -> int:
    """A request's memory while it is decoded: its message as received, parsed, and one
    conversion of its tensors (raw contents are viewed in place)."""
    return 3 * size


def parameters(entries: Any, at: str) -> dict[str, Any]:
    """A protobuf `map<string, InferParameter>` as the JSON header's `parameters` object."""
    values: dict[str, Any] = {}
    for key, value in entries.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is None:
            raise InferenceError(f"{at}.{key}: the parameter has no value")
        values[key] = getattr(value, choice)
    return values


def header(request: Any) -> dict[str, Any]:
    """The request's envelope in the JSON header's shape, tensors aside."""
    inputs = []
    for index, tensor in enumerate(request.inputs):
        spec: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
        if tensor.parameters:
            given = parameters(tensor.parameters, f"inputs[{index}].parameters")
            # KServe's gRPC client names each raw tensor's size as the HTTP extension would; the
            # raw_input_contents entry is what counts here.
            given.pop("binary_data_size", None)
            if given:
                spec["parameters"] = given
        inputs.append(spec)
    result: dict[str, Any] = {"inputs": inputs}
    if request.id:
        result["id"] = request.id
    if request.parameters:
        result["parameters"] = parameters(request.parameters, "parameters")
    if request.outputs:
        result["outputs"] = [
            {
                "name": output.name,
                **(
                    {"parameters": parameters(output.parameters, f"outputs[{i}].parameters")}
                    if output.parameters
                    else {}
                ),
            }
            for i, output in enumerate(request.outputs)
        ]
    return result


def tensors(request: Any, specs: list[Any], limit: int) -> dict[str, np.ndarray[Any, Any]]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InferenceError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input, in order"
        )
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for index, (spec, tensor) in enumerate(zip(specs, request.inputs, strict=True)):
        name, shape, datatype = spec.name, spec.shape, spec.datatype
        check_input_name(name, arrays)
        dtype, count = checked_tensor(name, shape, datatype, limit)
        if raw:
            if tensor.HasField("contents"):
                raise InferenceError(f"input {name}: contents and raw_input_contents both given; use one")
            data = raw[index]
            expected = count * dtype.itemsize
            if len(data) != expected:
                raise InferenceError(
                    f"input {name}: raw_input_contents[{index}] holds {len(data)} bytes "
                    f"but shape {shape} of {datatype} needs {expected}"
                )
            array = np.frombuffer(data, dtype=dtype).reshape(shape)
        else:
            array = tensor_from_numbers(_numbers(name, datatype, tensor), name, shape, datatype)
        arrays[name] = as_numbers(array)
    return arrays


def _numbers(name: str, datatype: str, tensor: Any) -> np.ndarray[Any, Any]:
    if not tensor.HasField("contents"):
        raise InferenceError(f"input {name}: needs contents, or raw_input_contents")
    contents = tensor.contents
    wanted = CONTENTS.get(datatype)
    given = [field for field in NUMBER_FIELDS if len(getattr(contents, field))]
    if wanted is None:
        raise InferenceError(f"input {name}: {datatype} has no contents field; send it in raw_input_contents")
    field, kind = wanted
    if any(other != field for other in given) or contents.bytes_contents:
        other = next((f for f in given if f != field), "bytes_contents")
        raise InferenceError(f"input {name}: contents.{other} given for datatype {datatype}; use {field}")
    return np.array(getattr(contents, field), dtype=kind)


@dataclass(slots=True)
class Common:
    """A request read by `common_request`: what the generic path would have read from it."""

    request_id: str | None
    parameters: dict[str, Any]  # the request's, but binary_data_output (RequestParameters' extra)
    arrays: dict[str, np.ndarray[Any, Any]]
    wanted: dict[str, bool]


def common_request(request: Any, limit: int) -> Common | None:
    """The request's id, parameters, tensors and outputs wanted, where every one of them is in the
    common shape: one to MAX_INPUTS inputs, each with its raw_input_contents entry of the right
    size, no contents, a supported datatype, a shape within the limits, and no parameter but a
    set `binary_data_size`; request parameters each set, `binary_data_output` a boolean; at most
    MAX_OUTPUTS outputs, known, distinct and without parameters. Else None, and the generic path
    reads it (and names what is wrong, if anything is)."""
    inputs, raw = request.inputs, request.raw_input_contents
    if not 0 < len(inputs) <= MAX_INPUTS or len(raw) != len(inputs):
        return None
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for tensor, data in zip(inputs, raw, strict=True):
        if tensor.parameters and not _only_binary_data_size(tensor.parameters):
            return None
        name, dtype, shape = tensor.name, DATATYPES.get(tensor.datatype), tuple(tensor.shape)
        if name not in INPUTS or name in arrays or dtype is None or len(shape) > MAX_DIMENSIONS:
            return None
        if tensor.HasField("contents"):
            return None
        count = 1
        for dimension in shape:
            if dimension < 0 or dimension > limit:
                return None
            count *= dimension
        if count > limit or len(data) != count * dtype.itemsize:
            return None
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
        arrays[name] = as_numbers(array) if dtype.kind == "b" else array
    parameters: dict[str, Any] = {}
    for key, value in request.parameters.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is None:
            return None
        parameters[key] = getattr(value, choice)
    if "binary_data_output" in parameters and type(parameters.pop("binary_data_output")) is not bool:
        return None
    outputs = request.outputs
    if not outputs:
        wanted = dict.fromkeys(OUTPUTS, True)
    else:
        wanted = {output.name: True for output in outputs}
        if len(outputs) > MAX_OUTPUTS or len(wanted) != len(outputs) or not wanted.keys() <= set(OUTPUTS):
            return None
        if any(output.parameters for output in outputs):
            return None
    return Common(request.id or None, parameters, arrays, wanted)


def _only_binary_data_size(entries: Any) -> bool:
    # `in` first: reading a missing key of a protobuf map would add it.
    return (
        len(entries) == 1
        and "binary_data_size" in entries
        and entries["binary_data_size"].WhichOneof("parameter_choice") is not None
    )


def infer(name: str, request: Any, monitor: Monitor, context: RequestContext, limit: int) -> pb.ModelInferResponse:
    """The ModelInfer RPC's work, as the HTTP route's `_infer`: the envelope, then the outputs
    wanted, then the tensors, then the loss; a request in the common shape read in one pass."""
    common = common_request(request, limit)
    if common is not None:
        answer = compute_batch(
            name, common.request_id, common.parameters, common.arrays, common.wanted, monitor, context, limit
        )
        return response(answer)
    try:
        validated = validated_request(header(request))
    except InferenceRequestError as exc:
        raise InferenceError(str(exc)) from None
    wanted = wanted_outputs(validated.outputs, True)
    arrays = tensors(request, validated.inputs, limit)
    return response(compute(name, validated, arrays, wanted, monitor, context, limit))


def response(answer: Answer) -> pb.ModelInferResponse:
    reply = pb.ModelInferResponse(model_name=answer.model, model_version="1", id=answer.request_id or "")
    parameters, outputs, raw = reply.parameters, reply.outputs, reply.raw_output_contents
    for key, value in answer.parameters.items():
        parameter = parameters[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = str(value)
    for output in answer.wanted:
        array = answer.outputs[output]
        datatype = "FP32" if array.dtype == np.float32 else "FP64"
        outputs.add(name=output, datatype=datatype, shape=array.shape)
        raw.append(array.astype(DATATYPES[datatype], copy=False).tobytes())
    return reply
