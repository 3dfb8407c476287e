"""The body readers' edges, each found by mutation testing (make mutation) to be unguarded: pickles,
npz headers of format 2.0, limits met exactly, members in any order, the field-by-field JSON path,
Arrow column types, and the exact words of each refusal."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pytest

from service.config import Settings
from service.server.api.body import decoded_bytes, json_decoded_bytes, validate_json
from service.server.api.body import json as body_module
from service.server.api.body.npz import npz_arrays
from service.server.api.problems import ProblemError
from service.server.api.schemas import loss_request_adapter
from tests.api.test_api import problem
from tests.apps import app_client

pytestmark = pytest.mark.anyio
NPZ = {"content-type": "application/x-npz"}
ARROW = {"content-type": "application/vnd.apache.arrow.stream"}
PREDICTIONS = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
LABELS = np.array([1, 2])


def npy(array: np.ndarray, version: tuple[int, int] = (1, 0)) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version, allow_pickle=True)
    return buffer.getvalue()


def npz_of(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


class _Touch:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.path).touch, ())


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
async def test_a_pickled_member_is_never_loaded(client: httpx.AsyncClient, tmp_path: Path, compression: int) -> None:
    marker = tmp_path / "unpickled"
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = _Touch(str(marker)), 1
    body = npz_of({"predictions.npy": npy(objects), "labels.npy": npy(LABELS)}, compression)
    response = await client.post("/v1/loss", params={"loss": "mse"}, content=body, headers=NPZ)
    assert problem(response, 400)["detail"] == ("malformed npz: Object arrays cannot be loaded when allow_pickle=False")
    assert not marker.exists()
    assert pickle.dumps(objects)  # the payload itself is a working pickle


def test_declared_sizes_are_read_from_format_2_headers_too() -> None:
    huge_header = npy(np.zeros(3), version=(2, 0)).replace(b"(3,)", b"(10000000000000,)")
    body = npz_of({"predictions.npy": huge_header, "labels.npy": npy(LABELS)})
    with pytest.raises(ProblemError) as refused:
        npz_arrays(body, max_elements=100)
    assert refused.value.status == 413
    assert refused.value.detail == (
        "array 'predictions' declares 10,000,000,000,000 numbers; the limit is 100 (LOSS_SERVICE_MAX_ELEMENTS)"
    )


def test_a_member_of_exactly_the_limit_is_read_and_one_more_is_not() -> None:
    body = npz_of({"predictions.npy": npy(np.zeros(6)), "labels.npy": npy(np.zeros(6))})
    assert npz_arrays(body, max_elements=6)["predictions"].size == 6
    with pytest.raises(ProblemError, match="declares 6 numbers; the limit is 5"):
        npz_arrays(body, max_elements=5)


def test_members_are_checked_whatever_comes_before_them() -> None:
    """A member that is not .npy, or of another .npy version, does not end the check of the rest."""
    huge = npy(np.zeros(3)).replace(b"(3,)", b"(10000000000,)")
    other_version = npy(np.zeros(2), version=(3, 0))
    for first in (b"not an npy file", other_version):
        body = npz_of({"notes.txt": first, "predictions.npy": huge})
        with pytest.raises(ProblemError, match="array 'predictions' declares 10,000,000,000 numbers"):
            npz_arrays(body, max_elements=1000)


def test_a_stored_npz_is_read_in_place_and_a_compressed_one_is_not() -> None:
    stored = npz_of({"predictions.npy": npy(PREDICTIONS), "labels.npy": npy(LABELS)})
    arrays = npz_arrays(stored)
    assert all(np.shares_memory(array, np.frombuffer(stored, np.uint8)) for array in arrays.values())
    np.testing.assert_array_equal(arrays["predictions"], PREDICTIONS)
    compressed = npz_of({"predictions.npy": npy(PREDICTIONS), "labels.npy": npy(LABELS)}, zipfile.ZIP_DEFLATED)
    np.testing.assert_array_equal(npz_arrays(compressed)["predictions"], PREDICTIONS)


def test_a_member_whose_data_is_shorter_than_its_header_says_is_not_a_view() -> None:
    """The in-place reader takes an array only when its bytes are exactly what the header declares."""
    short = npy(np.arange(4.0))[:-8]  # one number missing
    body = npz_of({"predictions.npy": short})
    with pytest.raises(ProblemError) as refused:
        npz_arrays(body)
    assert refused.value.status == 400
    assert refused.value.detail.startswith("malformed npz: ")


async def test_malformed_binary_bodies_are_named(client: httpx.AsyncClient) -> None:
    not_zip = await client.post("/v1/loss", params={"loss": "mse"}, content=b"not a zip", headers=NPZ)
    assert problem(not_zip, 400)["detail"] == "malformed npz: not a zip archive (an npz body starts with the bytes PK)"
    garbage = await client.post("/v1/loss", params={"loss": "mse"}, content=b"\xff\xff\xff\xff garbage", headers=ARROW)
    assert problem(garbage, 400)["detail"].startswith("malformed Arrow stream: ")


def _arrow(table: pa.Table, compression: str | None = None) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)
    return sink.getvalue()


@pytest.mark.parametrize(
    "predictions",
    [
        pa.array([[0.5, 0.5], [0.25, 0.75]], type=pa.list_(pa.float64())),
        pa.array([[0.5, 0.5], [0.25, 0.75]], type=pa.large_list(pa.float64())),
        pa.array([[0.5, 0.5], [0.25, 0.75]], type=pa.list_(pa.float32(), 2)),
    ],
    ids=["list", "large_list", "fixed_size_list"],
)
async def test_arrow_lists_of_numbers_are_columns(client: httpx.AsyncClient, predictions: pa.Array) -> None:
    body = _arrow(pa.table({"predictions": predictions, "labels": pa.array([[1.0, 0.0], [0.0, 1.0]])}))
    response = await client.post("/v1/loss", params={"loss": "mse"}, content=body, headers=ARROW)
    assert response.status_code == 200, response.text
    assert response.json()["per_sample"] == pytest.approx([0.25, 0.0625])


async def test_arrow_refusals_say_what_and_why(client: httpx.AsyncClient) -> None:
    strings = _arrow(pa.table({"predictions": pa.array([["a"], ["b"]]), "labels": pa.array([1.0, 0.0])}))
    answer = problem(await client.post("/v1/loss", params={"loss": "mse"}, content=strings, headers=ARROW), 422)
    assert answer["detail"] == (
        "body: Arrow column 'predictions' has type list<item: string>; columns must be numbers "
        "or (fixed-size) lists of numbers"
    )
    assert answer["errors"] == [{"loc": ["body", "predictions"], "msg": "unsupported Arrow type list<item: string>"}]
    zeros = pa.array(np.zeros(4))
    compressed = _arrow(pa.table({"predictions": zeros, "labels": zeros}), "zstd")
    answer = problem(await client.post("/v1/loss", params={"loss": "mse"}, content=compressed, headers=ARROW), 415)
    assert answer["detail"] == (
        "Arrow buffer compression (LZ4, ZSTD) is not accepted: its decoded size is unknown until it is "
        "decoded. Send the stream uncompressed, with Content-Encoding: gzip if the transfer size matters"
    )


@pytest.fixture
def fieldwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every body takes the field-by-field path, which otherwise starts at 32 MiB."""
    monkeypatch.setattr(body_module, "FIELDWISE_BYTES", 0)


