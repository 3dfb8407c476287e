"""A corpus of malformed requests: each gets its documented 4xx as problem+json; none gets a 5xx."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import numpy as np
import pyarrow as pa
import pytest

from service.config import Settings
from service.server.api.body import json as body_module
from service.server.app import create_app

pytestmark = pytest.mark.anyio
JSON = "application/json"
GOOD = {"loss": "scce", "predictions": [[0.2, 0.8], [0.6, 0.4]], "labels": [1, 0]}
Case = tuple[str, str, bytes, dict[str, str], int]  # id, path, body, headers, expected status


def body(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def without(*keys: str) -> bytes:
    return json.dumps({k: v for k, v in GOOD.items() if k not in keys}).encode()


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npz_declaring(shape: tuple[int, ...]) -> bytes:
    """An npz whose predictions.npy has a header declaring `shape` and no data at all."""
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("predictions.npy", header.getvalue())
        archive.writestr("labels.npy", _npy(np.ones(1)))
    return buffer.getvalue()


def _npy(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def arrow_stream(columns: dict[str, Any], compression: str | None = None) -> bytes:
    table = pa.table(columns)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)
    return sink.getvalue()


def compressed_zeros(count: int) -> bytes:
    """np.savez_compressed of `count` int8 zeros: a few KB that inflate to `count` bytes."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, predictions=np.zeros(count, np.int8), labels=np.zeros(count, np.int8))
    return buffer.getvalue()


REPEATED_KEYS = [
    b'{"loss": "mse", "loss": "mae", "predictions": [1.0], "labels": [2.0]}',
    b'{"loss": "mse", "predictions": [1.0], "labels": [2.0], "predictions": [3.0]}',
    b'{"loss": "huber", "options": {"delta": 1.0, "delta": 2.0}, "predictions": [1.0], "labels": [2.0]}',
    b'{"loss": "mse", "\\u006coss": "mae", "predictions": [1.0], "labels": [2.0]}',
    b'{"loss": "mse", "model": "a", "model": "b", "predictions": [NaN], "labels": [2.0]}',
    b'{"losses": [{"loss": "mse", "loss": "mae"}], "predictions": [1.0], "labels": [2.0]}',
]
# Where each repeated key is reported: the path of the object, then the key.
REPEATED_AT = [["loss"], ["predictions"], ["options", "delta"], ["loss"], ["model"], ["losses", 0, "loss"]]


