"""POST /v1/loss with npz and Arrow bodies, and npz responses."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from service.server.api.body.npz import _stored_npz_arrays
from tests.api.test_api import problem

pytestmark = pytest.mark.anyio
PREDICTIONS = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
LABELS = np.array([1, 2])
NPZ = {"content-type": "application/x-npz"}
ARROW = {"content-type": "application/vnd.apache.arrow.stream"}


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def arrow(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


async def test_npz_body_gives_the_json_answer(client: httpx.AsyncClient) -> None:
    expected = (
        await client.post("/v1/loss", json={"loss": "scce", "predictions": PREDICTIONS.tolist(), "labels": [1, 2]})
    ).json()
    response = await client.post(
        "/v1/loss", params={"loss": "scce"}, content=npz(predictions=PREDICTIONS, labels=LABELS), headers=NPZ
    )
    assert response.status_code == 200
    assert response.json() == expected


def npz_compressed(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "body",
    [
        npz(predictions=np.asfortranarray(PREDICTIONS), labels=LABELS),
        npz(predictions=PREDICTIONS.astype(">f8"), labels=LABELS.astype(">i4")),
        npz_compressed(predictions=PREDICTIONS, labels=LABELS),  # not stored: np.load reads it
    ],
    ids=["fortran-order", "big-endian", "compressed"],
)
async def test_every_npz_layout_gives_the_json_answer(client: httpx.AsyncClient, body: bytes) -> None:
    expected = (
        await client.post("/v1/loss", json={"loss": "scce", "predictions": PREDICTIONS.tolist(), "labels": [1, 2]})
    ).json()
    response = await client.post("/v1/loss", params={"loss": "scce"}, content=body, headers=NPZ)
    assert response.json() == expected


def test_stored_npz_arrays_are_read_only_views_of_the_body() -> None:
    body = npz(predictions=PREDICTIONS, labels=LABELS)
    arrays = _stored_npz_arrays(body)
    assert arrays is not None
    for name, expected in {"predictions": PREDICTIONS, "labels": LABELS}.items():
        np.testing.assert_array_equal(arrays[name], expected)
        assert np.shares_memory(arrays[name], np.frombuffer(body, np.uint8))
        assert not arrays[name].flags.writeable
    assert _stored_npz_arrays(npz_compressed(predictions=PREDICTIONS)) is None
    corrupted = bytearray(body)
    corrupted[corrupted.find(b"NUMPY") + 130] ^= 0x01
    with pytest.raises(zipfile.BadZipFile, match=r"Bad CRC-32 for file 'predictions\.npy'"):
        _stored_npz_arrays(bytes(corrupted))  # the views are checked where they lie, not trusted


async def test_a_corrupted_npz_member_fails_its_crc_check(client: httpx.AsyncClient) -> None:
    body = bytearray(npz(predictions=PREDICTIONS, labels=LABELS))
    body[body.find(b"NUMPY") + 130] ^= 0x01  # one bit inside the predictions' data
    response = await client.post("/v1/loss", params={"loss": "scce"}, content=bytes(body), headers=NPZ)
    assert problem(response, 400)["detail"] == "malformed npz: Bad CRC-32 for file 'predictions.npy'"


async def test_npz_float32_with_options_and_weights(client: httpx.AsyncClient) -> None:
    body = npz(predictions=PREDICTIONS.astype(np.float32), labels=LABELS, sample_weight=np.array([1.0, 0.0]))
    params = {"loss": "scce", "dtype": "float32", "convention": "torch", "options": '{"ignore_index": 0}', "model": "m"}
    answer = (await client.post("/v1/loss", params=params, content=body, headers=NPZ)).json()
    assert answer["dtype"] == "float32"
    assert answer["per_sample"][1] == 0.0
    assert answer["mean"] == pytest.approx(-np.log(np.float32(0.95)), rel=1e-6)


async def test_arrow_stream_with_fixed_size_list_predictions(client: httpx.AsyncClient) -> None:
    table = pa.table(
        {"predictions": pa.FixedSizeListArray.from_arrays(pa.array(PREDICTIONS.ravel()), 3), "labels": pa.array(LABELS)}
    )
    answer = (await client.post("/v1/loss", params={"loss": "scce"}, content=arrow(table), headers=ARROW)).json()
    assert answer["mean"] == pytest.approx(1.176939193690798, rel=1e-15)


async def test_npz_response_when_asked(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/loss",
        params={"loss": "scce"},
        content=npz(predictions=PREDICTIONS, labels=LABELS),
        headers={**NPZ, "accept": "application/x-npz"},
    )
    assert response.headers["content-type"] == "application/x-npz"
    with np.load(io.BytesIO(response.content), allow_pickle=False) as result:
        assert result["per_sample"].tolist() == pytest.approx([0.0512932943875505, 2.302585092994045], rel=1e-15)
        assert result["loss"].item() == "sparse_categorical_crossentropy"
        assert result["count"].item() == 2


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        (b"not a zip", NPZ, 400, "not a zip archive"),
        (b"PK\x03\x04 broken", NPZ, 400, "malformed npz"),
        (b"\xff\xff\xff\xff garbage", ARROW, 400, "malformed Arrow stream"),
    ],
)
async def test_malformed_binary_bodies(
    client: httpx.AsyncClient, content: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    body = problem(await client.post("/v1/loss", params={"loss": "scce"}, content=content, headers=headers), status)
    assert message in body["detail"]


async def test_binary_errors_name_the_array_index_or_query_parameter(client: httpx.AsyncClient) -> None:
    body = problem(
        await client.post(
            "/v1/loss",
            params={"loss": "scce"},
            content=npz(predictions=PREDICTIONS, labels=LABELS, extra=LABELS),
            headers=NPZ,
        ),
        422,
    )
    assert body["errors"][0]["loc"] == ["body", "extra"]
    nan = PREDICTIONS.copy()
    nan[1, 2] = np.nan
    body = problem(
        await client.post(
            "/v1/loss", params={"loss": "scce"}, content=npz(predictions=nan, labels=LABELS), headers=NPZ
        ),
        422,
    )
    assert body["errors"][0]["loc"] == ["body", "predictions", 1, 2]
    body = problem(await client.post("/v1/loss", content=npz(predictions=PREDICTIONS, labels=LABELS), headers=NPZ), 422)
    assert body["errors"][0]["loc"] == ["query", "loss"]
    body = problem(
        await client.post(
            "/v1/loss",
            params={"loss": "scce", "dtype": "float16"},
            content=npz(predictions=PREDICTIONS, labels=LABELS),
            headers=NPZ,
        ),
        422,
    )
    assert body["errors"][0]["loc"] == ["query", "dtype"]
    body = problem(
        await client.post(
            "/v1/loss", params={"loss": "scce"}, content=npz(predictions=PREDICTIONS > 0.5, labels=LABELS), headers=NPZ
        ),
        422,
    )
    assert "got an array of bool" in body["errors"][0]["msg"]


async def test_evaluate_still_takes_json_only(client: httpx.AsyncClient) -> None:
    body = problem(
        await client.post("/v1/evaluate", content=npz(predictions=PREDICTIONS, labels=LABELS), headers=NPZ), 415
    )
    assert "application/json" in body["detail"]


async def test_misaligned_npz_members_reach_the_engine_aligned(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An npz member lies wherever the archive put it; a misaligned one is copied once, aligned."""
    from tests.api.test_inference import engine_inputs

    seen = engine_inputs(monkeypatch)
    predictions = np.random.default_rng(0).normal(size=(64, 7))
    body = npz(predictions=predictions, labels=np.arange(64) % 7)
    view = _stored_npz_arrays(body)["predictions"]
    assert not view.flags.aligned  # np.savez's layout, so this test checks what it claims to
    response = await client.post(
        "/v1/loss", params={"loss": "scce", "options": '{"from_logits": true}'}, content=body, headers=NPZ
    )
    assert response.status_code == 200
    assert seen[0].flags.aligned
    np.testing.assert_array_equal(seen[0], predictions)


def test_arrow_columns_are_views_of_the_body() -> None:
    """A one-batch Arrow stream's columns are read in place: no copy of a large body's arrays."""
    from service.server.api.body.arrow import arrow_arrays

    predictions = np.random.default_rng(0).normal(size=(50, 4))
    table = pa.table(
        {"predictions": pa.FixedSizeListArray.from_arrays(pa.array(predictions.ravel()), 4), "labels": np.arange(50)}
    )
    body = arrow(table)
    arrays = arrow_arrays(body)
    whole = np.frombuffer(body, dtype=np.uint8)
    assert np.shares_memory(arrays["predictions"], whole)
    assert np.shares_memory(arrays["labels"], whole)
    np.testing.assert_array_equal(arrays["predictions"], predictions)
    np.testing.assert_array_equal(arrays["labels"], np.arange(50))
