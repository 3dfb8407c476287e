"""Open Inference Protocol v2: the real tritonclient against a served process, and the edge cases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from service.engine import compute
from tests.reference import naive
from tests.servers import served
from tests.tolerance import FLOAT32_MEAN_ULPS, assert_close, class_sum_ulps

RNG = np.random.default_rng(4)
LOGITS = RNG.normal(0, 2, (8, 5)).astype(np.float32)
LABELS = RNG.integers(0, 5, 8)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with served() as base:
        yield base


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_gets_the_engines_numbers(url: str, binary: bool) -> None:
    http = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
    client = http.InferenceServerClient(url=url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("scce")
    assert client.get_model_metadata("scce")["name"] == "sparse_categorical_crossentropy"
    predictions = http.InferInput("predictions", list(LOGITS.shape), "FP32")
    predictions.set_data_from_numpy(LOGITS, binary_data=binary)
    labels = http.InferInput("labels", list(LABELS.shape), "INT64")
    labels.set_data_from_numpy(LABELS.astype(np.int64), binary_data=binary)
    outputs = [http.InferRequestedOutput(name, binary_data=binary) for name in ("per_sample", "mean")]
    parameters = {
        "from_logits": True,
        "label_smoothing": 0.1,
        "convention": "torch",
        "dtype": "float32",
        "model": "oip",
    }
    result = client.infer(
        "sparse_categorical_crossentropy", [predictions, labels], outputs=outputs, parameters=parameters
    )
    expected = compute(
        "scce",
        LOGITS,
        LABELS,
        options={"from_logits": True, "label_smoothing": 0.1},
        dtype="float32",
        convention="torch",
    )
    # Bit for bit what the engine gives (what /v1/loss answers), and as accurate as the naive reference says.
    np.testing.assert_array_equal(result.as_numpy("per_sample"), expected.per_sample)
    assert result.as_numpy("mean").tolist() == [np.float32(expected.mean)]
    reference, reference_mean = naive.scce(
        LOGITS.astype(np.float64).tolist(), LABELS.tolist(), "torch", from_logits=True, label_smoothing=0.1
    )
    assert_close(result.as_numpy("per_sample"), reference, "float32", ulps=class_sum_ulps(5))
    assert_close(result.as_numpy("mean")[0], reference_mean, "float32", ulps=FLOAT32_MEAN_ULPS + class_sum_ulps(5))
    assert result.get_response()["parameters"]["count"] == 8
    with pytest.raises(Exception, match=r"\[400\] parameters.from_logits"):
        client.infer("scce", [predictions, labels], parameters={"from_logits": "yes"})
    with pytest.raises(Exception, match=r"\[404\] unknown loss 'nope'"):
        client.infer("nope", [predictions, labels])


def tensor(name: str, array: np.ndarray[Any, Any], datatype: str, binary: bool = False) -> tuple[dict[str, Any], bytes]:
    spec: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
    if binary:
        raw = array.tobytes()
        spec["parameters"] = {"binary_data_size": len(raw)}
        return spec, raw
    spec["data"] = array.tolist()
    return spec, b""


async def infer(
    client: httpx.AsyncClient, loss: str, tensors: list[tuple[dict[str, Any], bytes]], **request: Any
) -> httpx.Response:
    header = orjson.dumps({"inputs": [spec for spec, _ in tensors], **request})
    blobs = b"".join(raw for _, raw in tensors)
    headers = {"inference-header-content-length": str(len(header))} if blobs else {}
    return await client.post(f"/v2/models/{loss}/infer", content=header + blobs, headers=headers)


@pytest.mark.anyio
async def test_server_and_model_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2")).json()["extensions"] == ["binary_tensor_data"]
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get("/v2/models/mse/ready")).json() == {"name": "mean_squared_error", "ready": True}
    missing = await client.get("/v2/models/nope")
    assert missing.status_code == 404
    assert "unknown loss 'nope'" in missing.json()["error"]


@pytest.mark.anyio
async def test_json_tensors_nested_data_bool_labels_and_fp16(client: httpx.AsyncClient) -> None:
    predictions = np.array([[0.25, 0.5], [0.75, 1.0]], dtype=np.float16)
    labels = np.array([[True, False], [False, True]])
    response = await infer(
        client,
        "bce",
        [tensor("predictions", predictions, "FP16"), tensor("labels", labels, "BOOL", binary=True)],
        parameters={"dtype": "float64"},
    )
    assert response.status_code == 200, response.text
    # binary_data_output is not set and no outputs are named: a plain JSON answer
    assert "inference-header-content-length" not in response.headers
    assert response.headers["content-type"] == "application/json"
    body = orjson.loads(response.content)
    per_sample, mean = naive.bce_keras(predictions.astype(np.float64).tolist(), labels.astype(float).tolist())
    np.testing.assert_allclose(body["outputs"][0]["data"], per_sample, rtol=1e-12)
    assert body["outputs"][1]["data"] == [pytest.approx(mean, rel=1e-12)]
    assert {k: v for k, v in body["outputs"][1].items() if k != "data"} == {
        "name": "mean",
        "datatype": "FP64",
        "shape": [1],
    }


@pytest.mark.anyio
async def test_binary_outputs_on_request(client: httpx.AsyncClient) -> None:
    response = await infer(
        client,
        "scce",
        [tensor("predictions", LOGITS, "FP32", binary=True), tensor("labels", LABELS.astype(np.int32), "INT32")],
        parameters={"from_logits": True, "binary_data_output": True},
        id="r-1",
    )
    size = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:size])
    assert header["id"] == "r-1"
    per_sample_bytes = header["outputs"][0]["parameters"]["binary_data_size"]
    per_sample = np.frombuffer(response.content[size : size + per_sample_bytes], dtype="<f8")
    expected, expected_mean = naive.scce(LOGITS.astype(np.float64).tolist(), LABELS.tolist(), "keras", from_logits=True)
    np.testing.assert_allclose(per_sample, expected, rtol=1e-12)
    # Both outputs follow the header back to back, the body ending with the last.
    assert [output["name"] for output in header["outputs"]] == ["per_sample", "mean"]
    mean_bytes = header["outputs"][1]["parameters"]["binary_data_size"]
    assert len(response.content) == size + per_sample_bytes + mean_bytes
    (mean,) = np.frombuffer(response.content[size + per_sample_bytes :], dtype="<f8")
    assert mean == pytest.approx(expected_mean, rel=1e-12)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tensors", "request_fields", "message"),
    [
        ([tensor("predictions", LOGITS, "FP32")], {}, "input labels: Field required"),
        ([tensor("predictions", LOGITS, "FP32"), tensor("extra", LABELS, "INT64")], {}, "unexpected input 'extra'"),
        ([tensor("predictions", LOGITS, "FP33"), tensor("labels", LABELS, "INT64")], {}, "unsupported datatype 'FP33'"),
        (
            [
                ({"name": "predictions", "shape": [8, 5], "datatype": "FP32", "data": [1.0]}, b""),
                tensor("labels", LABELS, "INT64"),
            ],
            {},
            "must hold 40 numbers",
        ),
        (
            [
                tensor("predictions", LOGITS, "FP32"),
                ({"name": "labels", "shape": [8], "datatype": "INT64", "data": [1.0] * 7 + [0.5]}, b""),
            ],
            {},
            "input labels[7]: 0.5 is not an integer or is outside the range of INT64",
        ),
        (
            [tensor("predictions", LOGITS, "FP32"), tensor("labels", LABELS + 9, "INT64")],
            {"parameters": {"from_logits": True}},
            "input labels[0]: class label",
        ),
        (
            [tensor("predictions", LOGITS, "FP32"), tensor("labels", LABELS, "INT64")],
            {"parameters": {"convention": "jax"}},
            "parameters.convention",
        ),
        (
            [tensor("predictions", LOGITS, "FP32"), tensor("labels", LABELS, "INT64")],
            {"parameters": {"from_logits": True}, "outputs": [{"name": "loss"}]},
            "unknown output",
        ),
    ],
)
async def test_inference_errors_are_400_with_an_error_field(
    client: httpx.AsyncClient, tensors: list[tuple[dict[str, Any], bytes]], request_fields: dict[str, Any], message: str
) -> None:
    response = await infer(client, "scce", tensors, **request_fields)
    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.anyio
async def test_binary_framing_errors(client: httpx.AsyncClient) -> None:
    spec, raw = tensor("predictions", LOGITS, "FP32", binary=True)
    header = orjson.dumps({"inputs": [spec, tensor("labels", LABELS, "INT64")[0]]})
    short = await client.post(
        "/v2/models/scce/infer",
        content=header + raw[:-4],
        headers={"inference-header-content-length": str(len(header))},
    )
    assert "ends before" in short.json()["error"]
    extra = await client.post(
        "/v2/models/scce/infer",
        content=header + raw + b"xx",
        headers={"inference-header-content-length": str(len(header))},
    )
    assert "not claimed" in extra.json()["error"]
    wrong = await client.post(
        "/v2/models/scce/infer", content=header + raw, headers={"inference-header-content-length": "99999"}
    )
    assert "does not fit" in wrong.json()["error"]
    broken = await client.post("/v2/models/scce/infer", content=b"{nope")
    assert "malformed inference request JSON" in broken.json()["error"]


def engine_inputs(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray[Any, Any]]:
    """Every `predictions` array the routes hand to the engine, recorded as it passes."""
    import service.usecases.compute

    seen: list[np.ndarray[Any, Any]] = []
    real = service.usecases.compute.compute

    def recording(loss: str, predictions: Any, labels: Any, **kwargs: Any) -> Any:
        seen.append(predictions)
        return real(loss, predictions, labels, **kwargs)

    monkeypatch.setattr(service.usecases.compute, "compute", recording)
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("padding", range(8))
async def test_binary_tensors_reach_the_engine_aligned_whatever_the_header_length(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, padding: int
) -> None:
    """NumPy is slower over misaligned data; the body is received so the tensors start on 64 bytes."""
    seen = engine_inputs(monkeypatch)
    tensors = [tensor("predictions", LOGITS, "FP32", binary=True), tensor("labels", LABELS, "INT64", binary=True)]
    response = await infer(
        client, "scce", tensors, parameters={"from_logits": True, "dtype": "float32"}, id=" " * padding
    )
    assert response.status_code == 200, response.text
    (predictions,) = seen
    assert predictions.ctypes.data % 64 == 0
    expected = compute("scce", LOGITS, LABELS, options={"from_logits": True}, dtype="float32")
    assert response.json()["outputs"][0]["data"] == expected.per_sample.tolist()


async def call_asgi(app: Any, path: str, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, bytes]:
    """One request straight into the ASGI app, its body in `chunks`: framing no HTTP client would send."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("loss-service", 80),
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.anyio
async def test_a_body_that_disagrees_with_its_content_length_is_refused() -> None:
    from service.server.app import create_app

    app = create_app()
    spec, raw = tensor("predictions", LOGITS, "FP32", binary=True)
    header = orjson.dumps({"inputs": [spec, tensor("labels", LABELS, "INT64")[0]]})
    body = header + raw
    for declared, message in ((len(body) - 10, "longer than its Content-Length"), (len(body) + 10, "ended after")):
        headers = {"content-length": str(declared), "inference-header-content-length": str(len(header))}
        async with app.router.lifespan_context(app):
            status, answer = await call_asgi(app, "/v2/models/scce/infer", headers, [body[:100], body[100:]])
        assert status == 400
        assert message in orjson.loads(answer)["error"]