def corpus() -> Iterator[Case]:
    j = {"content-type": JSON}
    # Malformed JSON (400).
    for i, raw in enumerate(
        [b"{", b"}", b"[", b'{"loss": "mse",', b'{"loss": mse}', b"{'loss': 'mse'}", b'{"a": 1,}', b"nul", b"\xff\xfe",
         b'{"loss": "mse"} trailing', b'{"loss": "\\x00"}', b'"unterminated', b"{}{}", b"\x00", b"{\"a\":1e}", b"--"]
    ):  # fmt: skip
        yield f"malformed-json-{i}", "/v1/loss", raw, j, 400
    yield "empty-body", "/v1/loss", b"", j, 400
    yield "blank-body", "/v1/loss", b"   \n", j, 400
    # Wrong content types (415).
    for i, ctype in enumerate(
        [
            "text/plain",
            "application/xml",
            "multipart/form-data",
            "application/x-www-form-urlencoded",
            "",
            "application/jsonx",
            "image/png",
        ]
    ):
        yield f"content-type-{i}", "/v1/loss", body(), {"content-type": ctype} if ctype else {}, 415
    yield (
        "evaluate-npz",
        "/v1/evaluate",
        npz(predictions=np.ones((2, 2)), labels=np.ones(2)),
        {"content-type": "application/x-npz"},
        415,
    )
    # Valid JSON, wrong shapes of request (422).
    for i, raw in enumerate([b"[]", b"1", b'"text"', b"null", b"true", b"[1, 2, 3]"]):
        yield f"not-an-object-{i}", "/v1/loss", raw, j, 422
    for key in ("loss", "predictions", "labels"):
        yield f"missing-{key}", "/v1/loss", without(key), j, 422
    yield "unknown-field", "/v1/loss", body(bogus=1), j, 422
    for i, loss in enumerate(
        ["", "MSE", "mse ", "huberr", 1, None, True, ["mse"], {"name": "mse"}, "../etc/passwd", "x" * 5000]
    ):
        yield f"bad-loss-{i}", "/v1/loss", body(loss=loss), j, 422
    # Arrays: ragged, non-numeric, non-finite, huge, empty, wrong types (422).
    bad_arrays: list[Any] = [
        [[0.2, 0.8], [0.6]], [[0.2, 0.8], 0.6], [0.2, [0.8]], [[0.2, "0.8"], [0.6, 0.4]], [[0.2, None], [0.6, 0.4]],
        [[0.2, True], [0.6, 0.4]], [[0.2, {}], [0.6, 0.4]], [[0.2, []], [0.6, 0.4]], [], [[]], [[], []], "0.2", 0.2, None,
        {"a": 1}, [[10**30, 0.8], [0.6, 0.4]], [[2**64, 0.8], [0.6, 0.4]], [[-(2**70), 0.8], [0.6, 0.4]],
        [[[0.2, 0.8]], [[0.6, 0.4]]], [[1.5, -0.5], [0.6, 0.4]], [[-0.1, 1.1], [0.6, 0.4]],
    ]  # fmt: skip
    for i, value in enumerate(bad_arrays):
        yield f"bad-predictions-{i}", "/v1/loss", body(predictions=value), j, 422
    bad_labels: list[Any] = [
        [1], [1, 0, 1], [2, 0], [-1, 0], [0.5, 0], ["1", 0], [None, 0], [True, 0], [[1], [0], [1]], [], 1, [1e300, 0],
        [[1, 0], [0, 1]],
    ]  # fmt: skip
    for i, value in enumerate(bad_labels):
        yield f"bad-labels-{i}", "/v1/loss", body(labels=value), j, 422
    for i, literal in enumerate([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e309"]):
        raw = b'{"loss": "mse", "predictions": [[1.0, ' + literal + b']], "labels": [[1.0, 1.0]]}'
        yield f"non-finite-{i}", "/v1/loss", raw, j, 422
    yield (
        "minus-nan",
        "/v1/loss",
        b'{"loss": "mse", "predictions": [[-NaN]], "labels": [[1.0]]}',
        j,
        400,
    )  # no JSON reads it
    for i, weight in enumerate([[1.0], [1.0, 2.0, 3.0], [-1.0, 1.0], ["1", 1.0], [None, 1.0], [[1.0, 2.0]], "x", 1.0]):
        yield f"bad-sample-weight-{i}", "/v1/loss", body(sample_weight=weight), j, 422
    for i, (field, value) in enumerate(
        [("dtype", "float16"), ("dtype", 64), ("dtype", None), ("convention", "jax"), ("convention", ""), ("convention", 1),
         ("model", "a b"), ("model", "x" * 65), ("model", ""), ("model", 5), ("model", "é"), ("chunk", 0), ("chunk", "yes")]
    ):  # fmt: skip
        yield f"bad-{field}-{i}", "/v1/loss", body(**{field: value}), j, 422
    # Options: unknown, wrong type, out of range, wrong convention (422).
    bad_options: list[tuple[str, dict[str, Any], str]] = [
        ("scce", {"bogus": 1}, "keras"), ("scce", {"from_logits": "true"}, "keras"), ("scce", {"from_logits": 1}, "keras"),
        ("scce", {"label_smoothing": -0.1}, "keras"), ("scce", {"label_smoothing": 1.5}, "keras"),
        ("scce", {"label_smoothing": "0.1"}, "keras"), ("scce", {"ignore_index": 1.5}, "keras"),
        ("scce", {"class_weight": [1.0]}, "keras"), ("scce", {"class_weight": [-1.0, 1.0]}, "keras"),
        ("scce", {"class_weight": "x"}, "keras"), ("scce", {"ignore_index": 1, "ignore_class": 1}, "keras"),
        ("bce", {"pos_weight": [2.0]}, "keras"), ("bce", {"label_smoothing": 0.1}, "torch"),
        ("bce", {"pos_weight": [2.0]}, "torch"), ("huber", {"delta": 0}, "keras"), ("huber", {"delta": -1}, "keras"),
        ("kld", {"log_input": True}, "keras"), ("multi_margin", {"p": 3}, "torch"), ("multi_margin", {"form": "x"}, "torch"),
        ("triplet_margin", {"p": 0}, "torch"), ("smooth_l1", {"beta": -1.0}, "torch"),
    ]  # fmt: skip
    for i, (loss, options, convention) in enumerate(bad_options):
        yield f"bad-options-{i}", "/v1/loss", body(loss=loss, options=options, convention=convention), j, 422
    yield "options-not-object", "/v1/loss", body(options=[1]), j, 422
    # Loss-specific input rules (422).
    specific: list[dict[str, Any]] = [
        {"loss": "mse", "predictions": [[1.0, 2.0]], "labels": [[1.0]]},
        {"loss": "cce", "predictions": [0.5, 0.5], "labels": [1.0, 0.0]},
        {"loss": "cce", "predictions": [[0.5, 0.5]], "labels": [[1.0, 2.0]]},
        {"loss": "scce", "predictions": [[0.0, 0.0]], "labels": [0]},
        {"loss": "bce", "predictions": [[0.5]], "labels": [[2.0]]},
        {"loss": "poisson", "predictions": [[-1.0]], "labels": [[1.0]]},
        {"loss": "poisson_nll", "predictions": [[1.0]], "labels": [[-1.0]], "options": {"log_input": False}},
        {"loss": "gaussian_nll", "predictions": [[1.0, -1.0]], "labels": [1.0]},
        {"loss": "gaussian_nll", "predictions": [1.0, 2.0], "labels": [1.0, 2.0]},
        {"loss": "hinge", "predictions": [[1.0]], "labels": [[3.0]]},
        {"loss": "margin_ranking", "predictions": [[1.0, 2.0, 3.0]], "labels": [1.0]},
        {"loss": "margin_ranking", "predictions": [[1.0, 2.0]], "labels": [0.0]},
        {"loss": "cosine_embedding", "predictions": [[1.0, 2.0]], "labels": [1.0]},
        {"loss": "triplet_margin", "predictions": [[1.0, 2.0]], "labels": [[1.0, 2.0]]},
        {"loss": "multi_margin", "predictions": [[1.0, 2.0]], "labels": [5]},
        {"loss": "nll", "predictions": [[-0.1, -2.0]], "labels": [2]},
        {"loss": "kld", "predictions": [[0.5, 1.5]], "labels": [[0.5, 0.5]]},
        {"loss": "log_loss", "predictions": [0.2, 0.8], "labels": [0.0, 0.0]},
        {"loss": "log_loss", "predictions": [[0.2, 0.8]], "labels": [5.0], "options": {"classes": [0.0, 1.0]}},
        {"loss": "brier", "predictions": [[[0.2]]], "labels": [0.0]},
        {
            "loss": "scce",
            "predictions": [[1.0, 2.0]],
            "labels": [-100],
            "options": {"from_logits": True},
            "convention": "torch",
        },
        {"loss": "mse", "predictions": [[1e200]], "labels": [[-1e200]]},
        {"loss": "mse", "predictions": [[1e39]], "labels": [[1.0]], "dtype": "float32"},
        {"loss": "mse", "predictions": [[1.0]], "labels": [[1.0]], "sample_weight": [0.0], "convention": "torch"},
    ]
    for i, request in enumerate(specific):
        yield f"loss-rule-{i}", "/v1/loss", json.dumps(request).encode(), j, 422
    # /v1/evaluate (422).
    for i, change in enumerate([{"losses": []}, {"losses": "scce"}, {"losses": [{"loss": "nope"}]},
                                {"losses": [{"loss": "scce", "options": {"x": 1}}]}, {"losses": [{"options": {}}]},
                                {"losses": [{"loss": "scce"}] * 33}]):  # fmt: skip
        yield (
            f"evaluate-{i}",
            "/v1/evaluate",
            json.dumps({**{k: v for k, v in GOOD.items() if k != "loss"}, **change}).encode(),
            j,
            422,
        )
    # /v1/calibration (422): probabilities outside [0, 1], rows off 1, labels, bins, strategy.
    calibration = {"predictions": [0.2, 0.7], "labels": [0, 1]}
    for i, change in enumerate([
        {"predictions": [0.2, 1.7]}, {"predictions": [-0.2, 0.7]}, {"predictions": [[0.2, 0.7], [0.5, 0.5]]},
        {"labels": [0, 2]}, {"labels": [0.5, 1]}, {"labels": [0, 1, 1]},
        {"predictions": [[0.3, 0.7], [0.5, 0.5]], "labels": [0, 2]}, {"predictions": [[[0.3]]], "labels": [0]},
        {"predictions": [], "labels": []}, {"bins": 0}, {"bins": 1001}, {"bins": 2.5}, {"bins": "15"},
        {"strategy": "equal"}, {"strategy": None}, {"from_logits": "yes"}, {"bogus": 1}, {"predictions": [0.2, None]},
    ]):  # fmt: skip
        yield f"calibration-{i}", "/v1/calibration", json.dumps({**calibration, **change}).encode(), j, 422
    yield "calibration-nan", "/v1/calibration", b'{"predictions": [0.2, NaN], "labels": [0, 1]}', j, 422
    yield (
        "calibration-npz",
        "/v1/calibration",
        npz(predictions=np.ones(2), labels=np.ones(2)),
        {"content-type": "application/x-npz"},
        415,
    )
    # Binary bodies (400 / 422).
    n = {"content-type": "application/x-npz"}
    a = {"content-type": "application/vnd.apache.arrow.stream"}
    yield "npz-garbage", "/v1/loss?loss=mse", b"garbage", n, 400
    yield "npz-truncated", "/v1/loss?loss=mse", npz(predictions=np.ones((2, 2)), labels=np.ones((2, 2)))[:50], n, 400
    yield (
        "npz-extra-array",
        "/v1/loss?loss=mse",
        npz(predictions=np.ones((2, 2)), labels=np.ones((2, 2)), x=np.ones(1)),
        n,
        422,
    )
    yield "npz-no-loss", "/v1/loss", npz(predictions=np.ones((2, 2)), labels=np.ones((2, 2))), n, 422
    yield "npz-strings", "/v1/loss?loss=mse", npz(predictions=np.array([["a"]]), labels=np.ones((1, 1))), n, 422
    yield "npz-bool", "/v1/loss?loss=mse", npz(predictions=np.ones((1, 1), bool), labels=np.ones((1, 1))), n, 422
    yield "npz-nan", "/v1/loss?loss=mse", npz(predictions=np.full((1, 1), np.nan), labels=np.ones((1, 1))), n, 422
    yield (
        "npz-bad-options",
        "/v1/loss?loss=mse&options={",
        npz(predictions=np.ones((1, 1)), labels=np.ones((1, 1))),
        n,
        400,
    )
    yield (
        "npz-bad-chunk",
        "/v1/loss?loss=mse&chunk=maybe",
        npz(predictions=np.ones((1, 1)), labels=np.ones((1, 1))),
        n,
        400,
    )
    yield (
        "npz-chunk-number",
        "/v1/loss?loss=mse&chunk=1",
        npz(predictions=np.ones((1, 1)), labels=np.ones((1, 1))),
        n,
        422,
    )
    yield "arrow-garbage", "/v1/loss?loss=mse", b"\xff\xff\xff\xff\x00\x00", a, 400
    # Arrow that expands from a few bytes: refused before any column is decoded.
    zeros = pa.array(np.zeros(100_000))
    yield "arrow-zstd", "/v1/loss?loss=mse", arrow_stream({"predictions": zeros, "labels": zeros}, "zstd"), a, 415
    yield "arrow-lz4", "/v1/loss?loss=mse", arrow_stream({"predictions": zeros, "labels": zeros}, "lz4"), a, 415
    nulls = pa.nulls(10**7)
    yield "arrow-null-column", "/v1/loss?loss=mse", arrow_stream({"predictions": nulls, "labels": nulls}), a, 422
    words = pa.array(["a", "b"])
    yield "arrow-string-column", "/v1/loss?loss=mse", arrow_stream({"predictions": words, "labels": words}), a, 422
    ragged = pa.array([[1.0], [1.0, 2.0]])
    yield "arrow-ragged-lists", "/v1/loss?loss=mse", arrow_stream({"predictions": ragged, "labels": ragged}), a, 400
    # Gzip and limits (400 / 413 / 415).
    g = {"content-type": JSON, "content-encoding": "gzip"}
    yield "gzip-not-gzip", "/v1/loss", body(), g, 400
    yield "gzip-truncated", "/v1/loss", gzip.compress(body())[:-8], g, 400
    yield "gzip-of-garbage", "/v1/loss", gzip.compress(b"{"), g, 400
    yield "gzip-bomb", "/v1/loss", gzip.compress(b" " * 3_000_000), g, 413
    yield "deflate", "/v1/loss", body(), {"content-type": JSON, "content-encoding": "deflate"}, 415
    yield "oversize", "/v1/loss", b" " * 2_000_001, {"content-type": JSON}, 413
    # Deep nesting: past 32 dimensions a 422 naming the field; past what JSON parsers recurse into, a 400.
    for depth in (33, 65, 100, 1000, 20000):
        for label, inner in (("", b"1"), ("empty-", b"")):
            nested = b"[" * depth + inner + b"]" * depth
            raw = b'{"loss": "mse", "predictions": ' + nested + b', "labels": [1]}'
            yield f"deep-{label}{depth}", "/v1/loss", raw, j, 400 if depth > 1000 else 422
    hidden = (
        b'{"loss": "mse", "predictions": [[1.0], ' + b"[" * 900 + b"1" + b"]" * 900 + b'], "labels": [[1.0], [1.0]]}'
    )
    yield "deep-behind-a-shallow-row", "/v1/loss", hidden, j, 422
    deep_tensor = (
        b'{"inputs": [{"name": "predictions", "shape": [1], "datatype": "FP64", "data": '
        + b"[" * 900
        + b"1"
        + b"]" * 900
        + b"}]}"
    )
    yield "oip-deep-data", "/v2/models/mse/infer", deep_tensor, j, 400
    deep_options = json.loads("[" * 500 + "]" * 500)
    yield "deep-options", "/v1/loss", body(options={"a": deep_options}), j, 422
    yield "long-string", "/v1/loss", body(model="m" * 1_000_000), j, 422
    long_key = "k" * 100_000  # echoed in the error's location, so it must come back clipped
    yield "long-key", "/v1/loss", body(**{long_key: 1}), j, 422
    yield "long-option-key", "/v1/loss", body(options={long_key: 1}), j, 422
    yield "long-repeated-key", "/v1/loss", body()[:-1] + f', "{long_key}": 1, "{long_key}": 2}}'.encode(), j, 422
    yield (
        "long-query-key",
        "/v1/loss?loss=mse&" + "q" * 5000 + "=1",
        npz(predictions=np.ones(2), labels=np.ones(2)),
        n,
        422,
    )
    yield (
        "long-array-name",
        "/v1/loss?loss=mse",
        npz(predictions=np.ones(2), labels=np.ones(2), **{"z" * 5000: np.ones(1)}),
        n,
        422,
    )
    oip_long = {"inputs": [{"name": "predictions", "shape": [1], "datatype": "FP64", "data": [1.0]},
                           {"name": "labels", "shape": [1], "datatype": "FP64", "data": [1.0]}], "parameters": {long_key: 1}}  # fmt: skip
    yield "oip-long-parameter", "/v2/models/mse/infer", json.dumps(oip_long).encode(), j, 400
    # Repeated keys: which value was meant is unknowable, so none is taken (422 / 400 on v2).
    for i, raw in enumerate(REPEATED_KEYS):
        yield f"repeated-key-{i}", "/v1/loss", raw, j, 422
    yield (
        "oip-repeated-key",
        "/v2/models/mse/infer",
        b'{"inputs": [{"name": "predictions", "shape": [1], "datatype": "FP64", "data": [1.0], "data": [2.0]}]}',
        j,
        400,
    )
    # Open Inference Protocol (400 / 404).
    oip_bad = [b"{", b"[]", b'{"inputs": []}', b'{"inputs": [1]}', b'{"inputs": [{"name": "x"}]}',
               b'{"inputs": [{"name": "predictions", "shape": [1], "datatype": "FP64"}]}',
               b'{"inputs": [{"name": "predictions", "shape": [-1], "datatype": "FP64", "data": [1]}]}',
               b'{"inputs": [{"name": "predictions", "shape": [2], "datatype": "STR", "data": [1, 2]}]}',
               b'{"inputs": [{"name": "predictions", "shape": [2], "datatype": "FP64", "data": [1, "a"]}]}',
               b'{"inputs": [{"name": "predictions", "shape": [1], "datatype": "FP64", "data": [1]}], "parameters": []}',
               b'{"inputs": [{"name": "predictions", "shape": [1], "datatype": "FP32", "data": [1e39]}]}',
               b'{"inputs": [{"name": "predictions", "shape": [1], "datatype": "FP16", "data": [70000]}]}',
               b'{"inputs": [{"name": "labels", "shape": [1], "datatype": "UINT8", "data": [256]}]}',
               b'{"inputs": [{"name": "labels", "shape": [1], "datatype": "INT32", "data": [0.5]}]}']  # fmt: skip
    for i, raw in enumerate(oip_bad):
        yield f"oip-{i}", "/v2/models/mse/infer", raw, {"content-type": JSON}, 400
    yield "oip-unknown-model", "/v2/models/nope/infer", b"{}", {"content-type": JSON}, 404
    yield "oip-bad-header-length", "/v2/models/mse/infer", b"{}", {"inference-header-content-length": "abc"}, 400
    # Delayed labels (the module's fixture configures "corpus" and fixes its prediction rows at 2 values).
    logs = "/v1/models/corpus/predictions"
    good_log = {"ids": ["x"], "predictions": [[0.2, 0.8]]}
    for i, raw in enumerate([b"{", b"[]", b'{"ids": ["a"], "ids": ["b"], "predictions": [[0.2, 0.8]]}']):
        yield f"log-raw-{i}", logs, raw, j, 400 if i == 0 else 422
    yield "log-content-type", logs, json.dumps(good_log).encode(), {"content-type": "text/plain"}, 415
    yield "log-no-ids", logs, json.dumps({"predictions": [[0.2, 0.8]]}).encode(), j, 422
    bad_ids: list[Any] = [[], "x", [True], [1.5], [-1], [""], ["x" * 129], [None], [{}], [["a"]], ["a", "a"], [1, "1"]]
    for i, ids in enumerate(bad_ids):
        yield (
            f"log-bad-ids-{i}",
            logs,
            json.dumps(
                {**good_log, "ids": ids, "predictions": [[0.2, 0.8]] * max(1, len(ids) if isinstance(ids, list) else 1)}
            ).encode(),
            j,
            422,
        )
    bad_rows: list[Any] = [
        [[0.2, 0.8, 0.0]],
        [[0.2]],
        [0.2],
        [[0.2, "x"]],
        [[0.2, None]],
        [[0.2, 0.8], [0.1, 0.9]],
        [[1e39, 0.0]],
    ]
    for i, rows in enumerate(bad_rows):
        yield f"log-bad-predictions-{i}", logs, json.dumps({**good_log, "predictions": rows}).encode(), j, 422
    yield "log-nan", logs, b'{"ids": ["x"], "predictions": [[NaN, 0.8]]}', j, 422
    for i, stamps in enumerate([[-1.0], [1.0, 2.0], ["now"], [[1.0]]]):
        yield f"log-bad-timestamps-{i}", logs, json.dumps({**good_log, "timestamps": stamps}).encode(), j, 422
    labels = "/v1/models/corpus/labels"
    for i, weight in enumerate([[-1.0], [1.0, 2.0], ["1"], [[1.0, 2.0]]]):
        yield (
            f"log-bad-weight-{i}",
            labels,
            json.dumps({"ids": ["y"], "labels": [1], "sample_weight": weight}).encode(),
            j,
            422,
        )
    # Segments (the fixture declares the key "country"): a wrong length, an undeclared key, bad values.
    bad_segments: list[Any] = [
        {"country": []},
        {"country": ["BR", "US"]},
        {"device": ["ios"]},
        {"country": [""]},
        {"country": ["x" * 65]},
        {"country": ["a\tb"]},
        {"country": [7]},
        {"country": "BR"},
        ["BR"],
    ]
    for i, segments in enumerate(bad_segments):
        yield f"log-bad-segments-{i}", logs, json.dumps({**good_log, "segments": segments}).encode(), j, 422
    configs_with_keys: list[Any] = [["country", "country"], ["1x"], ["k"] * 9, ["a" * 65], "country", [None]]
    for i, keys in enumerate(configs_with_keys):
        config = {"losses": [{"loss": "mse"}], "segments": keys}
        yield f"put-bad-segment-keys-{i}", "/v1/models/corpus-new", json.dumps(config).encode(), j, 422
    # History: times that are no times, an end before its start, a step that makes 10^9 buckets.
    history = "/v1/models/corpus/history?"
    bad_queries = ["start=10&end=5", "start=10&end=10", "start=0&end=1000000000&step=1", "step=0", "step=-3600",
                   "step=abc", "step=inf", "start=noon", "end=1e400", "start=2026-01-31T12:00:00", "by=device",
                   "by=", "end=NaN", "calibration=yes", "calibration=true&bins=0", "calibration=true&bins=1001",
                   "calibration=true&bins=x", "calibration=true&bins=1e3", "calibration=true&strategy=isotonic",
                   "calibration=true&strategy=", "calibration=true&from_logits=2", "bins=15", "strategy=uniform",
                   "calibration=false&from_logits=true"]  # fmt: skip
    for i, query in enumerate(bad_queries):
        yield f"route-history-{i}", history + query, b"", {}, 422
    yield "route-history-unknown-model", "/v1/models/nope/history", b"", {}, 404
    # Export: the history's times, and an Accept naming no media type the export answers in.
    pairs = "/v1/models/corpus/pairs?"
    bad_windows = ["start=10&end=5", "start=10&end=10", "start=noon", "end=1e400", "end=NaN",
                   "start=2026-01-31T12:00:00", "end=tomorrow", "start=1e14"]  # fmt: skip
    for i, query in enumerate(bad_windows):
        yield f"route-pairs-{i}", pairs + query, b"", {}, 422
    for i, accept in enumerate(["image/png", "application/json", "text/html, application/xml;q=0.9", "text/csv;q=0"]):
        yield f"route-pairs-accept-{i}", pairs, b"", {"accept": accept}, 406
    yield "route-pairs-unknown-model", "/v1/models/nope/pairs", b"", {}, 404
    yield "log-unknown-model", "/v1/models/nope/predictions", json.dumps(good_log).encode(), j, 404
    yield "log-bad-model-name", "/v1/models/a%20b/predictions", json.dumps(good_log).encode(), j, 422
    yield "log-unknown-field", logs, json.dumps({**good_log, "model": "x"}).encode(), j, 422
    configs: list[Any] = [{}, {"losses": []}, {"losses": [{"loss": "nope"}]}, {"losses": ["mse"]}, {"losses": [{"loss": "mse"}], "retention_seconds": -1},
                          {"losses": [{"loss": "bce", "options": {"pos_weight": [2.0]}}]}, {"losses": [{"loss": "mse"}], "dtype": "float16"}, [1]]  # fmt: skip
    for i, config in enumerate(configs):
        yield f"put-bad-config-{i}", "/v1/models/corpus-new", json.dumps(config).encode(), j, 422
    yield "put-malformed", "/v1/models/corpus-new", b"{", j, 400
    yield "route-unknown-model", "/v1/models/nope", b"", {}, 404
    # Champion and challenger (the fixture configures "corpus-follower", which takes its labels from
    # "corpus" and configures its loss identically, and "corpus-mse", which configures another loss).
    compare = "/v1/models/corpus-follower/compare/corpus?"
    bad_comparisons = ["alpha=0", "alpha=1", "alpha=x", "alpha=nan", "loss=7", "loss=mse", "by=device", "step=0",
                       "step=1&start=0&end=1000000000", "start=10&end=5", "end=NaN", "start=noon"]  # fmt: skip
    for i, query in enumerate(bad_comparisons):
        yield f"route-compare-{i}", compare + query, b"", {}, 422
    yield "route-compare-unknown-champion", "/v1/models/corpus/compare/nope", b"", {}, 404
    yield "route-compare-unknown-challenger", "/v1/models/nope/compare/corpus", b"", {}, 404
    yield "route-compare-itself", "/v1/models/corpus/compare/corpus", b"", {}, 422
    yield "route-compare-bad-champion-name", "/v1/models/corpus/compare/a%20b", b"", {}, 422
    yield "route-compare-different-losses", "/v1/models/corpus-mse/compare/corpus", b"", {}, 422
    scce = {"losses": [{"loss": "scce"}], "dtype": "float32"}
    bad_sharing: dict[str, tuple[str, dict[str, Any]]] = {
        "labels-from-unknown": ("corpus-new", {**scce, "labels_from": "nope"}),
        "labels-from-itself": ("corpus-new", {**scce, "labels_from": "corpus-new"}),
        "labels-from-a-loop": ("corpus", {**scce, "labels_from": "corpus-follower"}),
        "labels-from-a-chain": ("corpus-new", {**scce, "labels_from": "corpus-follower"}),
        "labels-from-bad-name": ("corpus-new", {**scce, "labels_from": "a b"}),
        "labels-from-not-a-string": ("corpus-new", {**scce, "labels_from": ["corpus"]}),
        "compare-to-unknown": ("corpus-new", {**scce, "compare_to": ["nope"]}),
        "compare-to-itself": ("corpus-new", {**scce, "compare_to": ["corpus-new"]}),
        "compare-to-other-losses": ("corpus-new", {**scce, "dtype": "float64", "compare_to": ["corpus"]}),
        "compare-to-repeated": ("corpus-new", {**scce, "compare_to": ["corpus", "corpus"]}),
        "compare-to-too-many": ("corpus-new", {**scce, "compare_to": [f"m{i}" for i in range(9)]}),
        "compare-to-a-string": ("corpus-new", {**scce, "compare_to": "corpus"}),
        "estimate-a-regression-loss": ("corpus-new", {"losses": [{"loss": "mse"}], "estimate": {}}),
        "estimate-named-regression-loss": ("corpus-new", {"losses": [{"loss": "scce"}, {"loss": "mae"}], "estimate": {"losses": [1]}}),
        "estimate-no-such-loss": ("corpus-new", {**scce, "estimate": {"losses": [3]}}),
        "estimate-repeated-loss": ("corpus-new", {**scce, "estimate": {"losses": [0, 0]}}),
        "estimate-negative-position": ("corpus-new", {**scce, "estimate": {"losses": [-1]}}),
        "estimate-unknown-calibration": ("corpus-new", {**scce, "estimate": {"calibration": "platt"}}),
        "estimate-fit-without-keep-pairs": ("corpus-new", {**scce, "estimate": {"calibration": "temperature"}}),
        "estimate-window-too-small": ("corpus-new", {**scce, "estimate": {"window": 9}}),
        "estimate-window-too-large": ("corpus-new", {**scce, "estimate": {"window": 1_000_001}}),
        "estimate-window-a-string": ("corpus-new", {**scce, "estimate": {"window": "100"}}),
        "estimate-unknown-field": ("corpus-new", {**scce, "estimate": {"calibrate": "none"}}),
        "estimate-library-convention": ("corpus-new", {"losses": [{"loss": "binary_logloss"}], "convention": "lightgbm", "estimate": {}}),
        "estimate-differing-logits": ("corpus-new", {"losses": [{"loss": "scce", "options": {"from_logits": True}}, {"loss": "scce"}],
                                                     "keep_pairs": True, "estimate": {"calibration": "temperature"}}),
    }  # fmt: skip
    for name, (model, config) in bad_sharing.items():
        yield f"put-{name}", f"/v1/models/{model}", json.dumps(config).encode(), j, 422
    follower_labels = {"ids": ["x"], "labels": [1]}
    yield "log-labels-to-a-follower", "/v1/models/corpus-follower/labels", json.dumps(follower_labels).encode(), j, 409
    # KServe's inference-logger events (the fixture configures "corpus-events": output "probs", ids by input "user").
    events = "/v1/models/corpus-events/events"
    response = {"ce-id": "e-1", "ce-type": "org.kubeflow.serving.inference.response", "ce-source": "http://x/",
                "ce-specversion": "1.0", "content-type": JSON}  # fmt: skip
    request = {**response, "ce-type": "org.kubeflow.serving.inference.request"}
    probs = {"outputs": [{"name": "probs", "shape": [1, 2], "datatype": "FP32", "data": [0.2, 0.8]}]}
    bad_events: list[tuple[str, bytes, dict[str, str], int]] = [
        ("unknown-type", json.dumps(probs).encode(), {**response, "ce-type": "com.example.other"}, 422),
        ("no-ce-id", json.dumps(probs).encode(), {k: v for k, v in response.items() if k != "ce-id"}, 422),
        ("no-specversion", json.dumps(probs).encode(), {k: v for k, v in response.items() if k != "ce-specversion"}, 422),
        ("bad-time", json.dumps(probs).encode(), {**response, "ce-time": "noon"}, 422),
        ("malformed", b'{"outputs": [', response, 400),
        ("empty", b"", response, 400),
        ("text-plain", json.dumps(probs).encode(), {**response, "content-type": "text/plain"}, 415),
        ("batch-mode", b"[]", {"content-type": "application/cloudevents-batch+json"}, 415),
        ("missing-output", json.dumps({"outputs": [{**probs["outputs"][0], "name": "x"}]}).encode(), response, 422),
        ("outputs-not-a-list", b'{"outputs": {}}', response, 422),
        ("output-ragged", json.dumps({"outputs": [{**probs["outputs"][0], "data": [[0.2], [0.8, 1.0]]}]}).encode(), response, 422),
        ("output-shape", json.dumps({"outputs": [{**probs["outputs"][0], "shape": [1, -2]}]}).encode(), response, 422),
        ("output-bool", json.dumps({"outputs": [{**probs["outputs"][0], "data": [True, 0.8]}]}).encode(), response, 422),
        ("output-huge", json.dumps({"outputs": [{**probs["outputs"][0], "shape": [2**40, 2**40]}]}).encode(), response, 413),
        ("v1-missing", b'{"predictions": [[0.2, 0.8]]}', response, 422),
        ("request-no-user", b'{"inputs": []}', request, 422),
        ("request-bad-id", json.dumps({"inputs": [{"name": "user", "shape": [1], "datatype": "BYTES", "data": [""]}]}).encode(), request, 422),
        ("request-v1-not-objects", b'{"instances": [[1.0]]}', request, 422),
        ("structured-no-data", b'{"id": "e", "type": "org.kubeflow.serving.inference.response", "source": "s", "specversion": "1.0"}',
         {"content-type": "application/cloudevents+json"}, 422),
        ("structured-bad-base64", b'{"id": "e", "type": "org.kubeflow.serving.inference.response", "source": "s", "specversion": "1.0", "data_base64": "%%"}',
         {"content-type": "application/cloudevents+json"}, 422),
        ("structured-not-object", b"[1]", {"content-type": "application/cloudevents+json"}, 422),
    ]  # fmt: skip
    for name, raw, headers, status in bad_events:
        yield f"event-{name}", events, raw, headers, status
    yield "event-unknown-model", "/v1/models/nope/events", json.dumps(probs).encode(), response, 404
    yield "event-model-without-events", "/v1/models/corpus/events", json.dumps(probs).encode(), response, 422
    # Inputs that once reached a 500 (MemoryError, ValueError, TypeError in the OIP route).
    yield "npz-declares-1e13", "/v1/loss?loss=mse", npz_declaring((10**13,)), n, 413
    yield "npz-compressed-zeros", "/v1/loss?loss=mse", compressed_zeros(25_000_000), n, 413
    oip_huge = {"inputs": [{"name": "predictions", "shape": [2**40, 2**40, 0], "datatype": "FP64", "data": []},
                           {"name": "labels", "shape": [0], "datatype": "FP64", "data": []}]}  # fmt: skip
    yield "oip-huge-empty-shape", "/v2/models/mse/infer", json.dumps(oip_huge).encode(), j, 413
    oip_outputs = {**oip_long, "parameters": {}, "outputs": 5}
    yield "oip-outputs-not-a-list", "/v2/models/mse/infer", json.dumps(oip_outputs).encode(), j, 400
    superscript = {**j, "inference-header-content-length": b"\xb2"}  # type: ignore[dict-item]  # latin-1 "²"
    yield "oip-superscript-header-length", "/v2/models/mse/infer", json.dumps(oip_long).encode(), superscript, 400
    # Thousands of errors in one body (422): shaped in linear time, at most 20 of them listed.
    many_keys = ", ".join(f'"k{i}": 1' for i in range(4096))
    many_options = '{"loss": "mse", "options": {' + many_keys + '}, "predictions": [1.0], "labels": [1.0]}'
    yield "options-4096-unknown-keys", "/v1/loss", many_options.encode(), j, 422
    weights = ", ".join(f'"{i}": -1' for i in range(4096))
    many_weights = (
        '{"loss": "scce", "options": {"class_weight": {' + weights + '}}, "predictions": [[0.5, 0.5]], "labels": [1]}'
    )
    yield "class-weights-4096-negative", "/v1/loss", many_weights.encode(), j, 422
    yield (
        "put-configuration-4096-unknown-keys",
        "/v1/models/corpus",
        ('{"losses": [{"loss": "scce"}], ' + many_keys + "}").encode(),
        j,
        422,
    )
    # Routes and methods (404 / 405).
    for i, (path, status) in enumerate([("/v1/nope", 404), ("/v1", 404), ("/v1/losses/../x", 404), ("/v3/x", 404)]):
        yield f"route-{i}", path, b"", {}, status


CORPUS = list(corpus())


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def limited(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    # A store of its own: a second run in the same process (mutmut's stats, then its clean run)
    # must not find the ids the first one logged.
    store = tmp_path_factory.mktemp("corpus") / "store.sqlite3"
    app = create_app(Settings(max_body_bytes=2_000_000, store_url=f"sqlite:///{store}"))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://bad") as c:
        config = {"losses": [{"loss": "scce"}], "dtype": "float32", "segments": ["country"]}
        configured = await c.put("/v1/models/corpus", json=config)
        assert configured.status_code == 200, configured.text
        await c.post("/v1/models/corpus/predictions", json={"ids": ["first"], "predictions": [[0.2, 0.8]]})
        events = {"prediction": "probs", "id": "user"}
        configured = await c.put("/v1/models/corpus-events", json={"losses": [{"loss": "scce"}], "events": events})
        assert configured.status_code == 200, configured.text
        follower = {"losses": [{"loss": "scce"}], "dtype": "float32", "labels_from": "corpus"}
        for model, config in (("corpus-follower", follower), ("corpus-mse", {"losses": [{"loss": "mse"}]})):
            configured = await c.put(f"/v1/models/{model}", json=config)
            assert configured.status_code == 200, configured.text
        yield c


def test_the_corpus_has_at_least_200_cases() -> None:
    assert len(CORPUS) >= 200
    assert len({case[0] for case in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("name", "path", "content", "headers", "status"), CORPUS, ids=[c[0] for c in CORPUS])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # e.g. an overflowing cast would mean a wrong message
async def test_bad_input_gets_its_documented_4xx(
    limited: httpx.AsyncClient, name: str, path: str, content: bytes, headers: dict[str, str], status: int
) -> None:
    method = "GET" if name.startswith("route-") else "PUT" if name.startswith("put-") else "POST"
    response = await limited.request(method, path, content=content or None, headers=headers)
    assert response.status_code == status, f"{name}: {response.status_code} {response.text[:300]}"
    if (path.startswith("/v2/") and response.status_code != 404) or path.startswith("/v2/models/nope"):
        assert "error" in response.json()
    else:
        assert response.headers["content-type"] == "application/problem+json", name
        assert response.json()["detail"], name
    assert "Traceback" not in response.text
    assert len(response.content) < 4096, f"{name}: {len(response.content)} bytes; echoes must be bounded"


@pytest.mark.parametrize(("raw", "at"), list(zip(REPEATED_KEYS, REPEATED_AT, strict=True)))
async def test_a_repeated_key_is_named_where_it_repeats(limited: httpx.AsyncClient, raw: bytes, at: list[Any]) -> None:
    path = "/v1/evaluate" if b'"losses"' in raw else "/v1/loss"
    response = await limited.post(path, content=raw, headers={"content-type": JSON})
    assert response.status_code == 422
    assert response.json()["errors"] == [{"loc": ["body", *at], "msg": "repeated key"}]
    assert f"key {at[-1]!r} appears more than once" in response.json()["detail"]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"loss": "mse", "model": "a\\u0041", "predictions": [1.0], "labels": [2.0]}', 200),
        (b'{"loss": "mse", "model": "a\\"b", "predictions": [1.0], "labels": [2.0]}', 422),  # the label pattern
        (b'{"loss": "mse", "options": {}, "predictions": [[1.0], [2.0]], "labels": [[2.0], [3.0]], "model": "m"}', 200),
        (b'{"loss": "mse", "predictions": [1.0, "a"], "labels": [2.0, 1.0]}', 422),  # a string the quick count skips
    ],
)
async def test_escapes_and_distinct_keys_are_not_mistaken_for_repeats(
    limited: httpx.AsyncClient, raw: bytes, status: int
) -> None:
    response = await limited.post("/v1/loss", content=raw, headers={"content-type": JSON})
    assert response.status_code == status, response.text
    assert "appears more than once" not in response.text


def answered_by(monkeypatch: pytest.MonkeyPatch, reader: str) -> list[bool]:
    """Whether each call of `service.server.api.body.json`'s `reader` answered (True) or handed the body over
    to the ordinary parser (None: False), from now on."""
    real, answered = getattr(body_module, reader), []

    def spy(*args: Any) -> Any:
        result = real(*args)
        answered.append(result is not None)
        return result

    monkeypatch.setattr(body_module, reader, spy)
    return answered


FIELDWISE_ALSO = [
    body(),
    body(options={"from_logits": False}, model="m-1", dtype="float32", convention="torch"),
    body(sample_weight=[1.0, 0.5]),
    body(predictions=[[0.2, True], [0.6, 0.4]]),
    b'{"loss": "scce", "predictions": [[0.2, 0.8], [0.6, 0.4]], "labels": [1, 0], "model": "a\\u0041"}',
    json.dumps({"losses": [{"loss": "scce"}, {"loss": "scce", "options": {"label_smoothing": 0.1}}], **GOOD}).encode(),
    json.dumps({"losses": [{"loss": "scce", "options": {"from_logits": True}}], **{k: v for k, v in GOOD.items() if k != "loss"}}).encode(),
]  # fmt: skip


async def test_bodies_decoded_field_by_field_get_the_same_answers(
    limited: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large bodies take another decoder; every corpus case and a few valid ones must not notice."""

    cases = [(path, content, headers) for _, path, content, headers, _ in CORPUS if headers == {"content-type": JSON}]
    cases += [
        ("/v1/evaluate" if b'"losses"' in raw else "/v1/loss", raw, {"content-type": JSON}) for raw in FIELDWISE_ALSO
    ]

    async def answers() -> list[tuple[int, bytes]]:
        return [
            ((r := await limited.post(path, content=content, headers=headers)).status_code, r.content)
            for path, content, headers in cases
        ]

    ordinary = await answers()
    monkeypatch.setattr(body_module, "FIELDWISE_BYTES", 0)
    decoded = answered_by(monkeypatch, "_fieldwise")
    fieldwise = await answers()
    assert sum(decoded) >= 30, "the field-by-field decoder must itself answer, not only hand over"
    assert len(cases) > 150
    assert sum(status == 200 for status, _ in ordinary) >= 4
    for (path, content, _), one, other in zip(cases, ordinary, fieldwise, strict=True):
        assert one == other, (path, content[:200])


@pytest.mark.parametrize(
    "text",
    [b"", b"true", b"tttrue", b"[true, false, true]", b'{"t": "truetrue"}', b"t" * 200 + b"true",
     b'{"model": "' + b"tr" * 100 + b'", "x": [true, 1.5, false]}', b"x" * 100_000 + b"true" + b"t"],
)  # fmt: skip
@pytest.mark.parametrize("token", [b"true", b"false", b'"', b"t"])
def test_counting_by_first_byte_equals_bytes_count(text: bytes, token: bytes) -> None:
    from service.server.api.body.json import _count

    assert _count(text, token) == text.count(token)


async def test_a_repeated_key_among_many_is_named(limited: httpx.AsyncClient) -> None:
    """64K distinct option keys and one repeat (0.9 MB) name the repeat; that its cost grows
    linearly with the keys is tests/api/test_growth.py's to show (two sizes, not a bound in seconds)."""
    keys = ", ".join(f'"k{i}": 1' for i in range(65_536))
    raw = ('{"loss": "mse", "options": {' + keys + ', "k7": 2}, "predictions": [1.0], "labels": [1.0]}').encode()
    with anyio.fail_after(60):  # stops a hang only
        response = await limited.post("/v1/loss", content=raw, headers={"content-type": JSON})
    assert response.status_code == 422
    assert response.json()["detail"] == "key 'k7' appears more than once in options"


async def test_a_compressed_npz_is_refused_by_its_declared_size_before_inflating(limited: httpx.AsyncClient) -> None:
    """25 KB of deflated zeros declaring 2.5e7 numbers: refused from the .npy header, not after
    inflating 25 MB per member (10^8 zeros in 1.5 MB used to peak at 1.6 GB)."""
    response = await limited.post(
        "/v1/loss?loss=mse", content=compressed_zeros(25_000_000), headers={"content-type": "application/x-npz"}
    )
    assert response.status_code == 413
    assert response.json()["detail"] == (
        "array 'predictions' declares 25,000,000 numbers; the limit is 20,000,000 (LOSS_SERVICE_MAX_ELEMENTS)"
    )


# Issue 29, item 1: bodies inside the memory budget. With a 1 MiB budget, bodies arriving may hold
# 512 KiB: a streamed body, a gzip body inflating past it, or a Content-Length over it gets 413
# (problem details; OIP's {"error"} on /v2) before it is whole.
BUDGET_CASES = [
    ("budget-streamed-plain", "/v1/loss", b" " * (1 << 20), {"content-type": JSON}),
    ("budget-streamed-gzip", "/v1/loss", gzip.compress(b" " * (8 << 20)), {"content-type": JSON, "content-encoding": "gzip"}),
    ("budget-declared-length", "/v1/evaluate", b" " * (600 << 10), {"content-type": JSON, "content-length": str(600 << 10)}),
    ("budget-oip-streamed", "/v2/models/mse/infer", b" " * (1 << 20), {"content-type": JSON}),
    ("budget-put-config", "/v1/models/corpus", b" " * (1 << 20), {"content-type": JSON}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "path", "content", "headers"), BUDGET_CASES, ids=[c[0] for c in BUDGET_CASES])
async def test_a_body_over_what_bodies_may_hold_gets_413_before_it_is_whole(
    name: str, path: str, content: bytes, headers: dict[str, str]
) -> None:
    app = create_app(Settings(memory_budget=1 << 20))
    sent = 0

    async def pieces() -> AsyncIterator[bytes]:
        nonlocal sent
        for start in range(0, len(content), 64 << 10):
            sent += 1
            yield content[start : start + (64 << 10)]

    method = "PUT" if name == "budget-put-config" else "POST"
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://b") as c:
        response = await c.request(method, path, content=pieces(), headers=headers)
    assert response.status_code == 413, f"{name}: {response.status_code} {response.text[:300]}"
    text = response.json()["error" if path.startswith("/v2/") else "detail"]
    assert "half of LOSS_SERVICE_MEMORY_BUDGET" in text
    assert "Traceback" not in response.text
    assert len(response.content) < 4096
    if "content-encoding" not in headers:
        assert sent < len(content) // (64 << 10), f"{name}: all {sent} pieces were read"


# -- Issue #29 item 7 (the CLI's helper): Arrow columns are validated before they are read ------


async def test_an_arrow_body_whose_list_values_claim_a_negative_length_is_400(limited: httpx.AsyncClient) -> None:
    """A 576-byte stream whose list column's values declare a length of 6 - 2^62: read unchecked,
    slicing them failed an assertion inside pyarrow, which aborted the worker (SIGABRT) and with
    it every request it held. Validated in full first (service/columns.py), it is a 400."""
    import struct

    table = pa.table({"predictions": pa.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], pa.list_(pa.float64())),
                      "labels": [1, 0, 1]})  # fmt: skip
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    nodes = struct.pack("<6q", 3, 0, 6, 0, 3, 0)  # the batch's FieldNodes: (length, null count) each
    assert sink.getvalue().count(nodes) == 1
    raw = sink.getvalue().replace(nodes, struct.pack("<6q", 3, 0, 6 - (1 << 62), 0, 3, 0))
    response = await limited.post(
        "/v1/loss?loss=scce", content=raw, headers={"content-type": "application/vnd.apache.arrow.stream"}
    )
    assert response.status_code == 400
    assert "malformed Arrow stream" in response.json()["detail"]
    assert "Array length is negative" in response.json()["detail"]


