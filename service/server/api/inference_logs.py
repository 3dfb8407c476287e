"""KServe's inference logger over HTTP: its CloudEvents read from a request, and the half of an
inference each carries read from the v1 or v2 protocol's JSON.

The logger (kserve/kserve `pkg/logger`: `handler.go` makes a `LogRequest` for the request and,
when the model answered 200, one for the response; `worker.go` sends each with the CloudEvents
Go SDK) posts in binary content mode: `Ce-Id` (the inference request's own `Ce-Id` header, else
a new UUID; request and response share it), `Ce-Type`
`org.kubeflow.serving.inference.request` / `.response`, `Ce-Source`, `Ce-Specversion` 1.0,
`Ce-Time`, the extensions `Ce-Inferenceservicename`, `Ce-Namespace`, `Ce-Component`,
`Ce-Endpoint`, `Ce-Metadata`, `Ce-Recordedtime` (and `Ce-Annotations`), `Content-Type` the
inference request's (for the response too), and the body as the model received or answered it.
Structured mode (`application/cloudevents+json`: attributes and `data` or `data_base64` in one
JSON object) is read too. Attributes other than id, type, specversion, source and time are not
used: the URL names the model.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import unquote

import numpy as np
import orjson
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError
from starlette.types import Scope

from service.server.api.arrays import BOOLEANS_PRESENT, MAX_ELEMENTS, NumericArray, kind_of
from service.server.api.body import JSON_MEDIA_TYPE, RepeatedKeyError, loads
from service.server.api.model_schemas import to_ids
from service.server.api.oip_codec import DATATYPES
from service.server.api.problems import ProblemError, clipped, shown
from service.usecases.events import (
    CE_ID,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    Event,
    ReadHalf,
    RequestHalf,
    ResponseHalf,
    Segments,
    needs_request,
)
from service.values.segments import segment_value

EVENT_MEDIA_TYPE = "application/cloudevents+json"
# Binary mode carries the inference's own Content-Type, which the Go SDK leaves out when empty.
EVENT_MEDIA_TYPES = (JSON_MEDIA_TYPE, EVENT_MEDIA_TYPE, "")
KINDS = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}
REQUIRED = ("id", "source", "specversion", "type")
Loc = list[str | int]
_ARRAY: TypeAdapter[np.ndarray[Any, Any]] = TypeAdapter(NumericArray)


def problem(loc: Loc, message: str, status: int = 422) -> ProblemError:
    where = ".".join(str(part) for part in loc[1:]) or loc[0]
    return ProblemError(status, f"{where}: {message}", errors=[{"loc": loc, "msg": message}])


def read_event(scope: Scope, media_type: str, body: bytes, max_elements: int) -> tuple[Event, ReadHalf]:
    """The CloudEvent a request carries, and the reader of the half of an inference in its data."""
    if media_type == EVENT_MEDIA_TYPE:
        envelope = _json(body, ["body"])
        if type(envelope) is not dict:
            raise problem(["body"], f"a structured CloudEvent is a JSON object, got {kind_of(envelope)}")
        attributes = {key: value for key, value in envelope.items() if key not in ("data", "data_base64")}
        where: Loc = ["body"]
        at: Loc = ["body", "data"]
        data = _structured_data(envelope)
    else:
        attributes = _header_attributes(scope)
        where, at = ["header"], ["body"]
        data = _json(body, ["body"])
    event = _event(attributes, where)
    if event.kind == "request":
        return event, lambda config: read_request(data, config, at)
    return event, lambda config: read_response(data, config, at, max_elements)


def _json(body: bytes, loc: Loc) -> Any:
    try:
        return loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProblemError(400, f"malformed JSON: {exc}") from None
    except RepeatedKeyError as exc:
        raise ProblemError(422, str(exc), errors=[{"loc": [*loc, *exc.path], "msg": "repeated key"}]) from None


def _header_attributes(scope: Scope) -> dict[str, Any]:
    """Binary mode's `Ce-*` headers as attributes, percent-decoded (the HTTP binding, 3.1.3.2)."""
    attributes: dict[str, Any] = {}
    for key, value in scope["headers"]:
        if key[:3] == b"ce-":
            attributes.setdefault(key[3:].decode("latin-1"), unquote(value.decode("latin-1")))
    return attributes


