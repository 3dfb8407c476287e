"""ModelInfer's reading of requests in the common shape (`convert.common_request`): the same
answers and the same errors as the generic reading (the JSON header's model), over a varied set
of requests, with the generic reading not run for them; and the model names ModelInfer keeps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

from service.config import Settings
from service.server.api.oip_codec import DATATYPES, InferenceError, inference_name
from service.server.api.policy import RequestContext
from service.server.app import create_app
from service.server.grpc import convert
from service.server.grpc import server as grpc_server
from service.server.grpc.proto import grpc_predict_v2_pb2 as pb
from tests.served.test_grpc import TENSOR_CASES, _refusal, parameter, served

pytestmark = pytest.mark.anyio
RNG = np.random.default_rng(7)
LOGITS = RNG.normal(0, 2, (12, 4)).astype(np.float32)
LABELS = RNG.integers(0, 4, 12)
LIMIT = 1_000
DATATYPE = {
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.bool_): "BOOL",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def request_of(
    model: str,
    arrays: dict[str, np.ndarray[Any, Any]],
    parameters: dict[str, Any] | None = None,
    outputs: tuple[str, ...] = (),
    request_id: str = "",
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    for key, value in (parameters or {}).items():
        request.parameters[key].CopyFrom(parameter(value))
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=DATATYPE[array.dtype], shape=list(array.shape))
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def changed(request: pb.ModelInferRequest, change: Callable[[pb.ModelInferRequest], Any]) -> pb.ModelInferRequest:
    copy = pb.ModelInferRequest()
    copy.CopyFrom(request)
    change(copy)
    return copy


SCCE = request_of("scce", {"predictions": LOGITS, "labels": LABELS}, {"from_logits": True, "convention": "torch"})
MSE = request_of("mse", {"predictions": RNG.normal(size=(6, 3)), "labels": RNG.normal(size=(6, 3))})

# Requests in the common shape: each is read by `common_request`.
COMMON = {
    "scce-torch": SCCE,
    "scce-float32-id": request_of(
        "scce", {"predictions": LOGITS, "labels": LABELS}, {"from_logits": True, "dtype": "float32"}, request_id="a-1"
    ),
    "scce-float64-weights-smoothing": request_of(
        "sparse_categorical_crossentropy",
        {"predictions": LOGITS.astype(np.float64), "labels": LABELS, "sample_weight": RNG.random(12)},
        {"from_logits": True, "label_smoothing": 0.1, "convention": "keras", "binary_data_output": True},
    ),
    "scce-int32-labels": request_of("scce", {"predictions": LOGITS, "labels": LABELS.astype(np.int32)}),
    "scce-uint8-labels-fp16": request_of(
        "scce", {"predictions": LOGITS.astype(np.float16), "labels": LABELS.astype(np.uint8)}
    ),
    "bce-bool-labels": request_of(
        "binary_crossentropy", {"predictions": RNG.random((5, 1)), "labels": RNG.random((5, 1)) > 0.5}
    ),
    "mse": MSE,
    "mse-model-and-outputs": request_of(
        "mse",
        {"predictions": RNG.normal(size=4), "labels": RNG.normal(size=4)},
        {"model": "fraud-v3", "binary_data_output": False},
        outputs=("mean",),
    ),
    "mse-outputs-reversed": request_of(
        "mse", {"labels": np.ones(3), "predictions": np.zeros(3)}, outputs=("mean", "per_sample")
    ),
    "huber-delta-int8": request_of(
        "huber", {"predictions": RNG.normal(size=5), "labels": np.arange(5, dtype=np.int8)}, {"delta": 0.5}
    ),
    "mse-odd-parameter-keys": request_of(
        "mse", {"predictions": np.ones(2), "labels": np.zeros(2)}, {"model_config": 1, "": "x", "__class__": 2.5}
    ),
    "mse-uint64": request_of("mse", {"predictions": np.ones(2), "labels": np.array([1, 2], np.uint64)}),
    "mse-binary-data-size": changed(MSE, lambda r: r.inputs[0].parameters["binary_data_size"].CopyFrom(parameter(7))),
    "mse-empty": request_of("mse", {"predictions": np.ones((0, 3)), "labels": np.ones((0, 3))}),
    "mse-dtype-a-number": request_of("mse", {"predictions": np.ones((2, 2)), "labels": np.ones((2, 2))}, {"dtype": 3}),
    # Read whole by common_request, refused by the loss's own checks (the same for both readings).
    "scce-nan": request_of("scce", {"predictions": np.full((2, 3), np.nan), "labels": np.array([0, 1])}),
    "scce-class-out-of-range": request_of("scce", {"predictions": np.ones((2, 3)), "labels": np.array([0, 7])}),
    "mse-negative-weight": request_of(
        "mse", {"predictions": np.ones(2), "labels": np.ones(2), "sample_weight": np.array([1.0, -1.0])}
    ),
    "mse-mismatched-shapes": request_of("mse", {"predictions": np.ones(3), "labels": np.ones(2)}),
    "mse-missing-labels": request_of("mse", {"predictions": np.ones(3)}),
    "mse-unknown-option": request_of("mse", {"predictions": np.ones(3), "labels": np.ones(3)}, {"nope": 1}),
    "mse-wrong-dtype": request_of("mse", {"predictions": np.ones(3), "labels": np.ones(3)}, {"dtype": "float16"}),
    "scce-library-convention": request_of(
        "mlogloss", {"predictions": np.full((2, 3), 1 / 3), "labels": np.array([0, 2])}, {"convention": "xgboost"}
    ),
}


def _raw_from_contents(request: pb.ModelInferRequest) -> pb.ModelInferRequest | None:
    """A request with typed contents as the same request with raw tensors, where its numbers are
    exactly the datatype's."""
    raw = pb.ModelInferRequest()
    raw.CopyFrom(request)
    for tensor in raw.inputs:
        given = [f.name for f, values in tensor.contents.ListFields()]
        dtype = DATATYPES.get(tensor.datatype)
        if len(given) != 1 or dtype is None:
            return None
        values = list(getattr(tensor.contents, given[0]))
        try:
            with np.errstate(all="ignore"):
                array = np.array(values, dtype=dtype)
        except OverflowError:
            return None
        if array.tolist() != values:
            return None
        tensor.ClearField("contents")
        raw.raw_input_contents.append(array.tobytes())
    return raw