async def test_an_arrow_body_whose_buffer_index_is_out_of_range_is_400(limited: httpx.AsyncClient) -> None:
    """A byte-mutated Arrow stream whose record batch names a buffer past the message's (pyarrow
    raises ArrowIOError, an OSError): 400 naming the defect, not a 500."""
    content = (Path(__file__).parent.parent / "fixtures" / "arrow-buffer-index-out-of-range.arrows").read_bytes()
    response = await limited.post(
        "/v1/loss?loss=mse", content=content, headers={"content-type": "application/vnd.apache.arrow.stream"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("malformed Arrow stream: ")


# item 7: audit lines and echoed names
# A path holding CR LF, a quote and a backslash, and a model name of 60 KB, sent to every route that
# names a model in its path: each answer is its documented 4xx with the name clipped, never a 5xx.
# The keyless `limited` service refuses the names (422); a key restricted to other models gets the
# 403 of the key guard, which echoes the name (tests/api/test_audit_lines.py checks the audit lines).
HOSTILE_NAMES = {
    "crlf": 'corpus\r\n{"event":"refused"}\\"',
    "60kb": "m" * 60_000,
    "crlf-60kb": 'corpus\r\nforged\\"' + "m" * 60_000,
}
HOSTILE_ROUTES = [
    ("GET", "/v1/models/{}", None),
    ("PUT", "/v1/models/{}", {"losses": [{"loss": "mse"}]}),
    ("DELETE", "/v1/models/{}", None),
    ("POST", "/v1/models/{}/predictions", {"ids": ["a"], "predictions": [[0.2, 0.8]]}),
    ("POST", "/v1/models/{}/labels", {"ids": ["a"], "labels": [1]}),
    ("GET", "/v1/models/{}/history", None),
    ("GET", "/v1/models/{}/pairs", None),
]
HOSTILE_CASES = [
    (f"item7-{name}-{method.lower()}-{i}", method, template.format(quote(text, safe="")), payload)
    for name, text in HOSTILE_NAMES.items()
    for i, (method, template, payload) in enumerate(HOSTILE_ROUTES)
]


@pytest.fixture(scope="module")
async def keyed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    from service.server.api.access import digest

    folder = tmp_path_factory.mktemp("keyed")
    keys = folder / "keys.toml"
    keys.write_text(
        f'[[keys]]\nname = "fraud-team"\nkey_sha256 = "{digest("fraud-key-0123456789")}"\n'
        'scopes = ["compute", "ingest", "read", "admin"]\nmodels = ["fraud-*"]\n'
    )
    app = create_app(Settings(api_keys_file=str(keys), store_url=f"sqlite:///{folder}/store.sqlite3"))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://bad") as c:
        c.headers["authorization"] = "Bearer fraud-key-0123456789"
        yield c


async def answered_within_bounds(client: httpx.AsyncClient, name: str, method: str, path: str, payload: Any) -> int:
    response = await client.request(method, path, json=payload)
    assert response.headers["content-type"] == "application/problem+json", name
    assert response.json()["detail"], name
    assert "Traceback" not in response.text
    assert len(response.content) < 4096, f"{name}: {len(response.content)} bytes; echoes must be bounded"
    return response.status_code


@pytest.mark.parametrize(("name", "method", "path", "payload"), HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES])
async def test_hostile_model_names_in_the_path_are_refused_as_invalid(
    limited: httpx.AsyncClient, name: str, method: str, path: str, payload: Any
) -> None:
    assert await answered_within_bounds(limited, name, method, path, payload) == 422


@pytest.mark.parametrize(("name", "method", "path", "payload"), HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES])
async def test_hostile_model_names_out_of_a_keys_reach_get_a_403_with_the_name_clipped(
    keyed: httpx.AsyncClient, name: str, method: str, path: str, payload: Any
) -> None:
    assert await answered_within_bounds(keyed, name, method, path, payload) == 403


