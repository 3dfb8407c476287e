"""The memory budget: estimates that bound what parsing really holds, and requests refused by them.

Before the budget, a 10 MB `/v1/evaluate` body (32 losses, one value per number) answered 1.5 GB
and peaked at 2.4 GB, and a 66 MB body of one-element rows peaked at 1.4 GB, in a pod given 2 GiB.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import numpy as np
import orjson
import pyarrow as pa
import pytest

from service.config import Settings
from service.server.api.body import decoded_bytes, json_decoded_bytes
from service.server.api.guards import HeavyRequests, Slot
from service.server.api.problems import ProblemError
from tests.api.test_api import problem
from tests.apps import app_client
from tests.guarded import computations_held, wait_for_event
from tests.servers import HANG, serving

RNG = np.random.default_rng(11)


def _body(predictions: Any, labels: Any) -> bytes:
    return orjson.dumps({"loss": "mse", "predictions": predictions, "labels": labels})


SHAPES = {
    "rows of 100": lambda: _body(RNG.random((4000, 100)).tolist(), RNG.random((4000, 100)).tolist()),
    "one-element rows": lambda: _body(RNG.random((200000, 1)).tolist(), RNG.random((200000, 1)).tolist()),
    "one-element rows, short decimals": lambda: _body(
        np.round(RNG.random((300000, 1)), 1).tolist(), np.round(RNG.random((300000, 1)), 1).tolist()
    ),
    "small integers": lambda: _body(
        RNG.integers(0, 10, (50000, 20)).tolist(), RNG.integers(0, 10, (50000, 20)).tolist()
    ),
    "an escaped quote in a string (parsed twice)": lambda: orjson.dumps(
        {
            "loss": "mse",
            "model": 'say "hi"',
            "predictions": RNG.random((200000, 1)).tolist(),
            "labels": [[1.0]] * 200000,
        }
    ),
    "flat, short decimals": lambda: _body(
        np.round(RNG.random(10**6), 1).tolist(), np.round(RNG.random(10**6), 1).tolist()
    ),
    # Objects and keys: a dict and a key each hold more than a number (refused once parsed).
    "a list of small objects": lambda: orjson.dumps(
        {"losses": [{"loss": "mse", "options": {}}] * 300000, "predictions": [[1.0]], "labels": [[1.0]]}
    ),
    "empty objects in one-element rows": lambda: _body([[{}]] * 500000, [[1.0]]),
    "an object of many keys": lambda: orjson.dumps(
        {"loss": "mse", "predictions": [1.0], "labels": [1.0], "options": {f"k{i}": 0.5 for i in range(300000)}}
    ),
    "an object of many keys of objects": lambda: orjson.dumps(
        {"loss": "mse", "predictions": [1.0], "labels": [1.0], "options": {f"k{i}": {} for i in range(300000)}}
    ),
}
# Run in a fresh interpreter: its peak RSS before parsing is where it stands, so the growth of the
# peak is what parsing held (tracemalloc cannot tell: it counts orjson's reallocations as held).
MEASURE_PARSING = """
import sys
from pathlib import Path
from service.server.api.body import validate_json
from service.server.api.schemas import loss_request_adapter

def peak():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

validate_json(loss_request_adapter(), b'{"loss": "mse", "predictions": [[1.0]], "labels": [[1.0]]}', 10**9)
body = Path(sys.argv[1]).read_bytes()
before = peak()
try:
    validate_json(loss_request_adapter(), body, 10**9)
except Exception:  # a refusal once parsed: the parse is what is measured
    pass
