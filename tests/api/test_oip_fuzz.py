"""A fuzzer of Open Inference Protocol inference requests (hypothesis), beside schemathesis.

schemathesis generates bodies from the route's OpenAPI schema; this starts from well-formed
requests of the protocol (JSON tensors, binary tensors, requested outputs, parameters; small
bodies and bodies large enough for the other JSON reader) and mutates up to three fields at any
depth: removed, replaced by a near miss (a boolean for an integer, an off-by-one size or header
length, 70 dimensions) or by any JSON value (wrong types, nested garbage), plus fields the
protocol lacks and bytes no input claims. Every answer must be the protocol's: never a 5xx,
every refusal `{"error": "<text>"}` as JSON, and no 200 carrying a NaN or an infinity.

Runs in-process (httpx.ASGITransport on one app behind a blocking portal), derandomized, so the
same examples run in CI every time."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from service.server.api.json_arrays import SIMDJSON_BYTES
from service.server.api.oip_codec import DATATYPES
from service.server.app import create_app

Post = Callable[[str, bytes, dict[str, str]], httpx.Response]
MISSING = object()
FUZZ = settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities too: json.dumps writes them, and a reader must refuse them
    | st.text(max_size=6)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=10,
)


def put(target: dict[str, Any], **values: Any) -> dict[str, Any]:
    target.update({key: value for key, value in values.items() if value is not MISSING})
    return target


NUMBERS = st.one_of(
    st.floats(0.25, 0.75, width=32),
    st.integers(0, 1),
    st.booleans(),
    st.sampled_from([1e300, -1e300, 2**64, 70000.0, -1, 0.5]),  # overflow a datatype or the loss
)


@st.composite
def tensor(draw: st.DrawFn, name: str, shape: list[int], binary: bool) -> tuple[dict[str, Any], bytes]:
    """A well-formed input tensor (JSON data, or raw bytes after the header) that may then be
    mutated, and its raw bytes."""
    datatype = draw(st.sampled_from(["FP64", "FP32", "FP16", "INT64", "INT32", "UINT8", "BOOL"]))
    count = math.prod(shape)
    # Zeros and ones (or fractions), from a drawn seed: drawing each of hundreds of numbers is slow.
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    base = rng.integers(0, 2, count) if draw(st.booleans()) else rng.uniform(0.25, 0.75, count).astype(np.float32)
    values: list[Any] = base.tolist()
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        values[draw(st.integers(0, count - 1))] = draw(NUMBERS)
    spec: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
    if binary and draw(st.integers(0, 3)) > 0:
        with np.errstate(all="ignore"):
            raw = np.asarray(values, dtype=np.float64).astype(DATATYPES[datatype]).tobytes()
        if draw(st.integers(0, 9)) == 0:
            raw = draw(st.binary(min_size=len(raw), max_size=len(raw)))  # any bit pattern: NaN, infinity
        spec["parameters"] = {"binary_data_size": len(raw)}
        return spec, raw
    nested = len(shape) == 2 and draw(st.booleans())
    spec["data"] = [values[i : i + shape[1]] for i in range(0, count, shape[1])] if nested else values
    return spec, b""


def near(value: Any) -> st.SearchStrategy[Any]:
    """Values close to a well-formed one: what a buggy client sends."""
    if isinstance(value, bool):
        return st.sampled_from([not value, int(value), str(value).lower(), None])
    if isinstance(value, int):
        return st.sampled_from([value + 1, value - 1, -1, 0, float(value), str(value), True, 2**64, 2**70])
    if isinstance(value, str):
        return st.sampled_from([value.upper(), value.lower(), "", [value], {value: value}, "BYTES", "x"])
    if isinstance(value, list):
        return st.one_of(
            st.just(value[:-1]),
            st.just([*value, *value[-1:]]),
            st.just([value]),
            st.just([True] * len(value)),
            st.just([[1] * 3, [1] * 2]),
            st.just([1] * 70),
        )
    return JSON_VALUES


@st.composite
def mutated(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """`value` with one of its fields, at any depth, replaced, removed, added to or left alone."""
    choice = draw(st.integers(0, 9))
    if choice == 0 or depth > 4 or not isinstance(value, (dict, list)) or not value:
        return draw(st.one_of(near(value), JSON_VALUES, st.just(MISSING)))
    if isinstance(value, dict):
        if choice == 1:
            return {**value, draw(st.text(max_size=8)): draw(JSON_VALUES)}  # a field the protocol lacks
        key = draw(st.sampled_from(sorted(value)))
        inner = draw(mutated(value[key], depth + 1))
        return put({k: v for k, v in value.items() if k != key}, **{key: inner})
    index = draw(st.integers(0, len(value) - 1))
    inner = draw(mutated(value[index], depth + 1))
    return [*value[:index], *([] if inner is MISSING else [inner]), *value[index + 1 :]]


@st.composite
def inference(draw: st.DrawFn, binary: bool) -> tuple[str, bytes, dict[str, str]]:
    """A loss, a body and its headers: a well-formed request with 0 to 3 mutations."""
    loss = draw(st.sampled_from(["mse", "mse", "mae", "bce", "scce", "nope"]))
    small = st.lists(st.integers(1, 3), min_size=1, max_size=2)
    large = st.integers(150, 300).map(lambda rows: [rows, 2])  # past SIMDJSON_BYTES: the other JSON reader
    shape = draw(st.one_of(small, small, small, large))
    names = ["predictions", "labels"] + (["sample_weight"] if draw(st.integers(0, 4)) == 0 else [])
    tensors = [draw(tensor(name, shape if name != "sample_weight" else shape[:1], binary)) for name in names]
    request: dict[str, Any] = {"inputs": [spec for spec, _ in tensors]}
    if draw(st.booleans()):
        request["id"] = draw(st.text(max_size=4))
    if draw(st.booleans()):
        request["parameters"] = {"binary_data_output": draw(st.booleans())}
    if draw(st.booleans()):
        request["outputs"] = [
            {"name": name, "parameters": {"binary_data": draw(st.booleans())}}
            for name in draw(st.lists(st.sampled_from(["per_sample", "mean"]), max_size=2, unique=True))
        ]
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 2, 3]))):
        request = draw(mutated(request))
        if not isinstance(request, dict):
            request = {} if request is MISSING else {"inputs": request}
    header = json.dumps(request).encode()  # the standard library writes integers beyond 64 bits
    blobs = b"".join(raw for _, raw in tensors)
    if not blobs and draw(st.integers(0, 4)) > 0:
        return loss, header, {"content-type": "application/json"}
    blobs += draw(st.sampled_from([b"", b"", b"", b"", b"x", b"\0" * 8]))
    lengths = [len(header)] * 6 + [len(header) - 1, len(header) + 1, len(header) + len(blobs) + 1, 0, -1]
    length = draw(st.sampled_from([str(n) for n in lengths] + ["x", "", "1e3"]))
    return loss, header + blobs, {"inference-header-content-length": length}


def finite_numbers(value: Any) -> bool:
    """Every number in a JSON answer is finite (orjson writes NaN as null: no null either)."""
    if isinstance(value, dict):
        return all(finite_numbers(item) for item in value.values())
    if isinstance(value, list):
        return all(finite_numbers(item) for item in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is not None


def check(response: httpx.Response) -> None:
    """The protocol's answer: a 2xx with finite numbers, or a 4xx `{"error": "<text>"}` as JSON."""
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.headers["content-type"] == "application/json", response.headers
        body = orjson.loads(response.content)
        assert isinstance(body, dict), body
        assert set(body) == {"error"}, body
        assert isinstance(body["error"], str), body
        assert body["error"], body
        return
    size = int(response.headers.get("inference-header-content-length", len(response.content)))
    header = orjson.loads(response.content[:size])
    assert finite_numbers(header["outputs"]), header
    assert finite_numbers(header["parameters"]), header
    binary = response.content[size:]
    for output in header["outputs"]:
        if "data" in output:
            continue
        dtype = np.dtype("<f4" if output["datatype"] == "FP32" else "<f8")
        length = output["parameters"]["binary_data_size"]
        values = np.frombuffer(binary[:length], dtype=dtype)
        binary = binary[length:]
        assert np.isfinite(values).all(), (output, values)
    assert not binary