# item 4: quotas
# Rows wider than LOSS_SERVICE_QUOTA_ROW_VALUES (4 here): 422 naming the field and row 0, nothing stored.
ROW_TOO_WIDE: list[tuple[str, str, dict[str, Any], str]] = [
    ("predictions", "/v1/models/quota/predictions", {"ids": ["a"], "predictions": [[0.5] * 5]}, "predictions.0"),
    ("labels", "/v1/models/quota/labels", {"ids": ["a", "b"], "labels": [[[1, 2], [3, 4], [5, 6]]] * 2}, "labels.0"),
]


@pytest.mark.parametrize(("name", "path", "payload", "where"), ROW_TOO_WIDE, ids=[c[0] for c in ROW_TOO_WIDE])
async def test_a_row_too_wide_for_the_quota_is_refused(
    name: str,
    path: str,
    payload: dict[str, Any],
    where: str,
    tmp_path: Any,  # a pathlib.Path
) -> None:
    app = create_app(Settings(quota_row_values=4, store_url=f"sqlite:///{tmp_path}/store.sqlite3"))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://bad") as c:
        assert (await c.put("/v1/models/quota", json={"losses": [{"loss": "mse"}]})).status_code == 200
        response = await c.post(path, json=payload)
        assert response.status_code == 422, f"{name}: {response.status_code} {response.text[:300]}"
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"].startswith(f"{where}: a row holds ")
        assert "quota max_row_values of 4" in response.json()["detail"]
        status = (await c.get("/v1/models/quota")).json()
        assert (status["pending_predictions"], status["pending_labels"], status["stored_bytes"]) == (0, 0, 0)