def test_the_fieldwise_path_refuses_a_boolean_in_an_array_by_index(fieldwise: None) -> None:
    for text, index in ((b"[[0.5, true], [0.25, 0.75]]", [0, 1]), (b"[[0.5, 0.5], [false, 0.75]]", [1, 0])):
        body = b'{"loss": "mse", "options": {}, "predictions": ' + text + b', "labels": [[1, 0], [0, 1]]}'
        with pytest.raises(ProblemError) as refused:
            validate_json(loss_request_adapter(), body)
        assert refused.value.errors is not None
        assert refused.value.errors[0]["loc"] == ["body", "predictions", *index]
        assert refused.value.errors[0]["msg"] == "expected a number, got a boolean"


def test_the_fieldwise_path_counts_booleans_outside_the_arrays(fieldwise: None) -> None:
    body = (
        b'{"loss": "bce", "options": {"from_logits": false}, "predictions": [[0.5, 0.25]], '
        b'"labels": [[1, 0]], "chunk": false}'
    )
    request = validate_json(loss_request_adapter(), body)
    np.testing.assert_array_equal(request.predictions, [[0.5, 0.25]])


def test_the_fieldwise_path_names_a_repeated_key(fieldwise: None) -> None:
    body = b'{"loss": "mse", "predictions": [[0.5]], "labels": [[1.0]], "labels": [[0.0]]}'
    with pytest.raises(ProblemError) as refused:
        validate_json(loss_request_adapter(), body)
    assert refused.value.status == 422
    assert refused.value.detail == "key 'labels' appears more than once in the top-level object"