def _structured_data(envelope: dict[str, Any]) -> Any:
    content_type = envelope.get("datacontenttype")
    if content_type is not None and not _is_json(content_type):
        raise problem(["body", "datacontenttype"], f"the data must be JSON, got {shown(content_type)}", 415)
    if "data_base64" in envelope:
        encoded = envelope["data_base64"]
        if type(encoded) is not str:
            raise problem(["body", "data_base64"], f"expected base64 text, got {kind_of(encoded)}")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise problem(["body", "data_base64"], "is not base64") from None
        return _json(raw, ["body", "data_base64"])
    if "data" not in envelope:
        raise problem(["body", "data"], "field required: the inference's request or response")
    return envelope["data"]


def _is_json(content_type: Any) -> bool:
    if type(content_type) is not str:
        return False
    media = content_type.split(";")[0].strip().lower()
    return media == JSON_MEDIA_TYPE or (media.startswith("application/") and media.endswith("+json"))


def _event(attributes: dict[str, Any], where: Loc) -> Event:
    def loc(name: str) -> Loc:
        return [*where, f"ce-{name}" if where == ["header"] else name]

    for name in REQUIRED:
        value = attributes.get(name)
        if value is None or value == "":
            raise problem(loc(name), "required: KServe's inference logger sends it with every event")
        if type(value) is not str:
            raise problem(loc(name), f"expected a string, got {kind_of(value)}")
    if attributes["specversion"] != "1.0":
        raise problem(loc("specversion"), f"CloudEvents 1.0 is read, got {shown(attributes['specversion'])}")
    kind = KINDS.get(attributes["type"])
    if kind is None:
        raise problem(
            loc("type"),
            f"unknown event type {shown(attributes['type'])}; the inference logger's are {REQUEST_TYPE} and "
            f"{RESPONSE_TYPE}",
        )
    try:
        (event_id,) = to_ids([attributes["id"]])
    except PydanticCustomError as exc:
        raise problem(loc("id"), exc.message()) from None
    return Event(event_id, "request" if kind == "request" else "response", _time(attributes.get("time"), loc("time")))