@pytest.mark.anyio
async def test_an_inference_is_recorded_once_and_its_sum_is_the_sum(client: httpx.AsyncClient) -> None:
    """Numbers from the naive float64 reference, not from the engine under test; one request adds
    one batch of exactly its samples to the loss metrics."""
    from tests.reference import naive

    predictions = [[0.5, 2.0], [1.5, -1.0], [3.0, 0.0]]
    labels = [[1.0, 1.0], [1.0, 0.0], [2.0, 2.0]]
    per_sample, mean = naive.mse(predictions, labels, "keras")

    def counted(text: str, name: str) -> float:
        found = [line for line in text.splitlines() if line.startswith(name + "{") and 'model="oip-once"' in line]
        return float(found[0].rsplit(" ", 1)[1]) if found else 0.0

    before = (await client.get("/metrics")).text
    body = {
        "inputs": [
            {"name": "predictions", "shape": [3, 2], "datatype": "FP64", "data": np.ravel(predictions).tolist()},
            {"name": "labels", "shape": [3, 2], "datatype": "FP64", "data": np.ravel(labels).tolist()},
        ],
        "parameters": {"model": "oip-once"},
    }
    response = (await client.post("/v2/models/mse/infer", json=body)).json()
    after = (await client.get("/metrics")).text
    outputs = {output["name"]: output["data"] for output in response["outputs"]}
    np.testing.assert_allclose(outputs["per_sample"], per_sample, rtol=1e-12)
    assert response["parameters"]["sum"] == pytest.approx(sum(per_sample), rel=1e-12)
    assert outputs["mean"] == [pytest.approx(mean, rel=1e-12)]
    assert response["parameters"]["sum"] != pytest.approx(mean)
    for name, added in (("loss_service_batches_total", 1), ("loss_service_samples_total", 3)):
        assert counted(after, name) - counted(before, name) == added, name