def test_the_fieldwise_path_reads_strings_inside_arrays_as_the_ordinary_one(fieldwise: None) -> None:
    body = b'{"loss": "mse", "predictions": [[0.5, "x"]], "labels": [[1.0, 0.0]]}'
    with pytest.raises(ProblemError) as refused:
        validate_json(loss_request_adapter(), body)
    assert refused.value.errors is not None
    assert refused.value.errors[0]["loc"] == ["body", "predictions", 0, 1]


async def test_an_arrow_list_column_with_ragged_rows_is_refused_by_row(client: httpx.AsyncClient) -> None:
    ragged = pa.array([[0.5, 0.5], [0.25, 0.5, 0.25]], type=pa.list_(pa.float64()))
    body = _arrow(pa.table({"predictions": ragged, "labels": pa.array([1.0, 0.0])}))
    answer = problem(await client.post("/v1/loss", params={"loss": "mse"}, content=body, headers=ARROW), 400)
    assert answer["detail"] == ("malformed Arrow stream: row 1 has 3 values and row 0 has 2: rows must be equally long")


def test_the_quote_count_accounts_for_every_key_and_string_exactly() -> None:
    """`loads` trusts orjson's tree only when the body's quotes are exactly two per key and string
    in it: counted too few, every such body takes the slow exact parse; too many, a repeated key
    could hide behind a string counted twice."""
    bodies = [
        b'{"loss": "mse", "predictions": [[0.5]], "labels": [[1.0]]}',
        b'{"ids": ["a", "b", "c"], "predictions": [[0.5], [0.25], [1]]}',
        b'{"rows": [["x", 1], ["y", 2]], "nested": [[["deep", "er"]]], "empty": []}',
        b'{"objects": [{"k": "v"}, {"k": ["w", "z"]}], "n": null, "t": true, "s": ""}',
        b'["top", {"level": "list"}]',
        b'"just a string"',
    ]
    for body in bodies:
        assert body_module._count(body, b'"') == 2 * body_module._strings_in(orjson.loads(body)), body
    # Never too many: a repeated key, or a string inside an array of numbers (not looked for, it
    # only costs the exact parse), leaves quotes over.
    for body in (b'{"ids": ["a"], "ids": ["b"], "predictions": [[0.5]]}', b'{"predictions": [[0.5, "x"]]}'):
        assert body_module._count(body, b'"') > 2 * body_module._strings_in(orjson.loads(body)), body


def test_an_escaped_quote_takes_the_exact_parse_and_reads_the_same() -> None:
    body = b'{"loss": "mse", "model": "say \\"hi\\"", "predictions": [[0.5]], "labels": [[1.0]]}'
    assert body_module.loads(body) == orjson.loads(body)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"options": {"class_weight": {"0": 1, "0": 2}}}', "key '0' appears more than once in options.class_weight"),
        (b'{"predictions": [1, {"a": 1, "a": 2}]}', "key 'a' appears more than once in predictions.1"),
        (b'{"rows": [[0.5], [{"b": 1, "b": 2}]]}', "key 'b' appears more than once in rows.1.0"),
    ],
)
def test_a_repeated_key_is_named_where_it_is(body: bytes, detail: str) -> None:
    with pytest.raises(body_module.RepeatedKeyError, match=re.escape(detail) + "$"):
        body_module.loads(body)


def test_the_fieldwise_path_tells_booleans_in_the_arrays_from_booleans_beside_them(fieldwise: None) -> None:
    body = b'{"loss": "bce", "options": {"from_logits": false}, "predictions": [[0.5, true]], "labels": [[1, 0]]}'
    with pytest.raises(ProblemError) as refused:
        validate_json(loss_request_adapter(), body)
    assert refused.value.errors == [{"loc": ["body", "predictions", 0, 1], "msg": "expected a number, got a boolean"}]


