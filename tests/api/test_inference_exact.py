"""The Open Inference Protocol route, answer by answer: the exact response document (JSON and
binary, per-output choices, FP32 for float32), and the exact words of every refusal. Mutation
testing (make mutation) showed substring checks letting changed answers through."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from service.server.api.routes.inference import _decoded_bytes
from tests.api.test_inference import LABELS, LOGITS, infer, tensor
from tests.apps import app_client
from tests.reference import naive

pytestmark = pytest.mark.anyio
PER_SAMPLE, MEAN = naive.scce(LOGITS.astype(np.float64).tolist(), LABELS.tolist(), "torch", from_logits=True)


def split(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    size = int(response.headers["inference-header-content-length"])
    return orjson.loads(response.content[:size]), response.content[size:]


async def test_the_json_answer_document(client: httpx.AsyncClient) -> None:
    response = await infer(
        client,
        "scce",
        [tensor("predictions", LOGITS, "FP32"), tensor("labels", LABELS, "INT64")],
        id="r-7",
        parameters={"from_logits": True, "convention": "torch"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == "sparse_categorical_crossentropy"
    assert body["model_version"] == "1"
    assert body["id"] == "r-7"
    assert set(body["parameters"]) == {"sum", "count", "denominator", "aggregate", "convention", "dtype"}
    assert body["parameters"]["count"] == 8
    assert body["parameters"]["denominator"] == 8.0
    assert body["parameters"]["convention"] == "torch"
    assert body["parameters"]["dtype"] == "float64"
    assert body["parameters"]["sum"] == pytest.approx(sum(PER_SAMPLE), rel=1e-12)
    per_sample, mean = body["outputs"]
    assert {k: v for k, v in per_sample.items() if k != "data"} == {
        "name": "per_sample",
        "datatype": "FP64",
        "shape": [8],
    }
    np.testing.assert_allclose(per_sample["data"], PER_SAMPLE, rtol=1e-12)
    assert mean["name"] == "mean"
    assert mean["shape"] == [1]
    assert mean["data"] == [pytest.approx(MEAN, rel=1e-12)]


async def test_binary_outputs_chosen_one_by_one_in_float32(client: httpx.AsyncClient) -> None:
    response = await infer(
        client,
        "scce",
        [tensor("predictions", LOGITS, "FP32"), tensor("labels", LABELS, "INT64")],
        parameters={"from_logits": True, "convention": "torch", "dtype": "float32"},
        outputs=[
            {"name": "mean", "parameters": {"binary_data": False}},
            {"name": "per_sample", "parameters": {"binary_data": True}},
        ],
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    header, binary = split(response)
    mean, per_sample = header["outputs"]
    assert mean == {"name": "mean", "datatype": "FP32", "shape": [1], "data": [pytest.approx(MEAN, rel=1e-6)]}
    assert per_sample == {
        "name": "per_sample",
        "datatype": "FP32",
        "shape": [8],
        "parameters": {"binary_data_size": 32},
    }
    np.testing.assert_allclose(np.frombuffer(binary, dtype="<f4"), PER_SAMPLE, rtol=1e-6)
    assert header["parameters"]["dtype"] == "float32"


async def test_binary_data_output_by_default_and_json_by_choice(client: httpx.AsyncClient) -> None:
    response = await infer(
        client,
        "scce",
        [tensor("predictions", LOGITS, "FP32"), tensor("labels", LABELS, "INT64")],
        parameters={"from_logits": True, "convention": "torch", "binary_data_output": True},
        outputs=[{"name": "per_sample"}, {"name": "mean", "parameters": {"binary_data": False}}],
    )
    header, binary = split(response)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 64}
    np.testing.assert_allclose(np.frombuffer(binary, dtype="<f8"), PER_SAMPLE, rtol=1e-12)
    assert header["outputs"][1]["data"] == [pytest.approx(MEAN, rel=1e-12)]


GOOD = [tensor("predictions", LOGITS, "FP32"), tensor("labels", LABELS, "INT64")]


@pytest.mark.parametrize(
    ("body", "headers", "error"),
    [
        (b"[1, 2]", {}, "the inference request must be a JSON object"),
        (b'{"inputs": []}', {}, "inputs: must be a non-empty array"),
        (b'{"inputs": [5]}', {}, "inputs[0]: must be an object, got 5"),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
            {},
            ("unexpected input 'x'; inputs are predictions, labels, sample_weight"),
        ),
        (
            b'{"inputs": [{"name": "labels", "shape": [1], "datatype": "FP8", "data": [1]}]}',
            {},
            (
                "input labels: unsupported datatype 'FP8'; use one of BOOL, INT8, INT16, INT32, INT64, UINT8, "
                "UINT16, UINT32, UINT64, FP16, FP32, FP64"
            ),
        ),
        (
            b'{"inputs": [{"name": "labels", "shape": [1, -1], "datatype": "INT64", "data": [1]}]}',
            {},
            "inputs[0].shape[1]: must be a non-negative integer, got -1",
        ),
        (
            b'{"inputs": [{"name": "labels", "shape": "2", "datatype": "INT64", "data": [1]}]}',
            {},
            'inputs[0].shape: must be an array, got "2"',
        ),
        (
            b'{"inputs": [{"name": "labels", "shape": [2], "datatype": "INT64", "data": [1, 2]},'
            b' {"name": "labels", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}',
            {},
            "input 'labels' given twice",
        ),
        (
            b'{"inputs": [{"name": "labels", "shape": [1], "datatype": "INT64", "data": [1]}], "parameters": 3}',
            {},
            "parameters: must be an object, got 3",
        ),
        (
            b'{"inputs": [{"name": "labels", "shape": [1], "datatype": "INT64", "data": ["a"]}]}',
            {},
            ("input labels: data must hold 1 numbers for shape [1]"),
        ),
        (
            b'{"inputs": [{"name": "labels", "shape": [1], "datatype": "INT64", "data": [1]}]}1234',
            {"inference-header-content-length": "x1"},
            "Inference-Header-Content-Length must be an integer",
        ),
    ],
)
async def test_every_refusal_in_its_exact_words(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str], error: str
) -> None:
    response = await client.post("/v2/models/scce/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json() == {"error": error}


async def test_engine_refusals_name_parameters_and_inputs(client: httpx.AsyncClient) -> None:
    wrong_label = await infer(client, "scce", [GOOD[0], tensor("labels", LABELS + 5, "INT64")])
    assert wrong_label.json() == {"error": f"input labels[0]: class label {LABELS[0] + 5} is outside [0, 4]"}
    weights = await infer(
        client,
        "cce",
        [tensor("predictions", LOGITS, "FP32"), tensor("labels", np.eye(5)[LABELS], "FP32")],
        parameters={"from_logits": True, "class_weight": [1.0, 2.0]},
    )
    assert weights.json() == {"error": "parameters.class_weight: needs one value per class (5), got 2"}


async def test_limits_on_declared_shapes_are_met_exactly(client: httpx.AsyncClient) -> None:
    from service.config import Settings

    async with app_client(Settings(max_elements=8)) as small:
        exact = await infer(
            small, "mse", [tensor("predictions", np.ones(8), "FP64"), tensor("labels", np.ones(8), "FP64")]
        )
        assert exact.status_code == 200, exact.text
        over = await infer(
            small, "mse", [tensor("predictions", np.ones(9), "FP64"), tensor("labels", np.ones(9), "FP64")]
        )
        assert over.status_code == 413
        assert over.json() == {"error": "input predictions: 9 numbers; the limit is 8 (LOSS_SERVICE_MAX_ELEMENTS)"}
        empty = b'{"inputs": [{"name": "predictions", "shape": [8, 9, 0], "datatype": "FP64", "data": []}]}'
        answer = await small.post("/v2/models/mse/infer", content=empty)
        assert answer.status_code == 413
        assert answer.json() == {
            "error": "input predictions: shape [8, 9, 0] has a dimension over 8 (LOSS_SERVICE_MAX_ELEMENTS)"
        }
        at_limit = b'{"inputs": [{"name": "predictions", "shape": [8, 0], "datatype": "FP64", "data": []}]}'
        assert (await small.post("/v2/models/mse/infer", content=at_limit)).status_code == 400  # empty, not over


async def test_a_header_as_long_as_the_body_is_all_json(client: httpx.AsyncClient) -> None:
    header = orjson.dumps({"inputs": [spec for spec, _ in GOOD], "parameters": {"from_logits": True}})
    response = await client.post(
        "/v2/models/scce/infer", content=header, headers={"inference-header-content-length": str(len(header))}
    )
    assert response.status_code == 200, response.text
    longer = await client.post(
        "/v2/models/scce/infer", content=header, headers={"inference-header-content-length": str(len(header) + 1)}
    )
    assert longer.json() == {
        "error": f"Inference-Header-Content-Length {len(header) + 1} does not fit a body of {len(header)} bytes"
    }
    unclaimed = await client.post(
        "/v2/models/scce/infer", content=header + b"1234", headers={"inference-header-content-length": str(len(header))}
    )
    assert unclaimed.json() == {"error": "4 bytes of binary data are not claimed by any input"}


def test_the_memory_estimate_counts_json_and_binary_parts() -> None:
    header = b'{"inputs": [1, 2, 3]}'
    binary = b"\0" * 1000
    assert _decoded_bytes(header + binary, len(header)) == _decoded_bytes(header, None) + 2000
    assert _decoded_bytes(header + binary, None) > _decoded_bytes(header, None)
    assert _decoded_bytes(header, len(header) + 5) == _decoded_bytes(header, None)


async def test_binary_tensors_streamed_without_a_content_length_are_read_whole(client: httpx.AsyncClient) -> None:
    """A chunked body has no Content-Length to align the tensors by: it is read as it comes."""
    tensors = [tensor("predictions", LOGITS.astype(np.float32), "FP32", binary=True), tensor("labels", LABELS, "INT64")]
    header = orjson.dumps({"inputs": [spec for spec, _ in tensors], "parameters": {"from_logits": True}})
    body = header + tensors[0][1]

    async def chunks() -> Any:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    response = await client.post(
        "/v2/models/scce/infer", content=chunks(), headers={"inference-header-content-length": str(len(header))}
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    np.testing.assert_allclose(outputs["per_sample"]["data"], PER_SAMPLE, rtol=1e-6)
