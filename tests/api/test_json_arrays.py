"""simdjson's reading of large JSON bodies gives exactly what orjson + `np.array` give, or declines
and leaves the body to the ordinary parser, which names what is wrong in it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from service.server.api.body import json as body_module
from service.server.api.body import json_decoded_bytes
from service.server.api.json_arrays import SMALL_BODY_BYTES, loads_with_arrays, occurrences, structure
from tests.api.test_api import problem
from tests.api.test_bad_input_corpus import answered_by

KEYS = frozenset({"predictions", "labels", "data"})
RNG = np.random.default_rng(7)


def ordinary(body: bytes) -> Any:
    """The reference: orjson's tree, with the same keys' lists made arrays by NumPy."""

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: np.array(v) if k in KEYS and isinstance(v, list) else convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return convert(orjson.loads(body))


def assert_same(fast: Any, reference: Any) -> None:
    if isinstance(reference, np.ndarray):
        assert isinstance(fast, np.ndarray)
        assert fast.dtype == reference.dtype
        assert fast.shape == reference.shape
        # Both parsers round each decimal to the nearest double: identical bits on every CPU.
        assert fast.tobytes() == reference.tobytes()
    elif isinstance(reference, dict):
        assert isinstance(fast, dict)
        assert list(fast) == list(reference)
        for key in reference:
            assert_same(fast[key], reference[key])
    elif isinstance(reference, list):
        assert isinstance(fast, list)
        assert len(fast) == len(reference)
        for a, b in zip(fast, reference, strict=True):
            assert_same(a, b)
    else:
        assert type(fast) is type(reference)
        assert fast == reference


HARD_DECIMALS = [
    "0.1",
    "0.1000000000000000055511151231257827",  # more digits than a double holds
    "2.2250738585072011e-308",  # near the smallest normal
    "4.9e-324",  # the smallest subnormal
    "1e-400",  # underflows to 0
    "-0.0",
    "1.7976931348623157e308",
    "9007199254740993",  # an integer a double cannot hold, beside floats
    "123456789012345678",
    "1E5",
    "-2.5e-3",
    "7.0",
]


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({"loss": "mse", "predictions": RNG.random((50, 7)).tolist(), "labels": RNG.random(50).tolist()}),
        orjson.dumps({"predictions": RNG.standard_normal(300).tolist(), "labels": RNG.integers(-5, 5, 300).tolist()}),
        orjson.dumps({"predictions": RNG.random((4, 3)).astype(np.float32).tolist()}),
        json.dumps({"predictions": RNG.random((20, 5)).tolist()}, indent=2).encode(),  # white space everywhere
        ("{" + '"predictions": [' + ", ".join(HARD_DECIMALS) + '], "labels": [[1, 2], [3, 4]]}').encode(),
        b'{"labels": [-9223372036854775808, 9223372036854775807], "options": {"weight": [1, 2.5]}}',
        b'{"odd [key]": [["[", "]"]], "predictions": [[0.5, 1], [2, 3.5]], "model": "[["}',  # brackets in text
        orjson.dumps(
            {
                "inputs": [
                    {"name": "predictions", "shape": [3, 2], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 1, 2, 3]},
                    {"name": "labels", "shape": [3], "datatype": "INT64", "data": [[0], [1], [1]]},
                ],
                "parameters": {"from_logits": True, "model": "a [bracketed] name", "n": None},
                "outputs": [{"name": "mean"}],
            }
        ),
    ],
    ids=["rows", "flat-and-ints", "float32-decimals", "indented", "hard-decimals", "int64-range", "brackets", "oip"],
)
def test_arrays_read_as_numpy_would_read_orjsons_lists(body: bytes) -> None:
    fast = loads_with_arrays(body, KEYS)
    assert fast is not None
    assert_same(fast, ordinary(body))


@pytest.mark.parametrize(
    "body",
    [
        b'{"predictions": [NaN, 1.0]}',  # not JSON: the ordinary path names the index
        b'{"predictions": [1e400]}',
        b'{"predictions": [1.0], "predictions": [2.0]}',  # repeated key
        b'{"predictions": [1.0], "model": "a\\"b"}',  # an escape
        b'{"predictions": [1.0, true]}',
        b'{"predictions": [1.0, null]}',
        b'{"predictions": [[1.0, 2.0], [3.0]]}',  # ragged
        b'{"predictions": [[1.0, 2.0], [3.0, 4.0, 5.0], [6.0]]}',  # ragged, yet as many numbers as 3 x 2
        b'{"predictions": [[1.0, [2.0]], [3.0, 4.0]]}',  # flattens like a rectangle
        b'{"predictions": [[[1.0], [2.0]], [[3.0], [4.0]]]}',  # three dimensions
        b'{"predictions": [[1.0, 2.0], 3.0]}',
        b'{"predictions": []}',
        b'{"predictions": [[]]}',
        b'{"predictions": ["0.5"]}',
        b'{"labels": [18446744073709551615]}',  # beyond int64
        b'{"labels": [1, 18446744073709551616]}',  # beyond any JSON parser's integers
        b'{"predictions": [1.0]',  # truncated
    ],
)
def test_bodies_it_cannot_vouch_for_are_left_to_the_ordinary_parser(body: bytes) -> None:
    assert loads_with_arrays(body, KEYS) is None


def test_other_keys_stay_python_values() -> None:
    body = b'{"ids": [1, 2, 3], "options": {"weight": [0.5, 1.5]}, "predictions": [[0.5]]}'
    fast = loads_with_arrays(body, frozenset({"predictions"}))
    assert fast is not None
    assert fast["ids"] == [1, 2, 3]
    assert fast["options"] == {"weight": [0.5, 1.5]}
    assert isinstance(fast["predictions"], np.ndarray)


def large_request(rows: int = 2000) -> dict[str, Any]:
    return {
        "loss": "categorical_crossentropy",
        "predictions": RNG.standard_normal((rows, 10)).tolist(),
        "labels": np.eye(10)[RNG.integers(0, 10, rows)].tolist(),
        "options": {"from_logits": True},
        "convention": "torch",
    }


@pytest.mark.anyio
async def test_a_large_request_answers_exactly_as_through_orjson(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = large_request()
    content = orjson.dumps(request)
    assert len(content) >= body_module.SIMDJSON_BYTES
    read = answered_by(monkeypatch, "loads_with_arrays")
    fast = await client.post("/v1/loss", content=content, headers={"content-type": "application/json"})
    assert read == [True]
    monkeypatch.setattr(body_module, "SIMDJSON_BYTES", 1 << 40)
    slow = await client.post("/v1/loss", content=content, headers={"content-type": "application/json"})
    assert fast.status_code == slow.status_code == 200
    assert fast.json() == slow.json()


@pytest.mark.anyio
async def test_a_large_body_with_a_boolean_deep_inside_is_refused_by_index(client: httpx.AsyncClient) -> None:
    request = large_request()
    request["predictions"][1234][7] = True
    answer = problem(await client.post("/v1/loss", json=request), 422)
    assert answer["errors"][0]["loc"] == ["body", "predictions", 1234, 7]
    request["predictions"][1234][7] = 0.5
    request["predictions"][1500] = request["predictions"][1500][:9]
    answer = problem(await client.post("/v1/loss", json=request), 422)
    assert "1500" in answer["detail"]


@pytest.mark.anyio
async def test_a_large_oip_json_request_answers_exactly_as_through_orjson(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    logits = RNG.standard_normal((2000, 10))
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "predictions", "shape": [2000, 10], "datatype": "FP32", "data": logits.ravel().tolist()},
                {"name": "labels", "shape": [2000], "datatype": "INT64", "data": RNG.integers(0, 10, 2000).tolist()},
            ],
            "parameters": {"from_logits": True},
        }
    )
    fast = await client.post("/v2/models/scce/infer", content=body)
    monkeypatch.setattr(body_module, "SIMDJSON_BYTES", 1 << 40)
    slow = await client.post("/v2/models/scce/infer", content=body)
    assert fast.status_code == slow.status_code == 200
    assert fast.json() == slow.json()


@pytest.mark.parametrize("size", [0, 100, SMALL_BODY_BYTES - 1, SMALL_BODY_BYTES, 3 * SMALL_BODY_BYTES + 5, 2_000_001])
def test_occurrences_counts_every_byte_whatever_the_size(size: int) -> None:
    text = b"[" + RNG.choice(np.frombuffer(b"[],0.5 ", dtype=np.uint8), size).tobytes()  # from the first byte
    for char in (b"[", b",", b"x"):
        assert occurrences(text, char) == text.count(char)
        assert occurrences(memoryview(text), char) == text.count(char)


def test_structure_keeps_every_quote_comma_bracket_and_literal() -> None:
    body = orjson.dumps(
        {
            "loss": "s t1rue",
            "predictions": [[-1.5e-07, 2.0, 3], [+0.25, 1e300, -0.0]],
            "labels": [0, 12],
            "flags": [True, False, None],
            "note": 'a "quoted", [bracketed] word: false',
        }
    ).replace(b",", b", ")
    rest = structure(body)
    for char in (b'"', b",", b"[", b"]", b"{", b":", b"\\"):
        assert rest.count(char) == body.count(char)
    assert (rest.count(b"true"), body.count(b"true")) == (2, 1)  # "t1rue" became a word: counted, never missed
    assert (rest.count(b"false"), body.count(b"false")) == (2, 2)
    assert structure(memoryview(body)) == rest
    assert not set(rest) & set(b"0123456789.+- ")


def test_structure_is_remembered_for_the_last_body_only() -> None:
    first, second = b'{"a": [1, 2]}', b'{"b": [[3]]}'
    remembered = structure(first)
    assert structure(first) is remembered  # asked again about the same body: not deleted again
    assert structure(second) == b'{"b":[[]]}'
    assert structure(first) == b'{"a":[,]}'
    assert occurrences(second, b"[") == 2
    with pytest.raises(ValueError, match="a byte numbers are written with"):
        occurrences(first, b"1")


@pytest.mark.parametrize("size", [SMALL_BODY_BYTES - 1, SMALL_BODY_BYTES])
def test_the_memory_estimate_counts_commas_and_brackets_on_both_sides_of_the_size(size: int) -> None:
    rows = b"[" + b",".join(b"[0.5,-1e-3]" for _ in range(size // 12)) + b"]"
    # Not JSON (more opening brackets than closing ones): the estimate never checks.
    body = rows + b" [" * ((size - len(rows)) // 2) + b" " * ((size - len(rows)) % 2)
    assert len(body) == size
    expected = size + 96 * (body.count(b",") + 1) + 96 * body.count(b"[")
    assert json_decoded_bytes(body) == expected


def test_nesting_is_read_to_64_levels_and_declined_beyond() -> None:
    """Deeper bodies go to orjson, which has its own limit: the reader's recursion never meets
    Python's (a body 900 levels deep would otherwise be a RecursionError, a 500)."""

    def nested(levels: int) -> bytes:
        return b'{"o": ' + b"[" * levels + b"1" + b"]" * levels + b', "predictions": [0.5]}'

    assert loads_with_arrays(nested(63), KEYS) is not None
    assert loads_with_arrays(nested(64), KEYS) is None
    # The 64th level itself is read: an empty object or array there has nothing deeper.
    for innermost in (b"{}", b"[]"):
        deepest = b'{"o": ' + b"[" * 63 + innermost + b"]" * 63 + b', "predictions": [0.5]}'
        assert_same(loads_with_arrays(deepest, KEYS), ordinary(deepest))
    assert loads_with_arrays(nested(900), KEYS) is None
    assert loads_with_arrays(nested(40_000), KEYS) is None  # beyond simdjson's own depth limit (1,024)


def test_objects_are_read_to_128_keys_and_declined_beyond() -> None:
    """simdjson finds a key by scanning its object: a larger one (options with thousands of names)
    goes to orjson."""

    def options(keys: int) -> bytes:
        return orjson.dumps({"predictions": [0.5], "options": {f"k{i}": i for i in range(keys)}})

    assert_same(loads_with_arrays(options(128), KEYS), ordinary(options(128)))
    assert loads_with_arrays(options(129), KEYS) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"ids": [1, [2, 3]], "predictions": [0.5]}',  # a scalar first, then an array
        b'{"ids": ["a", {"predictions": [1.5, 2.5], "b": null}], "predictions": [0.5]}',  # then an object
    ],
    ids=["array", "object"],
)
def test_a_list_that_begins_with_a_scalar_has_what_follows_read_too(body: bytes) -> None:
    """Its nested arrays are counted, and the arrays of numbers in its objects are NumPy arrays."""
    assert_same(loads_with_arrays(body, KEYS), ordinary(body))


def test_a_repeated_key_in_an_object_after_a_scalar_is_left_to_the_ordinary_parser() -> None:
    assert loads_with_arrays(b'{"ids": ["a", {"k": 1, "k": 2}], "predictions": [0.5]}', KEYS) is None