def test_the_fieldwise_path_counts_elements_against_the_limit(fieldwise: None) -> None:
    body = b'{"loss": "mse", "predictions": [[0.5, 0.5], [0.5, 0.5]], "labels": [[1, 0], [0, 1]]}'
    assert validate_json(loss_request_adapter(), body, max_elements=4).predictions.shape == (2, 2)
    with pytest.raises(ProblemError) as refused:
        validate_json(loss_request_adapter(), body, max_elements=3)
    assert refused.value.status == 413


def test_a_body_orjson_refuses_is_still_checked_for_booleans_and_the_element_limit() -> None:
    """NaN and Infinity literals are not JSON; pydantic-core reads them so that they are named by
    index, and the other checks still apply on that path."""
    one_boolean = b'{"loss": "mse", "predictions": [[Infinity, true]], "labels": [[1, 0]]}'
    with pytest.raises(ProblemError) as refused:
        validate_json(loss_request_adapter(), one_boolean)
    assert refused.value.errors is not None
    assert {"loc": ["body", "predictions", 0, 1], "msg": "expected a number, got a boolean"} in refused.value.errors
    four = b'{"loss": "mse", "predictions": [[1, 2, 3, Infinity]], "labels": [[1, 0, 1, 1]]}'
    with pytest.raises(ProblemError) as too_many:
        validate_json(loss_request_adapter(), four, max_elements=3)
    assert (too_many.value.status, too_many.value.detail) == (
        413,
        "an array holds 4 numbers; the limit is 3 (LOSS_SERVICE_MAX_ELEMENTS)",
    )


async def test_an_unexpected_array_is_named_with_the_ones_expected(client: httpx.AsyncClient) -> None:
    body = npz_of({"predictions.npy": npy(PREDICTIONS), "labels.npy": npy(LABELS), "weights.npy": npy(LABELS)})
    answer = problem(await client.post("/v1/loss", params={"loss": "scce"}, content=body, headers=NPZ), 422)
    assert answer["detail"] == "body: unexpected array 'weights'; expected predictions, labels, sample_weight"
    assert answer["errors"] == [
        {"loc": ["body", "weights"], "msg": "unexpected array; expected predictions, labels, sample_weight"}
    ]


async def test_an_arrow_body_is_held_to_the_element_limit() -> None:
    body = _arrow(pa.table({"predictions": pa.array([0.5] * 4), "labels": pa.array([1.0] * 4)}))
    async with app_client(Settings(max_elements=3)) as c:
        answer = problem(await c.post("/v1/loss", params={"loss": "mse"}, content=body, headers=ARROW), 413)
        assert answer["detail"] == "an array holds 4 numbers; the limit is 3 (LOSS_SERVICE_MAX_ELEMENTS)"
    async with app_client(Settings(max_elements=4)) as c:
        assert (await c.post("/v1/loss", params={"loss": "mse"}, content=body, headers=ARROW)).status_code == 200


def test_a_format_2_member_is_read_in_place() -> None:
    stored = npz_of({"predictions.npy": npy(PREDICTIONS, (2, 0)), "labels.npy": npy(LABELS, (2, 0))})
    arrays = npz_arrays(stored)
    assert all(np.shares_memory(array, np.frombuffer(stored, np.uint8)) for array in arrays.values())
    np.testing.assert_array_equal(arrays["predictions"], PREDICTIONS)
    np.testing.assert_array_equal(arrays["labels"], LABELS)


def test_the_memory_estimate_of_binary_bodies_is_its_formula() -> None:
    """npz: the body, plus twice what the members declare (inflated, then an aligned or converted
    copy); a malformed one counts the body only. Arrow: the body and one conversion."""
    body = npz_of({"predictions.npy": npy(PREDICTIONS), "labels.npy": npy(LABELS)}, zipfile.ZIP_DEFLATED)
    declared = PREDICTIONS.nbytes + LABELS.nbytes
    assert decoded_bytes("application/x-npz", body) == len(body) + 2 * declared
    assert decoded_bytes("application/x-npz", b"PK not a zip") == len(b"PK not a zip")
    arrow = _arrow(pa.table({"predictions": pa.array([0.5] * 4), "labels": pa.array([1.0] * 4)}))
    assert decoded_bytes("application/vnd.apache.arrow.stream", arrow) == 2 * len(arrow)
    assert json_decoded_bytes(b"[[1,2],[3,4]]") == 13 + 96 * 4 + 96 * 3
    assert json_decoded_bytes(memoryview(b"[1]")) == 3 + 96 + 96
    # 3 numbers (2 commas), 1 array, 2 objects (128 bytes each), 3 keys (160 bytes each)
    assert json_decoded_bytes(b'{"a":[1,2],"b":{"c":3}}') == 23 + 96 * 3 + 96 + 128 * 2 + 160 * 3