@pytest.fixture(scope="module")
def post() -> Iterator[Post]:
    """POST to one app in-process, from synchronous hypothesis tests (an event loop in a thread)."""
    loggers = [logging.getLogger(name) for name in ("loss_service.access", "loss_service.audit")]
    for logger in loggers:
        logger.disabled = True
    app = create_app()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    client = httpx.AsyncClient(transport=transport, base_url="http://fuzz")
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
        portal.wrap_async_context_manager(client),
    ):

        def send(path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
            return portal.call(partial(client.post, path, content=content, headers=headers))

        yield send
    for logger in loggers:
        logger.disabled = False


def fuzz(post: Post, binary: bool) -> Counter[int | str]:
    statuses: Counter[int | str] = Counter()

    @FUZZ
    @given(inference(binary))
    def one(case: tuple[str, bytes, dict[str, str]]) -> None:
        loss, content, headers = case
        note(f"POST /v2/models/{loss}/infer {headers} {content[:2000]!r}")
        response = post(f"/v2/models/{loss}/infer", content, headers)
        statuses[response.status_code] += 1
        statuses["large"] += len(content) >= SIMDJSON_BYTES
        check(response)

    one()
    return statuses


def test_json_inference_requests_get_the_protocols_answers(post: Post) -> None:
    statuses = fuzz(post, binary=False)
    # The examples reach the engine and past it, not only the first refusal.
    assert statuses[200] >= 20, statuses
    assert statuses[400] >= 100, statuses
    assert statuses["large"] >= 40, statuses


def test_binary_extension_requests_get_the_protocols_answers(post: Post) -> None:
    statuses = fuzz(post, binary=True)
    assert statuses[200] >= 10, statuses
    assert statuses[400] >= 100, statuses