print(peak() - before)
"""


@pytest.mark.slow  # a fresh interpreter per shape
@pytest.mark.parametrize("shape", SHAPES)
def test_the_json_estimate_bounds_what_parsing_holds(shape: str, tmp_path: Path) -> None:
    body = SHAPES[shape]()
    (tmp_path / "body.json").write_bytes(body)
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE_PARSING, str(tmp_path / "body.json")],
        capture_output=True,
        text=True,
        check=True,
    )
    held = int(measured.stdout) + len(body)  # the body itself is held too
    estimate = json_decoded_bytes(body)
    assert held <= estimate, f"parsing held {held / len(body):.1f}x the body, estimated {estimate / len(body):.1f}x"
    assert estimate <= 5 * held  # an estimate, not a refusal of everything


def test_the_estimate_tells_one_element_rows_from_long_rows() -> None:
    long_rows, single = SHAPES["rows of 100"](), SHAPES["one-element rows"]()
    assert json_decoded_bytes(long_rows) < 8 * len(long_rows)
    assert json_decoded_bytes(single) > 8 * len(single)


def test_a_compressed_npz_is_estimated_by_what_it_declares() -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, predictions=np.zeros(10**6), labels=np.zeros(10**6))
    body = buffer.getvalue()
    assert len(body) < 50_000
    assert decoded_bytes("application/x-npz", body) >= 2 * 8 * 10**6


def test_a_slot_reserves_within_the_budget_and_gives_it_back() -> None:
    mib = 2**20
    limiter = HeavyRequests(app=None, limit=8, timeout=1, memory_budget=100 * mib)  # type: ignore[arg-type]
    first, second = limiter._claim(), limiter._claim()
    assert isinstance(first, Slot)
    assert isinstance(second, Slot)
    first.reserve(60 * mib, "the first")
    with pytest.raises(ProblemError) as refused:
        second.reserve(60 * mib, "the second")
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "1"}
    assert refused.value.detail == (
        "the second needs an estimated 60.0 MiB of memory and 40.0 MiB of this worker's budget is free; retry shortly"
    )
    second.reserve(40 * mib, "the second")  # what is free fits
    first.reserve(10 * mib, "the first")  # shrinking always succeeds, and frees the difference
    second.reserve(90 * mib, "the second")
    with pytest.raises(ProblemError) as alone:
        first.reserve(100 * mib + 1, "the first")
    assert alone.value.status == 413
    assert alone.value.detail == (
        "the first needs an estimated 100.0 MiB of memory; one worker's requests may hold 100.0 MiB "
        "(LOSS_SERVICE_MEMORY_BUDGET): send fewer samples, or fewer losses"
    )
    first.release()
    second.release()
    assert (limiter.reserved, limiter.busy) == (0, 0)
    alone_now = limiter._claim()
    assert alone_now is not None
    alone_now.reserve(100 * mib, "the whole budget")  # exactly the budget is allowed
    alone_now.release()


@pytest.mark.anyio
async def test_a_request_larger_than_the_budget_gets_413_naming_the_estimate() -> None:
    values = RNG.random((20000, 10)).tolist()
    body = {
        "predictions": values,
        "labels": values,
        "convention": "torch",
        "losses": [{"loss": "log_cosh"}] * 32,
    }
    async with app_client(Settings(memory_budget=100 * 2**20)) as c:
        refused = problem(await c.post("/v1/evaluate", json=body), 413)
        assert refused["detail"].startswith("this request (32 losses) needs an estimated ")
        assert "LOSS_SERVICE_MEMORY_BUDGET" in refused["detail"]
        body["losses"] = body["losses"][:2]
        assert (await c.post("/v1/evaluate", json=body)).status_code == 200


@pytest.mark.anyio
async def test_a_model_configuration_is_parsed_inside_the_budget(tmp_path: Path) -> None:
    """PUT /v1/models/{model} parses its body as /v1/evaluate does: 100,000 losses (2.8 MB) under
    a 16 MiB budget are refused by their estimate before they are parsed (a 28 MB body of them
    took a worker from 76 to 724 MiB under a 64 MiB budget, to answer 422 "at most 32 items")."""
    losses = [{"loss": "mse", "options": {}}] * 100_000
    settings = Settings(memory_budget=16 * 2**20, store_url=f"sqlite:///{tmp_path}/store.sqlite3")
    async with app_client(settings) as c:
        refused = problem(await c.put("/v1/models/m", json={"losses": losses}), 413)
        assert refused["detail"].startswith("parsing this body needs an estimated ")
        assert (await c.put("/v1/models/m", json={"losses": losses[:2]})).status_code == 200
        assert [call["loss"] for call in (await c.get("/v1/models/m")).json()["losses"]] == ["mean_squared_error"] * 2


@pytest.mark.anyio
async def test_requests_that_do_not_fit_beside_each_other_get_503(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request needs about 60 % of the budget: the second, while the first computes, gets 503."""
    values = RNG.random((10000, 10)).tolist()
    body = {"loss": "mse", "predictions": values, "labels": values}
    answers: dict[str, httpx.Response] = {}

    async def first(c: httpx.AsyncClient) -> None:
        answers["first"] = await c.post("/v1/loss", json=body)

    with computations_held(monkeypatch) as (entered, release):
        async with app_client(Settings(memory_budget=24 * 2**20, offload_bytes=0, max_concurrent=8)) as c:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(first, c)
                await wait_for_event(entered)
                second = await c.post("/v1/loss", json=body)
                refused = problem(second, 503)
                assert "of this worker's budget is free" in refused["detail"]
                assert second.headers["retry-after"] == "1"
                release.set()
            assert answers["first"].status_code == 200
            assert (await c.post("/v1/loss", json=body)).status_code == 200  # the budget was given back