def _uncommon() -> dict[str, pb.ModelInferRequest]:
    cases = {
        "contents": changed(
            MSE,
            lambda r: (
                r.ClearField("raw_input_contents"),
                r.inputs[0].contents.fp64_contents.extend([0.0] * 18),
                r.inputs[1].contents.fp64_contents.extend([1.0] * 18),
            ),
        ),
        "contents-and-raw": changed(MSE, lambda r: r.inputs[0].contents.fp64_contents.append(1.0)),
        "raw-short": changed(MSE, lambda r: r.raw_input_contents.__setitem__(1, b"\0" * 8)),
        "raw-missing": changed(MSE, lambda r: r.raw_input_contents.__delitem__(1)),
        "no-inputs": pb.ModelInferRequest(model_name="mse"),
        "four-inputs": changed(
            MSE,
            lambda r: (
                r.inputs.add().CopyFrom(r.inputs[0]),
                r.raw_input_contents.append(r.raw_input_contents[0]),
                r.inputs.add().CopyFrom(r.inputs[0]),
                r.raw_input_contents.append(r.raw_input_contents[0]),
            ),
        ),
        "input-twice": changed(MSE, lambda r: setattr(r.inputs[1], "name", "predictions")),
        "unknown-input": changed(MSE, lambda r: setattr(r.inputs[1], "name", "targets")),
        "datatype-bytes": changed(MSE, lambda r: setattr(r.inputs[0], "datatype", "BYTES")),
        "datatype-lowercase": changed(MSE, lambda r: setattr(r.inputs[0], "datatype", "fp64")),
        "negative-dimension": changed(MSE, lambda r: r.inputs[0].shape.__setitem__(0, -6)),
        # Two negative dimensions make the right count: the shape is still refused.
        "negative-dimensions": changed(
            MSE, lambda r: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.extend([-6, -3]))
        ),
        "too-many-dimensions": changed(MSE, lambda r: r.inputs[0].shape.extend([1] * 31)),
        "over-the-limit": request_of("mse", {"predictions": np.ones(LIMIT + 1), "labels": np.ones(LIMIT + 1)}),
        "dimension-over-the-limit": changed(
            request_of("mse", {"predictions": np.ones((0, 2)), "labels": np.ones((0, 2))}),
            lambda r: r.inputs[0].shape.__setitem__(1, 2 * LIMIT),
        ),
        "parameter-unset": changed(MSE, lambda r: r.parameters["x"].CopyFrom(pb.InferParameter())),
        "binary-data-output-string": changed(
            MSE, lambda r: r.parameters["binary_data_output"].CopyFrom(parameter("yes"))
        ),
        "binary-data-output-int": changed(MSE, lambda r: r.parameters["binary_data_output"].CopyFrom(parameter(1))),
        "input-parameter": changed(
            MSE, lambda r: r.inputs[0].parameters["shared_memory_region"].CopyFrom(parameter("x"))
        ),
        "input-binary-data-size-unset": changed(
            MSE, lambda r: r.inputs[0].parameters["binary_data_size"].CopyFrom(pb.InferParameter())
        ),
        "output-unknown": changed(MSE, lambda r: r.outputs.add(name="total")),
        "output-twice": changed(MSE, lambda r: (r.outputs.add(name="mean"), r.outputs.add(name="mean"))),
        "three-outputs": changed(MSE, lambda r: [r.outputs.add(name=name) for name in ("mean", "per_sample", "mean")]),
        "output-parameters": changed(
            MSE, lambda r: r.outputs.add(name="mean").parameters["binary_data"].CopyFrom(parameter(False))
        ),
        "output-parameter-unset": changed(
            MSE, lambda r: r.outputs.add(name="mean").parameters["binary_data"].CopyFrom(pb.InferParameter())
        ),
    }
    return cases