# item 2: control characters in ids
# SQLite's JSON functions cut an id at U+0000 (two ids stored as one row "", counters adrift) and
# PostgreSQL refuses it (a 500): every control character (C0, DEL, C1) in an id is a 422 naming
# its index; lone surrogates are malformed JSON (400), as both JSON parsers read them.
ID_LOGS = "/v1/models/corpus/predictions"
ID_LABELS = "/v1/models/corpus/labels"


def _predictions(ids: str, count: int) -> bytes:
    return b'{"ids": [' + ids.encode() + b'], "predictions": [' + b", ".join([b"[0.2, 0.8]"] * count) + b"]}"


CONTROL_IDS: list[tuple[str, str, bytes, int, str]] = [
    ("nul-two-ids", ID_LOGS, _predictions('"\\u0000a", "\\u0000b"', 2), 422, "ids.0: id contains the control character U+0000"),
    ("nul-inside", ID_LOGS, _predictions('"a", "a\\u0000x"', 2), 422, "ids.1: id contains the control character U+0000"),
    ("nul-alone-label", ID_LABELS, b'{"ids": ["\\u0000"], "labels": [1]}', 422, "ids.0: id contains the control character U+0000"),
    ("nul-after-ints", ID_LABELS, b'{"ids": [1, 2, "3\\u0000"], "labels": [1, 0, 1]}', 422, "ids.2: id contains the control character U+0000"),
    *[(f"c0-{c:02x}", ID_LOGS, _predictions(f'"x", "y\\u{c:04x}"', 2), 422, f"ids.1: id contains the control character U+{c:04X}")
      for c in (0x01, 0x09, 0x0A, 0x0D, 0x1B, 0x1F)],
    *[(f"c1-{c:02x}", ID_LOGS, _predictions(f'"\\u{c:04x}z"', 1), 422, f"ids.0: id contains the control character U+{c:04X}")
      for c in (0x7F, 0x80, 0x85, 0x9B, 0x9F)],
    ("c1-raw-utf8", ID_LOGS, b'{"ids": ["a\xc2\x85"], "predictions": [[0.2, 0.8]]}', 422, "ids.0: id contains the control character U+0085"),
    ("del-raw", ID_LOGS, b'{"ids": ["a\x7f"], "predictions": [[0.2, 0.8]]}', 422, "ids.0: id contains the control character U+007F"),
    ("c0-raw", ID_LOGS, b'{"ids": ["a\x01"], "predictions": [[0.2, 0.8]]}', 400, "malformed JSON"),
    ("nul-raw", ID_LOGS, b'{"ids": ["a\x00"], "predictions": [[0.2, 0.8]]}', 400, "malformed JSON"),
    ("surrogate-high", ID_LOGS, _predictions('"\\ud800"', 1), 400, "malformed JSON"),
    ("surrogate-low", ID_LOGS, _predictions('"a", "b\\udc00c"', 2), 400, "malformed JSON"),
    ("surrogate-raw", ID_LOGS, b'{"ids": ["\xed\xa0\x80"], "predictions": [[0.2, 0.8]]}', 400, "malformed JSON"),
    ("nul-and-repeat", ID_LOGS, _predictions('"a", "a", "\\u0000"', 3), 422, "ids.1: repeats the id"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "content", "status", "detail"), [c[1:] for c in CONTROL_IDS], ids=[c[0] for c in CONTROL_IDS]
)
async def test_ids_with_control_characters_are_refused(
    limited: httpx.AsyncClient, path: str, content: bytes, status: int, detail: str
) -> None:
    before = (await limited.get("/v1/models/corpus")).json()
    response = await limited.post(path, content=content, headers={"content-type": JSON})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"].startswith(detail), response.text
    after = (await limited.get("/v1/models/corpus")).json()
    assert (after["pending_predictions"], after["pending_labels"]) == (
        before["pending_predictions"],
        before["pending_labels"],
    )


