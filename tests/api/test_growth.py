"""A bad body's cost grows with its size, not faster: 8x the bad keys, ids or entries must cost less
than 20x the CPU time (a quadratic path costs 64x). Two sizes compared in one test, never a bound
in seconds: the ratio holds on a slow machine as on a fast one.

Each case is a door a client can open with any dict- or list-valued field: unknown option keys,
a repeated key among many, per-entry errors in class weights, unknown keys in a model's
configuration, repeated row ids, unknown keys, inputs and outputs in an Open Inference Protocol
request, unexpected arrays in npz and Arrow bodies."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from service.server.api.errors import MAX_REPORTED_ERRORS
from tests.apps import MakeApp

pytestmark = pytest.mark.anyio

SMALL = 512
GROWTH = 8
# Linear work over 8x the input costs ~8x, plus noise and the fixed cost of a request; quadratic
# work costs ~64x.
BOUND = 20


@pytest.fixture
async def api(make_app: MakeApp, tmp_path: Path) -> httpx.AsyncClient:
    c = await make_app(store_url=f"sqlite:///{tmp_path}/store.sqlite3")
    response = await c.put("/v1/models/fraud", json={"losses": [{"loss": "mse"}]})
    assert response.status_code == 200, response.text
    return c


def keys(count: int, value: str = "1") -> str:
    return ", ".join(f'"k{i}": {value}' for i in range(count))


def npz_with_members(count: int) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, predictions=np.ones(1), labels=np.ones(1), **{f"x{i}": np.ones(1) for i in range(count)})
    return buffer.getvalue()


def arrow_with_columns(count: int) -> bytes:
    table = pa.table({"predictions": [1.0], "labels": [1.0], **{f"x{i}": [1.0] for i in range(count)}})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def oip_tensor(name: str) -> dict[str, object]:
    return {"name": name, "shape": [1], "datatype": "FP64", "data": [1.0]}


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: Callable[[int], str | bytes]
    status: int
    method: str = "POST"
    small: int = SMALL  # large enough that the work measured outweighs a request's fixed cost
    content_type: str = "application/json"


CASES = [
    Case(
        "unknown option keys",
        "/v1/loss",
        lambda n: '{"loss": "mse", "options": {' + keys(n) + '}, "predictions": [1.0], "labels": [1.0]}',
        422,
    ),
    Case(
        "a repeated key among many option keys",
        "/v1/loss",
        lambda n: '{"loss": "mse", "options": {' + keys(n) + ', "k7": 2}, "predictions": [1.0], "labels": [1.0]}',
        422,
        small=4096,
    ),
    Case(
        "negative class weights by class",
        "/v1/loss",
        lambda n: (
            '{"loss": "scce", "options": {"class_weight": {'
            + ", ".join(f'"{i}": -1' for i in range(n))
            + '}}, "predictions": [[0.5, 0.5]], "labels": [1]}'
        ),
        422,
    ),
    Case(
        "unknown keys in a model's configuration",
        "/v1/models/other",
        lambda n: '{"losses": [{"loss": "mse"}], ' + keys(n) + "}",
        422,
        "PUT",
    ),
    Case(
        "a repeated id at the end of many",
        "/v1/models/fraud/predictions",
        lambda n: json.dumps({"ids": [*map(str, range(n)), "0"], "predictions": [1.0] * (n + 1)}),
        422,
    ),
    Case(
        "unknown keys in an Open Inference Protocol request's parameters",
        "/v2/models/mse/infer",
        lambda n: (
            '{"parameters": {'
            + keys(n, '"x"')
            + '}, "inputs": [{"name": "predictions", "shape": [1], "datatype": "FP64", "data": [1.0]},'
            ' {"name": "labels", "shape": [1], "datatype": "FP64", "data": ["one"]}]}'
        ),
        400,
    ),
    Case(
        "unexpected arrays in an npz body",
        "/v1/loss?loss=mse",
        npz_with_members,
        422,
        small=256,
        content_type="application/x-npz",
    ),
    Case(
        "unexpected columns in an Arrow body",
        "/v1/loss?loss=mse",
        arrow_with_columns,
        422,
        content_type="application/vnd.apache.arrow.stream",
    ),
    Case(
        "unexpected inputs in an Open Inference Protocol request",
        "/v2/models/mse/infer",
        lambda n: json.dumps({"inputs": [oip_tensor(f"x{i}") for i in range(n)]}),
        400,
    ),
    Case(
        "unknown outputs in an Open Inference Protocol request",
        "/v2/models/mse/infer",
        lambda n: json.dumps(
            {
                "inputs": [oip_tensor("predictions"), oip_tensor("labels")],
                "outputs": [{"name": f"o{i}"} for i in range(n)],
            }
        ),
        400,
    ),
]


async def cost(api: httpx.AsyncClient, case: Case, size: int, tries: int) -> tuple[float, httpx.Response]:
    """The least process CPU time of `tries` identical requests (the app's worker threads count)."""
    made = case.body(size)
    content = made.encode() if isinstance(made, str) else made
    best, response = float("inf"), None
    for _ in range(tries):
        start = time.process_time()
        response = await api.request(
            case.method, case.path, content=content, headers={"content-type": case.content_type}
        )
        best = min(best, time.process_time() - start)
    assert response is not None
    return best, response


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_bad_body_costs_in_proportion_to_its_size(api: httpx.AsyncClient, case: Case) -> None:
    await cost(api, case, case.small, 1)  # warm-up: imports, caches
    small, small_answer = await cost(api, case, case.small, 3)
    large, large_answer = await cost(api, case, case.small * GROWTH, 1)
    if large >= BOUND * small:  # one noisy run is not a verdict: the least of three is
        large, large_answer = await cost(api, case, case.small * GROWTH, 3)
    assert small_answer.status_code == case.status, small_answer.text[:300]
    assert large_answer.status_code == case.status, large_answer.text[:300]
    assert large < BOUND * small, f"{GROWTH}x the input cost {large / small:.1f}x the CPU time"


async def test_a_problem_lists_the_first_errors_and_counts_the_rest(api: httpx.AsyncClient) -> None:
    # 15 unknown keys in the options and 15 at the top: each object's are named one by one.
    body = '{"loss": "mse", "options": {' + keys(15) + '}, "predictions": [1.0], "labels": [1.0], '
    body += ", ".join(f'"t{i}": 1' for i in range(15)) + "}"
    response = await api.post("/v1/loss", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    problem = response.json()
    assert problem["detail"].endswith(": Extra inputs are not permitted (and 29 more)")
    assert len(problem["errors"]) == MAX_REPORTED_ERRORS
    assert {"loc": ["body", "options", "k0"], "msg": "Extra inputs are not permitted"} in problem["errors"]


async def test_an_object_of_many_unknown_keys_is_one_error_naming_the_first(api: httpx.AsyncClient) -> None:
    body = '{"loss": "mse", "options": {' + keys(4096) + '}, "predictions": [1.0], "labels": [1.0]}'
    response = await api.post("/v1/loss", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    message = "Extra inputs are not permitted: 4,096 keys are not fields of this object, the first 'k0'"
    assert response.json()["errors"] == [{"loc": ["body", "options"], "msg": message}]


async def test_a_wrong_branch_is_dropped_only_where_another_branch_got_further(api: httpx.AsyncClient) -> None:
    """`class_weight` is a list or a dict: a dict with a bad weight is reported at its key, without
    the list branch's "should be a valid list"; a string is reported by both branches."""
    bad_weight = await api.post(
        "/v1/loss",
        json={
            "loss": "scce",
            "options": {"class_weight": {"0": 1.0, "1": -1.0}},
            "predictions": [[0.5, 0.5]],
            "labels": [1],
        },
    )
    assert bad_weight.status_code == 422
    assert [error["loc"] for error in bad_weight.json()["errors"]] == [["body", "options", "class_weight", "1"]]
    not_either = await api.post(
        "/v1/loss",
        json={"loss": "scce", "options": {"class_weight": "heavy"}, "predictions": [[0.5, 0.5]], "labels": [1]},
    )
    assert not_either.status_code == 422
    assert len(not_either.json()["errors"]) == 2


BAD_ELEMENTS = 100_000
# Bodies whose every element or key is wrong: Pydantic built an error for each (~1.4 KB once
# listed), so a 3 MB body of a million negative weights took a worker from 73 to 1,641 MiB under a
# 1 GiB budget before its 422.
MANY_ERRORS = {
    "negative weights in a list option": {
        "loss": "multi_margin",
        "options": {"weight": [-1] * BAD_ELEMENTS},
        "predictions": [[0.5, 0.5]],
        "labels": [1],
    },
    "strings in a list option": {
        "loss": "multi_margin",
        "options": {"weight": ["x"] * BAD_ELEMENTS},
        "predictions": [[0.5, 0.5]],
        "labels": [1],
    },
    "negative class weights by class": {
        "loss": "scce",
        "options": {"class_weight": {str(i): -1 for i in range(BAD_ELEMENTS)}},
        "predictions": [[0.5, 0.5]],
        "labels": [1],
    },
    "unknown option keys": {
        "loss": "mse",
        "options": {f"k{i}": 1 for i in range(BAD_ELEMENTS)},
        "predictions": [1.0],
        "labels": [1.0],
    },
    "unknown keys at the top": {
        "loss": "mse",
        "predictions": [1.0],
        "labels": [1.0],
        **{f"k{i}": 1 for i in range(BAD_ELEMENTS)},
    },
    "many losses to evaluate": {
        "losses": [{"loss": "mse", "x": 1}] * BAD_ELEMENTS,
        "predictions": [1.0],
        "labels": [1.0],
    },
}


@pytest.mark.parametrize("case", MANY_ERRORS)
async def test_a_body_of_many_bad_elements_builds_a_bounded_number_of_errors(
    api: httpx.AsyncClient, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted, not timed: the errors Pydantic builds for one body stay within what a problem
    lists, whatever the number of bad elements."""
    from service.server.api.body import json as body_module
    from service.server.api.errors import validation_problem

    built: list[int] = []

    def counting(exc: Any) -> Any:
        built.append(exc.error_count())
        return validation_problem(exc)

    monkeypatch.setattr(body_module, "validation_problem", counting)
    path = "/v1/evaluate" if "losses" in MANY_ERRORS[case] else "/v1/loss"
    response = await api.post(path, json=MANY_ERRORS[case])
    assert response.status_code == 422, response.text[:300]
    assert built, "the body was refused by Pydantic's validation"
    assert max(built) <= MAX_REPORTED_ERRORS, f"{max(built):,} errors built"
    assert response.json()["errors"]