UNCOMMON = _uncommon()


def corpus_as_raw() -> dict[str, pb.ModelInferRequest]:
    """The bad-input corpus's tensor cases (tests/served/test_grpc.py), with raw tensors."""
    from tests.served.test_grpc import as_grpc

    found = {}
    for name, model, body in TENSOR_CASES:
        typed = as_grpc(model, body)
        raw = None if typed is None else _raw_from_contents(typed)
        if raw is not None:
            found[f"corpus-{name}"] = raw
    return found


CORPUS_RAW = corpus_as_raw()


@pytest.fixture(scope="module")
def monitor() -> Any:
    return create_app(Settings()).state.monitor


def outcome(request: pb.ModelInferRequest, monitor: Any) -> tuple[str, Any]:
    """What ModelInfer's work answers: the reply, or the refusal's status and message."""
    try:
        reply = convert.infer(inference_name(request.model_name), request, monitor, RequestContext(), LIMIT)
    except InferenceError as exc:
        return "refused", (exc.status, str(exc))
    return "answered", reply


def generic_outcome(request: pb.ModelInferRequest, monitor: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    with monkeypatch.context() as patched:
        patched.setattr(convert, "common_request", lambda request, limit: None)
        return outcome(request, monitor)


@pytest.fixture
def readings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the generic reading's runs (its first step, `header`, which the JSON header's
    validation reads) as they happen."""
    seen: list[str] = []
    real = convert.header

    def counted(request: Any) -> Any:
        seen.append("generic")
        return real(request)

    monkeypatch.setattr(convert, "header", counted)
    return seen


def test_the_corpus_has_raw_tensor_cases() -> None:
    assert len(CORPUS_RAW) >= 8, sorted(CORPUS_RAW)


@pytest.mark.parametrize("name", sorted(COMMON))
def test_a_common_request_is_answered_as_the_generic_reading_answers_it(
    name: str, monitor: Any, readings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    request = COMMON[name]
    assert convert.common_request(request, LIMIT) is not None
    fast = outcome(request, monitor)
    assert readings == []  # the generic reading did not run
    generic = generic_outcome(request, monitor, monkeypatch)
    assert readings == ["generic"]
    assert fast == generic


@pytest.mark.parametrize("name", sorted(UNCOMMON) + sorted(CORPUS_RAW))
def test_any_other_request_is_read_by_the_generic_reading(
    name: str, monitor: Any, readings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    request = {**UNCOMMON, **CORPUS_RAW}[name]
    fast = outcome(request, monitor)
    generic = generic_outcome(request, monitor, monkeypatch)
    assert fast == generic
    if name in UNCOMMON:
        assert convert.common_request(request, LIMIT) is None
        assert readings == ["generic", "generic"]


async def test_the_common_reading_skips_the_generic_one_over_grpc(readings: list[str]) -> None:
    async with served() as s:
        reply = await s.stub.ModelInfer(SCCE, timeout=60)
        assert [output.name for output in reply.outputs] == ["per_sample", "mean"]
        assert readings == []
        refused = changed(SCCE, lambda r: r.parameters["binary_data_output"].CopyFrom(parameter("yes")))
        assert await _refusal(s.stub.ModelInfer(refused, timeout=60)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            'parameters.binary_data_output: must be a boolean, got "yes"',
        )
        assert readings == ["generic"]


class Context:
    """What ModelInfer reads of grpcio's context."""

    def time_remaining(self) -> float:
        return 60.0


async def test_model_infer_keeps_at_most_names_kept_model_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library metric's parameters make endless model names (`error@0.001`, `error@0.002`...):
    ModelInfer keeps the first NAMES_KEPT it finds, and a version other than 1 is still refused."""
    monkeypatch.setattr(grpc_server, "NAMES_KEPT", 3)
    app = create_app(Settings())
    service = grpc_server.InferenceService(app, grpc_server.heavy_requests(app))
    arrays = {"predictions": np.array([0.2, 0.9]), "labels": np.array([0.0, 1.0])}
    names = [f"error@0.{i}" for i in range(1, 6)]
    for name in names:
        request = request_of(name, arrays, {"convention": "xgboost"})
        reply = await service.model_infer(
            request, request.ByteSize(), grpc_server._Call(app, grpc_server.INFER), Context()
        )
        assert [output.name for output in reply.outputs] == ["per_sample", "mean"]  # type: ignore[attr-defined]
    assert list(service._names) == names[:3]
    versioned = request_of(names[0], arrays, {"convention": "xgboost"})
    versioned.model_version = "2"
    with pytest.raises(grpc_server.RefusalError, match="has no version '2'; its one version is 1"):
        await service.model_infer(versioned, versioned.ByteSize(), grpc_server._Call(app, grpc_server.INFER), Context())