async def test_ids_with_printable_unicode_are_kept_as_given(limited: httpx.AsyncClient) -> None:
    """What is not refused: spaces, NBSP, line separators, accents, characters beyond the BMP."""
    assert (await limited.put("/v1/models/corpus-ids", json={"losses": [{"loss": "mse"}]})).status_code == 200
    ids = ["a b", "a\u00a0b", "a\u2028b", "é", "\U0001f600", "\u00a0", "\ufeff"]
    logged = await limited.post("/v1/models/corpus-ids/predictions", json={"ids": ids, "predictions": [0.5] * len(ids)})
    assert logged.status_code == 200, logged.text
    joined = await limited.post("/v1/models/corpus-ids/labels", json={"ids": ids[::-1], "labels": [0.5] * len(ids)})
    assert joined.json()["joined_ids"] == ids[::-1]


# item 7: OIP request shape
# The protocol's request shape (service/server/api/oip_schema.py) is validated before any tensor is decoded:
# each of these was a 500 with a traceback (the first six are the issue's), or was silently coerced.
OIP_PREDICTIONS = {"name": "predictions", "shape": [2], "datatype": "FP64", "data": [0.5, 1.0]}
OIP_LABELS = {"name": "labels", "shape": [2], "datatype": "FP64", "data": [1.0, 0.0]}
OIP_SHAPE_CASES = [
    ("input-parameters-list", {"inputs": [OIP_PREDICTIONS, {**OIP_LABELS, "parameters": [1]}]},
     "inputs[1].parameters: must be an object, got [1]"),
    ("input-parameters-string", {"inputs": [{**OIP_PREDICTIONS, "parameters": "x"}, OIP_LABELS]},
     'inputs[0].parameters: must be an object, got "x"'),
    ("output-parameters-number", {"inputs": [OIP_PREDICTIONS, OIP_LABELS], "outputs": [{"name": "mean", "parameters": 5}]},
     "outputs[0].parameters: must be an object, got 5"),
    ("output-name-list", {"inputs": [OIP_PREDICTIONS, OIP_LABELS], "outputs": [{"name": "mean"}, {"name": ["mean"]}]},
     'outputs[1].name: must be a string, got ["mean"]'),
    ("datatype-list", {"inputs": [OIP_PREDICTIONS, {**OIP_LABELS, "datatype": ["FP64"]}]},
     'inputs[1].datatype: must be a string, got ["FP64"]'),
    ("shape-booleans", {"inputs": [{**OIP_PREDICTIONS, "shape": [True, True], "data": [0.5]}, OIP_LABELS]},
     "inputs[0].shape[0]: must be a non-negative integer, got true; "
     "inputs[0].shape[1]: must be a non-negative integer, got true"),
    ("binary-data-size-boolean",
     {"inputs": [OIP_PREDICTIONS, {**OIP_LABELS, "parameters": {"binary_data_size": True}}]},
     "inputs[1].parameters.binary_data_size: must be a non-negative integer, got true"),
    ("binary-data-output-string", {"inputs": [OIP_PREDICTIONS, OIP_LABELS], "parameters": {"binary_data_output": "no"}},
     'parameters.binary_data_output: must be a boolean, got "no"'),
    ("output-binary-data-string",
     {"inputs": [OIP_PREDICTIONS, OIP_LABELS], "outputs": [{"name": "mean", "parameters": {"binary_data": "no"}}]},
     'outputs[0].parameters.binary_data: must be a boolean, got "no"'),
    ("input-parameter-object", {"inputs": [{**OIP_PREDICTIONS, "parameters": {"x": {"y": 1}}}, OIP_LABELS]},
     'inputs[0].parameters.x: must be a string, a number or a boolean, got {"y":1}'),
    ("id-number", {"id": 7, "inputs": [OIP_PREDICTIONS, OIP_LABELS]}, "id: must be a string, got 7"),
    ("id-deep", {"id": json.loads("[" * 300 + "]" * 300), "inputs": [OIP_PREDICTIONS, OIP_LABELS]},
     "id: must be a string, got a deeply nested array"),
    ("unknown-field", {"inputs": [{**OIP_PREDICTIONS, "contents": [1]}, OIP_LABELS]},
     "inputs[0].contents: is not a field of the protocol's request"),
    ("data-number", {"inputs": [OIP_PREDICTIONS, {**OIP_LABELS, "shape": [], "data": 1.0}]},
     "inputs[1].data: must be an array, got 1.0"),
    ("shape-too-deep", {"inputs": [{**OIP_PREDICTIONS, "shape": [1] * 65, "data": [1.0]}, OIP_LABELS]},
     "inputs[0].shape: at most 32 dimensions, got 65"),
    ("many-errors", {"inputs": [{**OIP_PREDICTIONS, "shape": [-1] * 5}, OIP_LABELS]},
     "inputs[0].shape[0]: must be a non-negative integer, got -1; inputs[0].shape[1]: must be a non-negative "
     "integer, got -1; inputs[0].shape[2]: must be a non-negative integer, got -1; and 2 more"),
    ("too-many-inputs", {"inputs": [OIP_PREDICTIONS, OIP_LABELS] * 2}, "inputs: at most 3 items, got 4"),
    ("many-unknown-fields", {"inputs": [{**OIP_PREDICTIONS, **{f"k{i}": i for i in range(2_000)}}, OIP_LABELS]},
     "inputs[0].k0: is not a field of the protocol's request (and 1,999 more like it)"),
    ("many-object-parameters",
     {"inputs": [OIP_PREDICTIONS, OIP_LABELS], "outputs": [{"name": "mean", "parameters": {f"k{i}": {} for i in range(2_000)}}]},
     "outputs[0].parameters.k0: must be a string, a number or a boolean, got {} (and 1,999 more like it)"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "error"), [c[1:] for c in OIP_SHAPE_CASES], ids=[c[0] for c in OIP_SHAPE_CASES])