def _json_infer_body(predictions: Any, datatype: str, labels: list[int], **dumps: Any) -> bytes:
    shape = list(np.shape(predictions))
    return orjson.dumps(
        {
            "inputs": [
                {"name": "predictions", "shape": shape, "datatype": datatype, "data": predictions},
                {"name": "labels", "shape": [len(labels)], "datatype": "INT64", "data": labels},
            ],
            "parameters": {"from_logits": True},
        },
        **dumps,
    )


@pytest.mark.anyio
@pytest.mark.parametrize("writer", ["by hand", "orjson from float32"])
async def test_fp32_json_tensors_at_float32s_shortest_decimals_are_rounded_to_fp32(
    client: httpx.AsyncClient, writer: str
) -> None:
    """What orjson, JavaScript and most languages write for float32 (0.1, not 0.10000000149011612):
    rounded to FP32, as Triton, KServe and MLServer do, then computed like the same binary tensor."""
    if writer == "by hand":
        body = _json_infer_body([[0.1, 0.2, 0.3], [2.5, -1.7, 0.3]], "FP32", [2, 0])
        rounded = np.array([[0.1, 0.2, 0.3], [2.5, -1.7, 0.3]], dtype=np.float32)
        labels = [2, 0]
    else:
        rounded = LOGITS
        labels = LABELS.tolist()
        body = _json_infer_body(LOGITS, "FP32", labels, option=orjson.OPT_SERIALIZE_NUMPY)
        assert b"0000000" not in body  # written at float32's shortest decimals
    response = await client.post("/v2/models/scce/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    expected, _ = naive.scce(rounded.astype(np.float64).tolist(), labels, "keras", from_logits=True)
    np.testing.assert_allclose(orjson.loads(response.content)["outputs"][0]["data"], expected, rtol=1e-12)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("datatype", "data", "error"),
    [
        ("FP32", [[0.5, 1e39, 0.1]], "input predictions[0][1]: 1e+39 overflows FP32 to infinity"),
        ("FP16", [[0.5, 0.25, 70000.0]], "input predictions[0][2]: 70000.0 overflows FP16 to infinity"),
        ("UINT8", [[1, 300, 2]], "input predictions[0][1]: 300 is not a value of UINT8"),
        ("INT8", [[1, 2, -3.5]], "input predictions[0][2]: -3.5 is not an integer or is outside the range of INT8"),
    ],
)
async def test_json_numbers_that_the_datatype_cannot_hold_are_refused_by_index(
    client: httpx.AsyncClient, datatype: str, data: list[list[float]], error: str
) -> None:
    body = _json_infer_body(data, datatype, [0])
    response = await client.post("/v2/models/scce/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json() == {"error": error}


@pytest.mark.anyio
async def test_metadata_and_readiness_answers_as_the_protocol_describes(client: httpx.AsyncClient) -> None:
    metadata = await client.get("/v2/models/scce")
    assert metadata.status_code == 200
    assert metadata.headers["content-type"] == "application/json"
    assert metadata.json() == {
        "name": "sparse_categorical_crossentropy",
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
    server = await client.get("/v2")
    assert server.headers["content-type"] == "application/json"
    assert server.json()["name"] == "loss-service"
    missing = await client.get("/v2/models/nope/ready")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"


@pytest.mark.anyio
async def test_readiness_is_503_while_the_service_is_not_ready() -> None:
    from service.server.app import create_app

    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://o") as client:
            app.state.lifecycle = "draining"
            for path, body in (("/v2/health/ready", {"ready": False}), ("/v2/models/mse/ready", None)):
                answer = await client.get(path)
                assert answer.status_code == 503, path
                assert answer.headers["content-type"] == "application/json"
                if body is not None:
                    assert answer.json() == body
            assert (await client.get("/v2/models/mse/ready")).json() == {"name": "mean_squared_error", "ready": False}
            assert (await client.get("/v2/health/live")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("parameters", "labels", "error"),
    [
        ({"label_smoothing": 2.0}, LABELS, "parameters.label_smoothing: Input should be less than or equal to 1"),
        ({"dtype": "float16"}, LABELS, "parameters.dtype: Input should be 'float64' or 'float32'"),
        ({"bogus": 1}, LABELS, "parameters.bogus: Extra inputs are not permitted"),
    ],
)
async def test_validation_errors_use_the_protocols_names(
    client: httpx.AsyncClient, parameters: dict[str, Any], labels: np.ndarray[Any, Any], error: str
) -> None:
    """Options are the request's `parameters`, batch fields too; arrays are `input <name>`."""
    response = await infer(
        client,
        "scce",
        [tensor("predictions", LOGITS, "FP32"), tensor("labels", labels, "INT64")],
        parameters=parameters,
    )
    assert response.status_code == 400, response.text
    assert response.json() == {"error": error}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("outputs", "error"),
    [
        ([{"name": "loss"}], "outputs[0]: unknown output 'loss'; outputs are per_sample, mean"),
        ([{"name": "mean"}, {"name": "mean"}], "outputs[1]: output 'mean' requested twice"),
        (
            [{"name": "mean", "parameters": {"binary_data": 1}}],
            "outputs[0].parameters.binary_data: must be a boolean, got 1",
        ),
    ],
)
async def test_requested_outputs_are_checked_before_the_loss_is_computed(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, outputs: list[Any], error: str
) -> None:
    """A request that will be refused costs no computation, and no batch is recorded for it."""
    seen = engine_inputs(monkeypatch)
    response = await infer(
        client, "mse", [tensor("predictions", LOGITS, "FP32"), tensor("labels", LOGITS, "FP32")], outputs=outputs
    )
    assert response.status_code == 400, response.text
    assert response.json() == {"error": error}
    assert seen == []


@pytest.mark.anyio
async def test_null_optional_fields_are_absent_ones(client: httpx.AsyncClient) -> None:
    """Clients that serialise every optional field write null for the ones they do not set."""
    predictions, _ = tensor("predictions", LOGITS, "FP32")
    labels, raw = tensor("labels", LABELS, "INT64", binary=True)
    response = await infer(
        client,
        "scce",
        [({**predictions, "parameters": None}, b""), (labels, raw)],
        id=None,
        parameters={"from_logits": True, "binary_data_output": None},
        outputs=[{"name": "mean", "parameters": None}, {"name": "per_sample", "parameters": {"binary_data": None}}],
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert "id" not in answer
    assert [output["name"] for output in answer["outputs"]] == ["mean", "per_sample"]
    assert all("data" in output for output in answer["outputs"])


def test_the_openapi_request_body_is_the_protocols_inference_request() -> None:
    from service.server.app import create_app

    operation = create_app().openapi()["paths"]["/v2/models/{loss}/infer"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["inputs"]
    assert schema["additionalProperties"] is False
    request_input = schema["properties"]["inputs"]["items"]
    assert request_input["required"] == ["name", "shape", "datatype"]
    assert request_input["properties"]["shape"]["items"] == {"type": "integer", "minimum": 0}
    assert "$ref" not in json.dumps(schema)  # definitions in place: the route has no components of its own
    assert "application/octet-stream" in operation["requestBody"]["content"]


@pytest.mark.parametrize(
    "request_with",
    [
        lambda keys: {"inputs": [{"name": "labels", "shape": [1], "datatype": "FP64", "data": [1.0], **keys}]},
        lambda keys: {"inputs": [{"name": "labels", "shape": [1], "datatype": "FP64", "data": [1.0]}], **keys},
        lambda keys: {
            "inputs": [{"name": "labels", "shape": [1], "datatype": "FP64", "parameters": {k: [1] for k in keys}}]
        },
        lambda keys: {"inputs": [], "outputs": [{"name": "mean", "parameters": dict.fromkeys(keys)}]},
    ],
    ids=["input-fields", "request-fields", "input-parameters", "output-parameters"],
)
def test_an_object_of_many_wrong_keys_is_one_error_whatever_its_size(
    monkeypatch: pytest.MonkeyPatch, request_with: Any
) -> None:
    """Pydantic builds an error per wrong key (~2 us each: 64 MB of them is seconds of CPU); one
    pass names the first and counts the rest, so twice the keys is not twice the errors."""
    from service.server.api import oip_schema

    built: list[int] = []
    real = oip_schema.refusal_message

    def counting(exc: Any) -> str:
        built.append(exc.error_count())
        return real(exc)

    monkeypatch.setattr(oip_schema, "refusal_message", counting)
    for size in (1_000, 2_000):
        with pytest.raises(oip_schema.InferenceRequestError, match=f"k0: .*and {size - 1:,} more like it"):
            oip_schema.validated_request(request_with({f"k{i}": i for i in range(size)}))
    assert built[0] == built[1] <= 2


@pytest.mark.anyio
async def test_the_losss_own_refusals_show_three_and_count_the_rest(client: httpx.AsyncClient) -> None:
    """Ten unknown options are ten errors; the answer names three, as the schema's refusals do."""
    response = await infer(
        client,
        "mse",
        [tensor("predictions", LOGITS, "FP32"), tensor("labels", LOGITS, "FP32")],
        parameters={f"bogus{i}": 1 for i in range(10)},
    )
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": "parameters.bogus0: Extra inputs are not permitted; parameters.bogus1: Extra inputs are not "
        "permitted; parameters.bogus2: Extra inputs are not permitted; and 7 more"
    }


@pytest.mark.parametrize(
    ("locs", "message"),
    [
        ([["body", "options", "gamma"]], "parameters.gamma: bad"),
        ([["body", "loss"]], "parameters.loss: bad"),
        ([["body", "dtype"]], "parameters.dtype: bad"),
        ([["body", "model"]], "parameters.model: bad"),
        ([["body", "predictions", 2, 0]], "input predictions.2.0: bad"),
        ([["body", "sample_weight"]], "input sample_weight: bad"),
        ([["body"]], "request: bad"),
        ([["body", "other"]], "other: bad"),
        ([["body", "labels"]] * 3, "; ".join(["input labels: bad"] * 3)),
        ([["body", "labels"]] * 5, "; ".join(["input labels: bad"] * 3) + "; and 2 more"),
    ],
)
def test_a_refusals_fields_take_the_protocols_names(locs: list[list[Any]], message: str) -> None:
    """The one-string error of the Open Inference Protocol names options as parameters, the batch's
    settings as parameters too, and the tensors as inputs; three errors at most, then a count."""
    from service.server.api.oip_codec import oip_message

    assert oip_message([{"loc": loc, "msg": "bad"} for loc in locs]) == message