def _arrow(table: pa.Table, compression: str | None = None) -> bytes:
    sink = io.BytesIO()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue()


ARROW = {"content-type": "application/vnd.apache.arrow.stream"}


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
@pytest.mark.anyio
async def test_a_compressed_arrow_stream_is_refused_before_it_is_decoded(compression: str) -> None:
    zeros = pa.array(np.zeros(10**6))
    body = _arrow(pa.table({"predictions": zeros, "labels": zeros}), compression)
    assert len(body) < 200_000  # 16 MB of numbers
    async with app_client(Settings()) as c:
        refused = problem(await c.post("/v1/loss?loss=mse", content=body, headers=ARROW), 415)
        assert refused["detail"].startswith("Arrow buffer compression (LZ4, ZSTD) is not accepted")
        plain = _arrow(pa.table({"predictions": zeros[:10], "labels": zeros[:10]}))
        assert (await c.post("/v1/loss?loss=mse", content=plain, headers=ARROW)).status_code == 200


@pytest.mark.anyio
async def test_an_arrow_column_of_nulls_is_refused_before_it_is_decoded() -> None:
    """A null column declares any length with no data: 10^8 of them became an 800 MB object array."""
    body = _arrow(pa.table({"predictions": pa.nulls(10**8), "labels": pa.nulls(10**8)}))
    assert len(body) < 10_000
    async with app_client(Settings()) as c:
        refused = problem(await c.post("/v1/loss?loss=mse", content=body, headers=ARROW), 422)
        assert refused["errors"][0]["loc"] == ["body", "predictions"]
        assert "has type null" in refused["detail"]


@pytest.mark.anyio
async def test_the_event_loop_is_left_by_decoded_size_not_body_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10 KB compressed npz (16 MB of numbers) and a short body of 32 losses are computed in a
    worker thread; a small ordinary request stays on the event loop."""
    threads: list[str] = []
    real = anyio.to_thread.run_sync

    async def spying(function: Any, *args: Any, **kwargs: Any) -> Any:
        if function.__name__ not in ("holding_the_slot", "parsing_reserved"):  # a request's parse and compute
            return await real(function, *args, **kwargs)

        def recording() -> Any:
            threads.append(threading.current_thread().name)
            return function(*args)

        return await real(recording, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", spying)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, predictions=np.zeros((10**6, 1)), labels=np.zeros((10**6, 1)))
    small = {"loss": "mse", "predictions": [[0.5]], "labels": [[1.0]]}
    values = RNG.random((300, 10)).tolist()
    many = {"predictions": values, "labels": values, "losses": [{"loss": "mse"}] * 32}
    async with app_client(Settings()) as c:  # offload_bytes: its default
        assert (await c.post("/v1/loss", json=small)).status_code == 200
        assert threads == []
        npz = await c.post(
            "/v1/loss?loss=mse", content=buffer.getvalue(), headers={"content-type": "application/x-npz"}
        )
        assert npz.status_code == 200
        assert len(threads) == 1
        assert len(orjson.dumps(many)) < Settings().offload_bytes / 8
        assert (await c.post("/v1/evaluate", json=many)).status_code == 200
        assert len(threads) == 2


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow  # starts a server
def test_the_served_probe_is_refused_without_the_memory_it_would_take() -> None:
    """The probe, scaled down: 32 losses over 5 x 10^5 numbers would answer ~400 MB of JSON; with
    a 256 MiB budget it gets 413 and the server's peak RSS hardly moves."""
    values = np.round(RNG.random((50000, 10)), 3).tolist()
    body = orjson.dumps(
        {"predictions": values, "labels": values, "convention": "torch", "losses": [{"loss": "log_cosh"}] * 32}
    )
    with serving(env={"LOSS_SERVICE_MEMORY_BUDGET": str(256 * 2**20)}) as (url, process):
        httpx.post(f"{url}/v1/loss", json={"loss": "mse", "predictions": [[1.0]], "labels": [[1.0]]}, timeout=HANG)
        before = _peak_rss(process.pid)
        answer = httpx.post(
            f"{url}/v1/evaluate", content=body, headers={"content-type": "application/json"}, timeout=60
        )
        assert answer.status_code == 413, answer.text[:300]
        grown = _peak_rss(process.pid) - before
    assert grown < 160 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
