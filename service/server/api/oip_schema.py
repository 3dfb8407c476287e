"""The Open Inference Protocol's inference request, as Pydantic models: the envelope every
`POST /v2/models/{model}/infer` body is validated against before any tensor is decoded.

Followed: KServe's `docs/predict-api/v2/required_api.md` ("Inference Request JSON Object",
"Request Input", "Request Output", "Parameters"), the HTTP/REST form of the protocol Triton
implements, and Triton's binary tensor data extension (`binary_data_size` on an input,
`binary_data` on a requested output, `binary_data_output` on the request).

    $inference_request = {"id": $string, "parameters": $parameters, "inputs": [$request_input, ...],
                          "outputs": [$request_output, ...]}
    $request_input     = {"name": $string, "shape": [$number, ...], "datatype": $string,
                          "parameters": $parameters, "data": $tensor_data}
    $request_output    = {"name": $string, "parameters": $parameters}
    $parameter         = $string : $string | $number | $boolean

Where the protocol leaves a choice, these models take the strict one: booleans are not integers
(`shape: [true]` is refused), numbers are not strings, an object has only the protocol's fields,
and a shape has at most MAX_DIMENSIONS dimensions. `null` for an optional field means the field is
absent, as clients that serialise optional fields write it. Request `parameters` carry the loss's
options, validated afterwards like /v1's (an option may be a list, beyond the protocol's scalars).

A tensor's `data` is checked here only for being an array: its numbers are read by the route's
codec (the JSON numbers straight into NumPy), which checks them against `shape` and `datatype`.

Refusals name the field by its path and index: `inputs[0].shape[1]: must be a non-negative
integer, got true` (`refusal_message`).
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    StrictBool,
    StrictStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.server.api.arrays import MAX_DIMENSIONS
from service.server.api.problems import clipped

# The protocol's tensor data types this service reads (not BYTES: a loss takes numbers).
DATATYPE_NAMES = (
    "BOOL",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
)
MAX_INPUTS = 3  # predictions, labels, sample_weight
MAX_OUTPUTS = 2  # per_sample, mean
# At most this many refusals are spelled out in one answer; the rest are counted.
SHOWN_ERRORS = 3


def _parameter_value(value: object) -> str | int | float | bool:
    if type(value) in (str, int, float, bool):
        return value  # type: ignore[return-value]
    raise PydanticCustomError("parameter_value", "must be a string, a number or a boolean")


def _tensor_data(value: object) -> Any:
    # np.ndarray: numbers that the body reader read straight into NumPy (large bodies).
    if type(value) is list or isinstance(value, np.ndarray):
        return value
    raise PydanticCustomError("tensor_data", "must be an array")


PARAMETER_TYPES = (str, int, float, bool)


def _only_fields(data: Any, fields: frozenset[str], at: tuple[str | int, ...]) -> None:
    """Refuse the keys of the object `data` that are not `fields`, in one error."""
    if type(data) is dict and not data.keys() <= fields:
        bad = [key for key in data if key not in fields]
        raise PydanticCustomError(
            "unknown_field", "is not a field of the protocol's request", {"at": [*at, bad[0]], "more": len(bad) - 1}
        )


def _scalar_parameters(data: Any, fields: frozenset[str], at: tuple[str | int, ...]) -> None:
    """Refuse the parameters of the object `data` that are not a string, a number or a boolean
    (its own `fields` aside), in one error."""
    if type(data) is dict:
        bad = [key for key, value in data.items() if type(value) not in PARAMETER_TYPES and key not in fields]
        if bad:
            context = {"at": [*at, bad[0]], "more": len(bad) - 1, "got": rendered(data[bad[0]])}
            raise PydanticCustomError("parameter_value", "must be a string, a number or a boolean", context)


def _one_pass_over_keys(data: Any) -> Any:
    """Unknown fields and non-scalar parameters, found in one pass over each object's keys and
    refused in one error naming the first: Pydantic builds an error per wrong key, and
    a body of a million wrong keys would cost seconds before its 400. Lists longer than the
    schema allows are left to its length check."""
    if type(data) is not dict:
        return data
    _only_fields(data, REQUEST_FIELDS, ())
    for name, fields, parameters, limit in (
        ("inputs", INPUT_FIELDS, INPUT_PARAMETERS, MAX_INPUTS),
        ("outputs", OUTPUT_FIELDS, OUTPUT_PARAMETERS, MAX_OUTPUTS),
    ):
        items = data.get(name)
        if type(items) is list and len(items) <= limit:
            for index, item in enumerate(items):
                if type(item) is dict:
                    _only_fields(item, fields, (name, index))
                    _scalar_parameters(item.get("parameters"), parameters, (name, index, "parameters"))
    return data


NonNegativeInteger = Annotated[int, Strict(), Field(ge=0)]
ParameterValue = Annotated[
    str | int | float | bool,
    PlainValidator(_parameter_value),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}),
]
TensorData = Annotated[
    Any,
    PlainValidator(_tensor_data),
    WithJsonSchema(
        {
            "type": "array",
            "description": "The tensor's numbers in row-major order, flat or nested to the shape",
        }
    ),
]


class RequestParameters(BaseModel):
    """The request's `parameters`: the loss's options, `convention`, `dtype` and `model` (validated
    like /v1/loss's), and the binary extension's `binary_data_output`."""

    model_config = ConfigDict(extra="allow")

    binary_data_output: StrictBool | None = Field(
        None, description="Every output as binary tensor data unless the output says otherwise"
    )
    __pydantic_extra__: dict[str, Any]


class InputParameters(BaseModel):
    """An input's `parameters`: `binary_data_size` places its data after the JSON header."""

    model_config = ConfigDict(extra="allow")

    binary_data_size: NonNegativeInteger | None = Field(
        None, description="Bytes of this input's data in the binary section, in input order"
    )
    __pydantic_extra__: dict[str, ParameterValue]


class OutputParameters(BaseModel):
    """A requested output's `parameters`: `binary_data` asks for it as binary tensor data."""

    model_config = ConfigDict(extra="allow")

    binary_data: StrictBool | None = Field(None, description="This output as binary tensor data")
    __pydantic_extra__: dict[str, ParameterValue]


class RequestInput(BaseModel):
    """One input tensor: `predictions`, `labels` or `sample_weight`."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(description="predictions, labels or sample_weight")
    shape: list[NonNegativeInteger] = Field(max_length=MAX_DIMENSIONS)
    datatype: StrictStr = Field(json_schema_extra={"enum": list(DATATYPE_NAMES)})
    parameters: InputParameters | None = None
    data: TensorData | None = None


class RequestOutput(BaseModel):
    """One output to answer with: `per_sample` or `mean`."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(description="per_sample or mean")
    parameters: OutputParameters | None = None


class InferenceRequest(BaseModel):
    """The Open Inference Protocol's inference request (the JSON header, with the binary tensor
    data extension)."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = Field(None, description="Returned in the response")
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=MAX_INPUTS)
    outputs: list[RequestOutput] | None = Field(None, description="All outputs when absent", max_length=MAX_OUTPUTS)

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        return _one_pass_over_keys(data)


REQUEST_FIELDS = frozenset(InferenceRequest.__pydantic_fields__)
INPUT_FIELDS = frozenset(RequestInput.__pydantic_fields__)
OUTPUT_FIELDS = frozenset(RequestOutput.__pydantic_fields__)
INPUT_PARAMETERS = frozenset(InputParameters.__pydantic_fields__)
OUTPUT_PARAMETERS = frozenset(OutputParameters.__pydantic_fields__)


_TYPE_MESSAGES = {
    "int_type": "must be a non-negative integer",  # the schema's only integers: dimensions and sizes
    "greater_than_equal": "must be a non-negative integer",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "list_type": "must be an array",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
}


class InferenceRequestError(ValueError):
    """The body does not have the protocol's request shape; the message names the fields."""


@cache
def _adapter() -> TypeAdapter[InferenceRequest]:
    return TypeAdapter(InferenceRequest)


def validated_request(header: Any) -> InferenceRequest:
    """`header` (parsed JSON) as an InferenceRequest, or InferenceRequestError naming what is wrong."""
    try:
        return _adapter().validate_python(header)
    except ValidationError as exc:
        raise InferenceRequestError(refusal_message(exc)) from None


def refusal_message(exc: ValidationError) -> str:
    """The first SHOWN_ERRORS errors as `path: reason, got value`, then how many more there are."""
    errors = exc.errors(include_url=False)
    parts = [_one(error) for error in errors[:SHOWN_ERRORS]]
    if len(errors) > SHOWN_ERRORS:
        parts.append(f"and {len(errors) - SHOWN_ERRORS} more")
    return "; ".join(parts)


def _one(error: Any) -> str:
    where = path(error["loc"])
    kind = error["type"]
    context = error.get("ctx") or {}
    if "at" in context:  # one error for many keys of an object (_one_pass_over_keys)
        where = path((*error["loc"], *context["at"]))
        got = f", got {context['got']}" if "got" in context else ""
        more = f" (and {context['more']:,} more like it)" if context["more"] else ""
        return f"{where}: {error['msg']}{got}{more}"
    if kind == "missing":
        return f"{where}: required"
    if kind == "too_short":
        return f"{where}: must be a non-empty array"
    if kind == "too_long":
        limit = context["max_length"]
        what = "dimensions" if error["loc"][-1] == "shape" else "items"
        return f"{where}: at most {limit} {what}, got {len(error['input'])}"
    reason = _TYPE_MESSAGES.get(kind, error["msg"])
    return f"{where}: {reason}, got {rendered(error['input'])}"


def path(loc: tuple[int | str, ...]) -> str:
    """`("inputs", 0, "shape", 1)` as `inputs[0].shape[1]`; keys are clipped."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{clipped(part)}" if text else clipped(part)
    return text or "request"


def rendered(value: Any, limit: int = 64) -> str:
    """A JSON value as the client wrote it (`true`, `"x"`, `[1]`), clipped."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:  # an integer beyond 64 bits, or nesting past orjson's depth limit
        text = (
            str(value)
            if isinstance(value, int)
            else f"a deeply nested {'array' if isinstance(value, list) else 'object'}"
        )
    return clipped(text, limit)


def request_schema() -> dict[str, Any]:
    """The request's JSON schema with its definitions in place (for the route's OpenAPI entry,
    which has no components of its own)."""
    schema = _adapter().json_schema(ref_template="#/$defs/{model}")
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(
                    {**definitions[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}}
                )
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)  # type: ignore[no-any-return]