async def test_a_malformed_oip_request_is_a_400_naming_the_field(
    limited: httpx.AsyncClient, body: dict[str, Any], error: str
) -> None:
    response = await limited.post("/v2/models/mse/infer", content=json.dumps(body), headers={"content-type": JSON})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == JSON
    assert response.json() == {"error": error}


# issue 34: CRPS and multilabel margin
# Forecasts and padded targets that have no score: each is a 422 naming the field and the index.
CRPS_MULTILABEL_CASES = [
    ("crps-gaussian-negative-std", {"loss": "crps_gaussian", "predictions": [[0.0, 1.0], [1.0, -2.0]], "labels": [0.5, 1.0]},
     ["predictions", 1, 1], "the standard deviation must be >= 0, got -2.0"),
    ("crps-gaussian-three-columns", {"loss": "crps_gaussian", "predictions": [[0.0, 1.0, 2.0]], "labels": [0.5]},
     ["predictions"], "must be (N, 2) = [mean, std] per sample, got shape [1, 3]"),
    ("crps-gaussian-flat", {"loss": "crps_gaussian", "predictions": [0.0, 1.0], "labels": [0.5]},
     ["predictions"], "must be (N, 2) = [mean, std] per sample, got shape [2]"),
    ("crps-gaussian-labels-rows", {"loss": "crps_gaussian", "predictions": [[0.0, 1.0]], "labels": [[0.5]]},
     ["labels"], "shape [1, 1] should be [1]"),
    ("crps-ensemble-labels-count", {"loss": "crps_ensemble", "predictions": [[0.0, 1.0]], "labels": [0.5, 1.0]},
     ["labels"], "shape [2] should be [1]"),
    ("crps-ensemble-weights-length",
     {"loss": "crps_ensemble", "predictions": [[0.0, 1.0]], "labels": [0.5], "options": {"weights": [1.0]}},
     ["options", "weights"], "needs one weight per member (2), got 1"),
    ("crps-ensemble-weights-zero",
     {"loss": "crps_ensemble", "predictions": [[0.0, 1.0]], "labels": [0.5], "options": {"weights": [0.0, 0.0]}},
     ["options", "weights"], "the member weights sum to 0; the forecast has no distribution"),
    ("crps-ensemble-weight-negative",
     {"loss": "crps_ensemble", "predictions": [[0.0, 1.0]], "labels": [0.5], "options": {"weights": [1.0, -1.0]}},
     ["options", "weights", 1], "Input should be greater than or equal to 0"),
    ("multilabel-target-after-padding",
     {"loss": "multilabel_margin", "predictions": [[0.0, 1.0, 2.0]], "labels": [[0, -1, 2]]},
     ["labels", 0, 2], "target 2 follows the -1 padding; -1 may only fill the end of a row"),
    ("multilabel-target-out-of-range",
     {"loss": "multilabel_margin", "predictions": [[0.0, 1.0, 2.0]] * 2, "labels": [[0, -1, -1], [1, 3, -1]],
      "convention": "torch"},
     ["labels", 1, 1], "target 3 is neither a class in [0, 2] nor the padding -1"),
    ("multilabel-target-below-padding",
     {"loss": "multilabel_margin", "predictions": [[0.0, 1.0, 2.0]], "labels": [[-2, -1, -1]]},
     ["labels", 0, 0], "target -2 is neither a class in [0, 2] nor the padding -1"),
    ("multilabel-target-fraction",
     {"loss": "multilabel_margin", "predictions": [[0.0, 1.0, 2.0]], "labels": [[0.5, -1, -1]]},
     ["labels", 0, 0], "class labels must be integers, got 0.5"),
    ("multilabel-labels-shape",
     {"loss": "multilabel_margin", "predictions": [[0.0, 1.0, 2.0]], "labels": [0]},
     ["labels"], "shape [1] should be [1, 3] (targets padded with -1)"),
    ("multilabel-predictions-flat",
     {"loss": "multilabel_margin", "predictions": [0.0, 1.0, 2.0], "labels": [0, -1, -1]},
     ["predictions"], "must be (N, C) scores, got shape [3]"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "loc", "message"), [c[1:] for c in CRPS_MULTILABEL_CASES],
                         ids=[c[0] for c in CRPS_MULTILABEL_CASES])  # fmt: skip
@pytest.mark.filterwarnings("error::RuntimeWarning")
async def test_a_forecast_or_target_without_a_score_is_a_422_naming_field_and_index(
    limited: httpx.AsyncClient, body: dict[str, Any], loc: list[Any], message: str
) -> None:
    response = await limited.post("/v1/loss", content=json.dumps(body), headers={"content-type": JSON})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"] == [{"loc": ["body", *loc], "msg": message}]


# issue 34: scikit-learn losses
# scikit-learn's domain rules (Tweedie powers, non-negative counts, positive gamma targets, alpha in
# [0, 1], integer class values, 0/1 indicators): each a 422 naming the field and the index.
SKLEARN_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("poisson-negative-label", {"loss": "poisson_deviance", "predictions": [1.0, 2.0, 1.0], "labels": [0.0, -1.0, 2.0]},
     "labels.1: with power 1, labels must be >= 0, got -1.0"),
    ("poisson-zero-prediction", {"loss": "mean_poisson_deviance", "predictions": [1.0, 0.0], "labels": [0.0, 1.0]},
     "predictions.1: with power 1, predictions must be > 0, got 0.0"),
    ("gamma-zero-label", {"loss": "gamma_deviance", "predictions": [1.0, 2.0, 1.0], "labels": [1.0, 2.0, 0.0]},
     "labels.2: with power 2, labels must be > 0, got 0.0"),
    ("gamma-negative-prediction-2d",
     {"loss": "gamma_deviance", "predictions": [[1.0, 2.0], [-1.0, 1.0]], "labels": [[1.0, 2.0], [1.0, 1.0]]},
     "predictions.1.0: with power 2, predictions must be > 0, got -1.0"),
    ("tweedie-power-between-0-and-1",
     {"loss": "tweedie_deviance", "predictions": [1.0], "labels": [1.0], "options": {"power": 0.5}},
     "options.power: must be <= 0 or >= 1 (no Tweedie distribution between), got 0.5"),
    ("tweedie-power-3-zero-label",
     {"loss": "tweedie_deviance", "predictions": [1.0, 1.0], "labels": [1.0, 0.0], "options": {"power": 3}},
     "labels.1: with power 3, labels must be > 0, got 0.0"),
    ("tweedie-negative-power-zero-prediction",
     {"loss": "tweedie_deviance", "predictions": [0.0, 1.0], "labels": [-2.0, 1.0], "options": {"power": -1}},
     "predictions.0: with power -1, predictions must be > 0, got 0.0"),
    ("tweedie-compound-negative-label-float32",
     {"loss": "tweedie_deviance", "predictions": [1.0, 1.0], "labels": [1.0, -0.5], "options": {"power": 1.5},
      "dtype": "float32", "convention": "torch"},
     "labels.1: with power 1.5, labels must be >= 0, got -0.5"),
    ("tweedie-power-string", {"loss": "tweedie_deviance", "predictions": [1.0], "labels": [1.0], "options": {"power": "1"}},
     "options.power: Input should be a valid number"),
    ("pinball-alpha-above-1", {"loss": "pinball", "predictions": [1.0], "labels": [1.0], "options": {"alpha": 1.5}},
     "options.alpha: Input should be less than or equal to 1"),
    ("pinball-alpha-negative", {"loss": "pinball", "predictions": [1.0], "labels": [1.0], "options": {"alpha": -0.1}},
     "options.alpha: Input should be greater than or equal to 0"),
    ("hamming-fractional-label", {"loss": "hamming", "predictions": [1.0, 2.0], "labels": [1.0, 2.5]},
     "labels.1: class labels must be integers, got 2.5"),
    ("hamming-indicator-2", {"loss": "hamming_loss", "predictions": [[0, 1], [1, 2]], "labels": [[0, 1], [1, 1]]},
     "predictions.1.1: multilabel indicators must be one of [0.0, 1.0], got 2.0"),
    ("hamming-3d", {"loss": "hamming", "predictions": [[[0]]], "labels": [[[0]]]},
     "predictions: must be (N,) class values or (N, K) indicators, got shape [1, 1, 1]"),
    ("zero-one-label-outside-classes", {"loss": "zero_one", "predictions": [[0.2, 0.8], [0.6, 0.4]], "labels": [1, 2]},
     "labels.1: class label 2 is outside [0, 1]"),
    ("zero-one-binary-column-label-2", {"loss": "zero_one_loss", "predictions": [0.2, 0.7], "labels": [0, 2]},
     "labels.1: class label 2 is outside [0, 1]"),
    ("zero-one-probability-above-1", {"loss": "zero_one", "predictions": [0.2, 1.5], "labels": [0, 1]},
     "predictions.1: probabilities (from_logits is false) must lie in [0, 1], got 1.5"),
    ("zero-one-3d", {"loss": "zero_one", "predictions": [[[0.5]]], "labels": [0]},
     "predictions: must be (N,), (N, 1) or (N, C) class scores, got shape [1, 1, 1]"),
]  # fmt: skip