def _time(value: Any, loc: Loc) -> float | None:
    """`Ce-Time` (RFC 3339) as Unix seconds."""
    if value is None:
        return None
    if type(value) is not str:
        raise problem(loc, f"expected an RFC 3339 time, got {kind_of(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise problem(loc, f"expected an RFC 3339 time, got {shown(value)}") from None
    if moment.tzinfo is None:
        raise problem(loc, f"an RFC 3339 time has its offset (Z or +hh:mm), got {shown(value)}")
    seconds = moment.timestamp()
    if seconds < 0:
        raise problem(loc, f"is before 1970, {shown(value)}")
    return seconds


# -- the halves --------------------------------------------------------------------------------------


def read_response(data: Any, config: dict[str, Any], at: Loc, max_elements: int) -> ResponseHalf:
    """The prediction rows of a v2 response (`outputs`, the output `config["prediction"]`) or of
    a v1 one (its field `config["prediction"]`, one row per instance)."""
    if type(data) is not dict:
        raise problem(at, f"an inference response is a JSON object, got {kind_of(data)}")
    name = config["prediction"]
    outputs = data.get("outputs")
    if outputs is not None:
        if type(outputs) is not list:
            raise problem([*at, "outputs"], f"expected an array of output tensors, got {kind_of(outputs)}")
        for index, output in enumerate(outputs):
            if type(output) is dict and output.get("name") == name:
                return ResponseHalf(_output(output, [*at, "outputs", index], max_elements))
        names = ", ".join(shown(o.get("name")) for o in outputs[:16] if type(o) is dict) or "none"
        raise problem(
            [*at, "outputs"],
            f"the response has no output named {shown(name)} (the model's events.prediction); its outputs: {names}",
        )
    if name not in data:
        raise problem(
            [*at, clipped(name)],
            f"the response has neither v2 `outputs` nor the v1 field {shown(name)} (the model's events.prediction)",
        )
    return ResponseHalf(_numbers(data[name], [*at, clipped(name)], max_elements))


def _numbers(value: Any, loc: Loc, max_elements: int) -> np.ndarray[Any, Any]:
    """A JSON array of finite numbers as NumPy (the API's array validator; booleans refused)."""
    try:
        return _ARRAY.validate_python(value, context={BOOLEANS_PRESENT: True, MAX_ELEMENTS: max_elements})
    except ValidationError as exc:
        error = exc.errors()[0]
        index = list((error.get("ctx") or {}).get("index") or [])
        raise problem([*loc, *index], error["msg"]) from None


def _output(output: dict[str, Any], loc: Loc, max_elements: int) -> np.ndarray[Any, Any]:
    """A v2 output tensor's numbers in its shape and datatype."""
    shape, datatype = output.get("shape"), output.get("datatype")
    if type(shape) is not list or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise problem([*loc, "shape"], f"expected a non-empty array of non-negative integers, got {shown(shape)}")
    if datatype not in DATATYPES:
        raise problem(
            [*loc, "datatype"], f"a prediction is numbers: one of {', '.join(DATATYPES)}, got {shown(datatype)}"
        )
    if "data" not in output:
        binary = type(output.get("parameters")) is dict and "binary_data_size" in output["parameters"]
        reason = (
            "binary tensor data cannot be read from a logged event (the logger forwards the body without its "
            "Inference-Header-Content-Length); answer the output as JSON"
            if binary
            else "field required: the output's numbers"
        )
        raise problem([*loc, "data"], reason)
    count = math.prod(shape)
    if count > max_elements:
        raise problem(
            [*loc, "shape"], f"{count:,} numbers; the limit is {max_elements:,} (LOSS_SERVICE_MAX_ELEMENTS)", 413
        )
    array = _numbers(output["data"], [*loc, "data"], max_elements)
    if array.size != count:
        raise problem([*loc, "data"], f"holds {array.size} numbers and shape {shape} needs {count}")
    dtype = DATATYPES[datatype]
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(dtype)
    # As the OIP route reads tensors: floats rounded to the datatype, nothing else may change.
    changed = ~np.isfinite(converted) if dtype.kind == "f" else converted != array
    if changed.any():
        flat = int(np.flatnonzero(changed.ravel())[0])
        raise problem([*loc, "data", flat], f"{array.ravel()[flat].item()!r} is not a value of {datatype}")
    if dtype == np.bool_:
        converted = converted.astype(np.int64)
    return converted.reshape(shape)


def read_request(data: Any, config: dict[str, Any], at: Loc) -> RequestHalf:
    """What the model's `events` configuration needs of a v2 request (`inputs`, `parameters`) or
    a v1 one (`instances`, objects): the rows' ids and segment values."""
    if not needs_request(config):
        return RequestHalf(None, None, None, {})
    if type(data) is not dict:
        raise problem(at, f"an inference request is a JSON object, got {kind_of(data)}")
    columns = _Columns(data, at)
    ids, base, rows = None, None, None
    if config["id"] != CE_ID:
        found = columns.get(config["id"])
        if found is not None:
            values, loc = found
            try:
                ids = to_ids(values)
            except PydanticCustomError as exc:
                index = (exc.context or {}).get("index") or []
                raise problem([*loc, *index], f"{exc.message()} (the model's events.id)") from None
            rows = len(ids)
        else:
            base = columns.parameter(config["id"])
    segments: Segments = {}
    for key, name in config["segments"].items():
        found = columns.get(name)
        if found is None:
            raise problem(
                columns.where(name), f"the request has no {columns.what} {shown(name)} (segment {shown(key)})"
            )
        values, loc = found
        segments[key] = [_segment_value(value, [*loc, index], key) for index, value in enumerate(values)]
        if rows is not None and len(values) != rows:
            raise problem(loc, f"holds {len(values)} values and the request {rows} rows; one value per row")
        rows = len(values)
    return RequestHalf(rows, ids, base, segments)


class _Columns:
    """A request's per-row values by name: a v2 input (shape [N] or [N, 1]) or a field of every
    v1 instance."""

    def __init__(self, data: dict[str, Any], at: Loc) -> None:
        self.data, self.at = data, at
        self.v2 = "inputs" in data
        if not self.v2 and "instances" not in data:
            raise problem(at, "the request has neither v2 `inputs` nor v1 `instances`")
        key = "inputs" if self.v2 else "instances"
        self.items = data[key]
        if type(self.items) is not list:
            raise problem([*at, key], f"expected an array, got {kind_of(self.items)}")
        self.what = "input or parameter" if self.v2 else "instance field"

    def where(self, name: str) -> Loc:
        return [*self.at, "inputs"] if self.v2 else [*self.at, "instances", 0, clipped(name)]

    def get(self, name: str) -> tuple[list[Any], Loc] | None:
        if self.v2:
            for index, tensor in enumerate(self.items):
                if type(tensor) is dict and tensor.get("name") == name:
                    return self._input(tensor, [*self.at, "inputs", index])
            return None
        values = []
        for index, instance in enumerate(self.items):
            if type(instance) is not dict:
                raise problem(
                    [*self.at, "instances", index],
                    f"an instance with named fields is an object, got {kind_of(instance)}",
                )
            if name not in instance:
                return None if index == 0 else self._missing(name, index)
            values.append(instance[name])
        return values, [*self.at, "instances"]

    def _missing(self, name: str, index: int) -> NoReturn:
        raise problem([*self.at, "instances", index], f"has no field {shown(name)}, which the instances before it have")

    @staticmethod
    def _input(tensor: dict[str, Any], loc: Loc) -> tuple[list[Any], Loc]:
        shape, data = tensor.get("shape"), tensor.get("data")
        if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
            raise problem([*loc, "shape"], f"expected an array of non-negative integers, got {shown(shape)}")
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise problem([*loc, "shape"], f"one value per row: shape [N] or [N, 1], got {shape}")
        if type(data) is not list:
            raise problem([*loc, "data"], f"expected an array of one value per row, got {kind_of(data)}")
        flat = [item[0] if type(item) is list and len(item) == 1 else item for item in data]
        if len(flat) != shape[0]:
            raise problem([*loc, "data"], f"holds {len(flat)} values and shape {shape} needs {shape[0]}")
        return flat, [*loc, "data"]

    def parameter(self, name: str) -> str:
        """A v2 request parameter naming the inference: `<value>:<row>` are its rows' ids."""
        parameters = self.data.get("parameters") if self.v2 else None
        if type(parameters) is not dict or name not in parameters:
            raise problem(self.where(name), f"the request has no {self.what} {shown(name)} (the model's events.id)")
        value = parameters[name]
        loc: Loc = [*self.at, "parameters", clipped(name)]
        try:
            (text,) = to_ids([value])
        except PydanticCustomError as exc:
            raise problem(loc, f"{exc.message()} (the model's events.id)") from None
        return text


def _segment_value(value: Any, loc: Loc, key: str) -> str | None:
    """A segment's value by the rule POST .../predictions keeps too (`segment_value`)."""
    try:
        return segment_value(value)
    except ValueError as exc:
        raise problem(loc, f"segment {shown(key)}: {exc}") from None