def _with_flag(body: bytes, offset: int, flag: int) -> bytes:
    """`body` with general-purpose flag bits set in the member's local and central headers."""
    raw = bytearray(body)
    raw[offset + 6] |= flag  # the local header's flag field
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 8] |= flag
    return bytes(raw)


def test_a_member_whose_local_header_is_damaged_is_not_read_in_place() -> None:
    """The central directory says where a member is; its local header must agree, or the body is
    left to np.load, which refuses it."""
    stored = npz_of({"predictions.npy": npy(PREDICTIONS)})
    assert stored.startswith(b"PK\x03\x04")
    damaged = b"PK\x03\x05" + stored[4:]
    with pytest.raises(ProblemError) as refused:
        npz_arrays(damaged)
    assert refused.value.detail.startswith("malformed npz: ")


def test_an_encrypted_member_is_not_read_as_plain_data() -> None:
    stored = npz_of({"predictions.npy": npy(PREDICTIONS)})
    with pytest.raises(ProblemError) as refused:
        npz_arrays(_with_flag(stored, 0, 0x1))
    assert refused.value.detail.startswith("malformed npz: ")
    assert "encrypted" in refused.value.detail


@pytest.mark.parametrize("flag_and_method", [(0x1, None), (0, 99)], ids=["encrypted", "unknown-compression"])
async def test_members_zipfile_cannot_read_are_a_400_not_a_500(
    client: httpx.AsyncClient, flag_and_method: tuple[int, int | None]
) -> None:
    flag, method = flag_and_method
    body = bytearray(npz_of({"predictions.npy": npy(PREDICTIONS), "labels.npy": npy(LABELS)}))
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = body.find(signature)
        while at >= 0:
            body[at + flag_at] |= flag
            if method is not None:
                body[at + method_at : at + method_at + 2] = method.to_bytes(2, "little")
            at = body.find(signature, at + 4)
    answer = problem(await client.post("/v1/loss", params={"loss": "scce"}, content=bytes(body), headers=NPZ), 400)
    assert answer["detail"].startswith("malformed npz: ")


def test_an_evaluate_body_orjson_refuses_is_held_to_the_element_limit() -> None:
    from service.server.api.schemas import evaluate_request_model

    body = b'{"losses": [{"loss": "mse"}], "predictions": [[1, 2, 3, Infinity]], "labels": [[1, 0, 1, 1]]}'
    with pytest.raises(ProblemError) as too_many:
        validate_json(evaluate_request_model(), body, max_elements=3)
    assert too_many.value.status == 413
    with pytest.raises(ProblemError) as non_finite:
        validate_json(evaluate_request_model(), body, max_elements=4)
    assert non_finite.value.status == 422


@pytest.mark.anyio
async def test_a_body_is_received_whole_once_and_kept_for_whoever_asks_again() -> None:
    from starlette.requests import ClientDisconnect, Request

    from service.server.api.body import received_body

    def request_of(messages: list[dict[str, Any]]) -> Request:
        pending = list(messages)

        async def receive() -> dict[str, Any]:
            return pending.pop(0) if pending else {"type": "http.disconnect"}

        return Request({"type": "http", "method": "POST", "headers": []}, receive)

    one = b'{"loss": "mse"}'
    request = request_of([{"type": "http.request", "body": one}])
    assert await received_body(request) is one  # one chunk: that chunk, not a copy
    assert await request.body() is one  # asked again: kept, not received again
    parts = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "more_body": True}]
    assert await received_body(request_of([*parts, {"type": "http.request", "body": b"c"}])) == b"abc"
    with pytest.raises(ClientDisconnect):
        await received_body(request_of(parts))  # the client left before the last chunk