@pytest.mark.parametrize(("request_body", "detail"), [c[1:] for c in SKLEARN_CASES], ids=[c[0] for c in SKLEARN_CASES])
async def test_scikit_learn_losses_refuse_outside_their_domain_by_index(
    limited: httpx.AsyncClient, request_body: dict[str, Any], detail: str
) -> None:
    response = await limited.post("/v1/loss", json=request_body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == detail
    call = {"loss": request_body["loss"], "options": request_body.get("options", {})}
    batch = {k: v for k, v in request_body.items() if k not in ("loss", "options")}
    evaluated = await limited.post("/v1/evaluate", json={**batch, "losses": [call]})
    assert evaluated.status_code == 422, evaluated.text
    assert detail.split(":")[-1].strip() in evaluated.json()["detail"]


# -- probe: bodies of many bad elements build one error each, not one per element -----------------

MANY_BAD_ELEMENTS = [
    ("many-negative-weights",
     {"loss": "multi_margin", "options": {"weight": [-1] * 100_000}, "predictions": [[0.5, 0.5]], "labels": [1]},
     [{"loc": ["body", "options", "weight", 0], "msg": "Input should be greater than or equal to 0"}]),
    ("many-negative-class-weights",
     {"loss": "scce", "options": {"class_weight": {str(i): -1 for i in range(100_000)}},
      "predictions": [[0.5, 0.5]], "labels": [1]},
     [{"loc": ["body", "options", "class_weight", "0"], "msg": "Input should be greater than or equal to 0"}]),
    ("many-unknown-top-keys",
     {"loss": "mse", "predictions": [1.0], "labels": [1.0], **{f"k{i}": 1 for i in range(100_000)}},
     [{"loc": ["body"],
       "msg": "Extra inputs are not permitted: 100,000 keys are not fields of this object, the first 'k0'"}]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "errors"), [c[1:] for c in MANY_BAD_ELEMENTS], ids=[c[0] for c in MANY_BAD_ELEMENTS])
async def test_a_body_of_many_bad_elements_is_one_error(
    limited: httpx.AsyncClient, body: dict[str, Any], errors: list[dict[str, Any]]
) -> None:
    response = await limited.post("/v1/loss", content=json.dumps(body), headers={"content-type": JSON})
    assert response.status_code == 422, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"] == errors


# issue 34: dice and tversky ------------------------------------------------------------------------

OVERLAP_CASES = [
    ("dice-shape-mismatch", {"loss": "dice", "predictions": [[0.5, 0.5]], "labels": [[1.0, 0.0, 1.0]]},
     "labels: shape [1, 3] does not match predictions shape [1, 2]"),
    ("dice-prediction-above-1", {"loss": "dice", "predictions": [[0.5, 0.5], [0.2, 1.5]], "labels": [[1.0, 0.0], [0.0, 1.0]]},
     "predictions.1.1: predictions (soft masks) must lie in [0, 1], got 1.5"),
    ("dice-negative-label-float32",
     {"loss": "dice_loss", "predictions": [[0.5, 0.5]], "labels": [[1.0, -0.5]], "dtype": "float32", "convention": "torch"},
     "labels.0.1: labels (soft masks) must lie in [0, 1], got -0.5"),
    ("tversky-negative-prediction-3d",
     {"loss": "tversky", "predictions": [[[0.5], [0.5]], [[0.5], [-0.1]]], "labels": [[[1.0], [0.0]], [[0.0], [1.0]]]},
     "predictions.1.1.0: predictions (soft masks) must lie in [0, 1], got -0.1"),
    ("tversky-label-above-1", {"loss": "tversky", "predictions": [0.5, 0.5], "labels": [1.0, 2.0]},
     "labels.1: labels (soft masks) must lie in [0, 1], got 2.0"),
    ("tversky-alpha-negative", {"loss": "tversky", "predictions": [0.5], "labels": [1.0], "options": {"alpha": -0.1}},
     "options.alpha: Input should be greater than or equal to 0"),
    ("tversky-beta-negative", {"loss": "tversky_loss", "predictions": [0.5], "labels": [1.0], "options": {"beta": -1}},
     "options.beta: Input should be greater than or equal to 0"),
    ("tversky-beta-string", {"loss": "tversky", "predictions": [0.5], "labels": [1.0], "options": {"beta": "0.5"}},
     "options.beta: Input should be a valid number"),
    ("dice-unknown-option", {"loss": "dice", "predictions": [0.5], "labels": [1.0], "options": {"axis": [1]}},
     "options.axis: Extra inputs are not permitted"),
]  # fmt: skip


@pytest.mark.parametrize(("request_body", "detail"), [c[1:] for c in OVERLAP_CASES], ids=[c[0] for c in OVERLAP_CASES])
async def test_dice_and_tversky_refuse_bad_input_by_field_and_index(
    limited: httpx.AsyncClient, request_body: dict[str, Any], detail: str
) -> None:
    response = await limited.post("/v1/loss", json=request_body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == detail


# issue 34: generalized cross-entropy and circle ---------------------------------------------------

GCE = "categorical_generalized_cross_entropy"
ISSUE_34_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("gce-q-zero", {"loss": GCE, "predictions": [[0.5, 0.5]], "labels": [0], "options": {"q": 0.0}},
     "options.q: Input should be greater than 0"),
    ("gce-q-one", {"loss": GCE, "predictions": [[0.5, 0.5]], "labels": [0], "options": {"q": 1}},
     "options.q: Input should be less than 1"),
    ("gce-prediction-above-1", {"loss": GCE, "predictions": [[0.5, 0.5], [1.5, 0.0]], "labels": [0, 1]},
     "predictions.1.0: probabilities must lie in [0, 1], got 1.5"),
    ("gce-negative-prediction", {"loss": GCE, "predictions": [[0.5, 0.5], [0.2, -0.1]], "labels": [0, 1]},
     "predictions.1.1: probabilities must lie in [0, 1], got -0.1"),
    ("gce-label-outside-classes", {"loss": GCE, "predictions": [[0.5, 0.5], [0.2, 0.8]], "labels": [0, 2]},
     "labels.1: class label 2 is outside [0, 1]"),
    ("gce-labels-with-trailing-axis", {"loss": GCE, "predictions": [[0.5, 0.5], [0.2, 0.8]], "labels": [[0], [1]]},
     "labels: shape [2, 1] should be the predictions' [2, 2] without the class axis"),
    ("gce-too-many-labels", {"loss": GCE, "predictions": [[0.5, 0.5], [0.2, 0.8]], "labels": [0, 1, 1]},
     "labels: shape [3] should be [2] for predictions [2, 2]"),
    ("circle-3d-embeddings", {"loss": "circle", "predictions": [[[1.0], [0.0]], [[0.0], [1.0]]], "labels": [0, 1]},
     "predictions: embeddings must be 2-D (N, D), got shape [2, 2, 1]"),
    ("circle-too-few-labels", {"loss": "circle", "predictions": [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], "labels": [0, 1]},
     "labels: shape [2] should be [3] or [3, 1], one class per embedding"),
    ("circle-fractional-label", {"loss": "circle", "predictions": [[1.0, 0.0], [0.0, 1.0]], "labels": [0, 1.5]},
     "labels.1: class labels must be integers, got 1.5"),
    ("circle-beyond-the-pair-budget", {"loss": "circle", "predictions": [[1.0]] * 4097, "labels": [0, 1] * 2048 + [0]},
     "predictions: 4097 embeddings: circle compares every pair, so a batch holds at most 4096"),
    ("circle-one-class-under-torch",
     {"loss": "circle", "convention": "torch", "predictions": [[1.0, 0.0], [0.0, 1.0]], "labels": [4, 4]},
     "labels: no sample has both a positive and a negative in the batch; the mean would be 0/0"),
    ("ctc-2d-predictions", {"loss": "ctc", "predictions": [[0.0, 0.0]], "labels": [[1]]},
     "predictions: must be (N, T, C): per-step class scores, batch first; got shape [1, 2]"),
    ("ctc-input-length-past-t",
     {"loss": "ctc_loss", "predictions": [[[0.0, 0.0]] * 3] * 2, "labels": [[1], [1]], "options": {"input_lengths": [3, 4]}},
     "options.input_lengths.1: 4 is not a length in [0, T = 3]"),
    ("ctc-keras-output-length-too-few",
     {"loss": "ctc", "predictions": [[[0.0, 0.0]] * 3] * 2, "labels": [[1], [1]], "options": {"output_length": [3]}}, "options.input_lengths: needs one value per sample (2), got 1"),
    ("ctc-label-is-the-blank",
     {"loss": "ctc", "predictions": [[[0.0, 0.0, 0.0]] * 3] * 2, "labels": [[1, 2], [2, 1]],
      "options": {"mask_index": 2, "target_length": [1, 2]}}, "labels.1.0: label 2 is the blank; a target is a sequence of non-blank classes"),
    ("ctc-impossible-under-torch",
     {"loss": "ctc", "convention": "torch", "predictions": [[[0.0, 0.0]] * 3] * 2, "labels": [[1, 0, 0], [1, 1, 1]]}, "labels.1: no alignment of these 3 labels fits the sample's 3 time steps (PyTorch's loss is inf); "
     "set zero_infinity to count it as 0"),
    ("ctc-negative-target-length",
     {"loss": "ctc", "predictions": [[[0.0, 0.0]] * 3], "labels": [[1]], "options": {"target_lengths": [-1]}}, "options.target_lengths.0: -1 is not a length in [0, S = 1]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_body", "detail"), [c[1:] for c in ISSUE_34_CASES], ids=[c[0] for c in ISSUE_34_CASES]
)
async def test_issue_34_losses_name_the_bad_field_and_index(
    limited: httpx.AsyncClient, request_body: dict[str, Any], detail: str
) -> None:
    response = await limited.post("/v1/loss", json=request_body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == detail
