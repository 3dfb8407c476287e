"""KServe's inference logger as a source of predictions: POST /v1/models/{model}/events with
CloudEvents built as kserve/kserve's `pkg/logger/worker.go` builds them (the CloudEvents SDK:
binary content mode, and structured mode), v1 and v2, either order, duplicates, expiry and
bounds, on SQLite and PostgreSQL; the losses joined afterwards equal /v1/loss on the same rows."""

from __future__ import annotations

import asyncio
import json
import math
import types
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from service.config import Settings
from service.server.api.inference_logs import read_request
from service.server.app import create_app
from service.usecases import events as events_module

pytestmark = pytest.mark.anyio
REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
SCCE = {"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True}}


def logger_event(
    kind: str,
    event_id: str,
    body: Any,
    *,
    mode: str = "binary",
    time: datetime | None = None,
    content_type: str = "application/json",
) -> tuple[bytes, dict[str, str]]:
    """The HTTP request KServe's logger sends for one half of an inference: `worker.go`'s
    `sendHttpCloudEvent` sets id, type, time, the extensions recordedtime, inferenceservicename,
    namespace, component, endpoint and metadata (the JSON of the forwarded headers), the source
    (the agent's `--source-uri`, default http://localhost:<port>/) and the data with the inference
    request's Content-Type, and sends in binary mode."""
    attributes = {
        "id": event_id,
        "type": f"org.kubeflow.serving.inference.{kind}",
        "source": "http://localhost:9081/",
        "specversion": "1.0",
        "time": time or datetime.now(UTC),
        "recordedtime": datetime.now(UTC),
        "inferenceservicename": "churn",
        "namespace": "default",
        "component": "predictor",
        "endpoint": "default",
        "metadata": "{}",
        "datacontenttype": content_type,
    }
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if mode == "structured-object":  # `data` as a JSON value, as the Go SDK writes JSON data
        event = CloudEvent(attributes, body)
        message = to_structured(event, JSONFormat())
    elif mode == "structured":  # bytes: `data_base64`
        message = to_structured(CloudEvent(attributes, raw), JSONFormat())
    else:
        message = to_binary(CloudEvent(attributes, raw), JSONFormat())
    return message.body, dict(message.headers)


def v2_request(users: list[str], countries: list[Any] | None = None) -> dict[str, Any]:
    inputs: list[dict[str, Any]] = [
        {"name": "user", "shape": [len(users)], "datatype": "BYTES", "data": users},
        {"name": "features", "shape": [len(users), 2], "datatype": "FP32", "data": [0.5] * (2 * len(users))},
    ]
    if countries is not None:
        inputs.append({"name": "country", "shape": [len(users), 1], "datatype": "BYTES", "data": countries})
    return {"id": "r", "inputs": inputs}


def v2_response(logits: np.ndarray[Any, Any], datatype: str = "FP64") -> dict[str, Any]:
    return {
        "model_name": "churn",
        "id": "r",
        "outputs": [
            {"name": "embedding", "shape": [len(logits), 1], "datatype": "FP32", "data": [0.0] * len(logits)},
            {"name": "logits", "shape": list(logits.shape), "datatype": datatype, "data": logits.ravel().tolist()},
        ],
    }


@pytest.fixture(params=["sqlite", "postgresql"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    if request.param == "postgresql":
        url = str(request.getfixturevalue("postgres_url"))
    settings = Settings(store_url=url, sweep_interval=3600, event_max_pending=6, event_max_pending_bytes=100_000)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loss-service") as c:
            yield c


async def configure(api: httpx.AsyncClient, model: str, events: dict[str, Any], **config: Any) -> None:
    body = {"losses": [SCCE], "convention": "torch", "events": events, **config}
    response = await api.put(f"/v1/models/{model}", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["events"] == {"id": "ce-id", "segments": {}, **events}


async def send(api: httpx.AsyncClient, model: str, message: tuple[bytes, dict[str, str]]) -> dict[str, Any]:
    response = await api.post(f"/v1/models/{model}/events", content=message[0], headers=message[1])
    assert response.status_code == 200, response.text
    return dict(response.json())


def table(api: httpx.AsyncClient, sql: str) -> list[tuple[Any, ...]]:
    store = api._transport.app.state.store  # type: ignore[attr-defined]
    with store.database.transaction(write=False) as tx:
        return list(tx.all(sql))


def naive_scce(logits: np.ndarray[Any, Any], labels: list[int]) -> float:
    """Mean softmax cross-entropy from logits, in plain float64 Python."""
    total = 0.0
    for row, label in zip(logits.tolist(), labels, strict=True):
        top = max(row)
        total += math.log(sum(math.exp(v - top) for v in row)) + top - row[label]
    return total / len(labels)


@pytest.mark.parametrize("mode", ["binary", "structured", "structured-object"])
@pytest.mark.parametrize("response_first", [False, True], ids=["request-first", "response-first"])
async def test_v2_events_in_either_order_join_their_labels_as_v1_loss(
    api: httpx.AsyncClient, mode: str, response_first: bool
) -> None:
    await configure(api, "churn", {"prediction": "logits", "id": "user"})
    rng = np.random.default_rng(3)
    batches = [[f"u{b}-{r}" for r in range(size)] for b, size in enumerate([3, 1, 4])]
    all_logits, all_ids = [], []
    for batch in batches:
        logits = rng.normal(0, 2, (len(batch), 3))
        event_id = str(uuid.uuid4())
        halves = [
            logger_event("request", event_id, v2_request(batch), mode=mode),
            logger_event("response", event_id, v2_response(logits), mode=mode),
        ]
        first, second = halves[::-1] if response_first else halves
        waiting = await send(api, "churn", first)
        assert (waiting["outcome"], waiting["log"], waiting["events"]["pending"]) == ("pending", None, 1)
        logged = await send(api, "churn", second)
        assert logged["outcome"] == "logged"
        assert (logged["log"]["accepted"], logged["events"]["pending"]) == (len(batch), 0)
        all_logits.append(logits)
        all_ids += batch
    logits = np.concatenate(all_logits)
    labels = rng.integers(0, 3, len(all_ids)).tolist()
    joined = await api.post("/v1/models/churn/labels", json={"ids": all_ids, "labels": labels})
    assert joined.json()["joined_ids"] == all_ids
    reference = await api.post(
        "/v1/loss", json={**SCCE, "predictions": logits.tolist(), "labels": labels, "convention": "torch"}
    )
    assert joined.json()["results"] == [reference.json()]  # bit for bit
    assert joined.json()["results"][0]["mean"] == pytest.approx(naive_scce(logits, labels), rel=1e-12)
    assert table(api, "SELECT count(*) FROM loss_events WHERE done_at IS NULL") == [(0,)]


async def test_v1_the_response_alone_logs_rows_under_ce_id_and_row(api: httpx.AsyncClient) -> None:
    await api.put("/v1/models/v1", json={"losses": [{"loss": "mse"}], "events": {"prediction": "predictions"}})
    event_id = "5e3f0c1a-7d2b-4c55-8f3e-1b2a3c4d5e6f"
    request = await send(api, "v1", logger_event("request", event_id, {"instances": [[1.0, 2.0], [3.0, 4.0]]}))
    assert (request["outcome"], request["events"]["pending"]) == ("not_needed", 0)
    time = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)
    response = await send(api, "v1", logger_event("response", event_id, {"predictions": [0.25, 1.5]}, time=time))
    assert response["outcome"] == "logged"
    assert (response["log"]["accepted"], response["log"]["pending_predictions"]) == (2, 2)
    assert table(api, "SELECT id, at FROM loss_predictions ORDER BY id") == [
        (f"{event_id}:0", time.timestamp()),
        (f"{event_id}:1", time.timestamp()),
    ]
    again = await send(api, "v1", logger_event("response", event_id, {"predictions": [0.25, 1.5]}))
    assert (again["log"]["accepted"], again["log"]["duplicates"]) == (0, 2)
    joined = await api.post("/v1/models/v1/labels", json={"ids": [f"{event_id}:1", f"{event_id}:0"], "labels": [1, 0]})
    result = joined.json()["results"][0]
    assert result["per_sample"] == [0.25, 0.0625]  # (1.5 - 1)^2, (0.25 - 0)^2
    assert table(api, "SELECT count(*) FROM loss_events") == [(0,)]  # nothing waits: nothing kept


async def test_repeated_halves_are_duplicates_and_are_recorded_once(api: httpx.AsyncClient) -> None:
    """The logger's worker does not retry, but a proxy between may (Istio retries a reset
    connection), and a client that sets its own Ce-Id repeats it: each repeat is a duplicate."""
    await configure(api, "churn", {"prediction": "logits", "id": "user"})
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    request = logger_event("request", "e-1", v2_request(["a", "b"]))
    response = logger_event("response", "e-1", v2_response(logits))
    assert (await send(api, "churn", request))["outcome"] == "pending"
    again = await send(api, "churn", request)
    assert (again["outcome"], again["events"]["pending"]) == ("duplicate", 1)
    assert (await send(api, "churn", response))["outcome"] == "logged"
    for half in (request, response):
        repeat = await send(api, "churn", half)
        assert (repeat["outcome"], repeat["log"], repeat["events"]["pending"]) == ("duplicate", None, 0)
    status = (await api.get("/v1/models/churn")).json()
    assert status["pending_predictions"] == 2
    joined = (await api.post("/v1/models/churn/labels", json={"ids": ["a", "b"], "labels": [0, 2]})).json()
    assert joined["joined"] == 2
    assert joined["results"][0]["mean"] == pytest.approx(naive_scce(logits, [0, 2]), rel=1e-12)


async def test_both_halves_at_once_log_each_event_exactly_once(api: httpx.AsyncClient) -> None:
    await configure(api, "churn", {"prediction": "logits", "id": "user"})
    messages = []
    for e in range(24):
        users = [f"e{e}-{r}" for r in range(3)]
        messages.append(logger_event("request", f"ev-{e}", v2_request(users)))
        messages.append(logger_event("response", f"ev-{e}", v2_response(np.full((3, 3), float(e)))))
        messages.append(logger_event("response", f"ev-{e}", v2_response(np.full((3, 3), float(e)))))
    slots = asyncio.Semaphore(8)  # the worker's heavy-request slots (LOSS_SERVICE_MAX_CONCURRENT)

    async def sent(message: tuple[bytes, dict[str, str]]) -> dict[str, Any]:
        async with slots:
            return await send(api, "churn", message)

    answers = await asyncio.gather(*(sent(m) for m in messages))
    outcomes = [a["outcome"] for a in answers]
    assert outcomes.count("logged") == 24
    assert outcomes.count("pending") == 24
    assert outcomes.count("duplicate") == 24
    assert sum(a["log"]["accepted"] for a in answers if a["log"]) == 72
    assert table(api, "SELECT count(*), count(payload) FROM loss_predictions") == [(72, 72)]
    assert table(api, "SELECT count(*) FROM loss_events WHERE done_at IS NULL") == [(0,)]


class Clock:
    """The use case's clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


async def test_a_half_waits_at_most_the_ttl_and_the_bounds_hold(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six halves fit (the fixture's LOSS_SERVICE_EVENT_MAX_PENDING); the seventh gets 429 and keeps
    nothing; once the TTL (600 s) has passed, the stale halves expire and make room, and a late
    other half waits in its turn instead of joining the expired one."""
    # From the real time: the app's first retention sweep, which may run at any moment of the test
    # (it starts with the app) and reads the real clock, finds no half past its TTL.
    clock = Clock(datetime.now(UTC).timestamp())
    monkeypatch.setattr(events_module, "time", types.SimpleNamespace(time=clock.time))
    await configure(api, "churn", {"prediction": "logits", "id": "user"})
    for e in range(6):
        waiting = await send(api, "churn", logger_event("request", f"r-{e}", v2_request([f"x{e}"])))
        assert waiting["outcome"] == "pending"
    refused = await api.post(
        "/v1/models/churn/events", content=(m := logger_event("request", "r-6", v2_request(["y"])))[0], headers=m[1]
    )
    assert refused.status_code == 429, refused.text
    assert "LOSS_SERVICE_EVENT_MAX_PENDING" in refused.json()["detail"]
    assert table(api, "SELECT count(*) FROM loss_events") == [(6,)]
    clock.now += 601
    late = await send(api, "churn", logger_event("response", "r-0", v2_response(np.zeros((1, 3)))))
    assert late["outcome"] == "pending"  # its request expired: it waits in its turn
    assert (late["events"]["pending"], late["events"]["expired"]) == (6, 1)
    more = await send(api, "churn", logger_event("request", "r-7", v2_request(["z"])))
    assert more["outcome"] == "pending"  # at the bound, the stale halves expire and make room
    assert (more["events"]["pending"], more["events"]["expired"]) == (2, 6)
    assert sorted(table(api, "SELECT id FROM loss_events")) == [("r-0",), ("r-7",)]
    assert table(api, "SELECT count(*) FROM loss_predictions") == [(0,)]


async def test_the_byte_bound_refuses_a_half_that_does_not_fit(tmp_path: Path) -> None:
    app = create_app(Settings(store_url=f"sqlite:///{tmp_path}/s.sqlite3", event_max_pending_bytes=2_000))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://x") as api:
        await configure(api, "churn", {"prediction": "logits", "id": "user"})
        small = await send(api, "churn", logger_event("response", "s", v2_response(np.zeros((10, 3)))))
        assert 240 + 64 < small["events"]["pending_bytes"] < 1_000  # 30 float64 values, the id, the meta
        big = logger_event("response", "b", v2_response(np.zeros((100, 3))))
        refused = await api.post("/v1/models/churn/events", content=big[0], headers=big[1])
        assert refused.status_code == 429
        assert "LOSS_SERVICE_EVENT_MAX_PENDING_BYTES" in refused.json()["detail"]
        assert table(api, "SELECT id FROM loss_events") == [("s",)]


async def test_the_sweep_expires_waiting_halves_and_forgets_completed_events_after_retention(
    api: httpx.AsyncClient,
) -> None:
    await configure(api, "churn", {"prediction": "logits", "id": "user"}, retention_seconds=3600)
    await send(api, "churn", logger_event("request", "done", v2_request(["d"])))
    await send(api, "churn", logger_event("response", "done", v2_response(np.zeros((1, 3)))))
    await send(api, "churn", logger_event("request", "waits", v2_request(["w"])))
    store = api._transport.app.state.store  # type: ignore[attr-defined]
    now = table(api, "SELECT max(arrived) FROM loss_events")[0][0]
    assert store.sweep_events("churn", now + 599, 600.0) is True
    assert table(api, "SELECT id FROM loss_events ORDER BY id") == [("done",), ("waits",)]
    assert store.sweep_events("churn", now + 601, 600.0, limit=1) is False  # a full batch: maybe more
    assert table(api, "SELECT id FROM loss_events") == [("done",)]
    assert store.sweep_events("churn", now + 601, 600.0, limit=1) is True
    assert store.event_counts("churn").expired == 1
    assert store.sweep_events("churn", now + 3601, 600.0) is True
    assert table(api, "SELECT count(*) FROM loss_events") == [(0,)]
    assert (await api.delete("/v1/models/churn")).status_code == 204


async def test_a_models_deletion_removes_its_events(api: httpx.AsyncClient) -> None:
    await configure(api, "churn", {"prediction": "logits", "id": "user"})
    for e in range(5):
        await send(api, "churn", logger_event("request", f"r{e}", v2_request([f"x{e}"])))
    store = api._transport.app.state.store  # type: ignore[attr-defined]
    assert store.delete_batch("churn", 2) is False
    assert store.event_counts("churn").pending == 3  # the counts follow the rows left
    assert table(api, "SELECT count(*) FROM loss_events") == [(3,)]
    assert (await api.delete("/v1/models/churn")).status_code == 204
    assert table(api, "SELECT count(*) FROM loss_events") == [(0,)]


async def test_an_id_parameter_names_the_rows_and_segments_reach_the_predictions_log(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = {"prediction": "logits", "id": "request_id", "segments": {"country": "country"}}
    await configure(api, "churn", events, segments=["country"])
    store = api._transport.app.state.store  # type: ignore[attr-defined]
    made: list[Any] = []
    real = store.log_event

    def spy(*args: Any, complete: Any, **kwargs: Any) -> Any:
        def complete_and_keep(*inner: Any) -> Any:
            made.append(complete(*inner))
            return made[-1]

        return real(*args, complete=complete_and_keep, **kwargs)

    monkeypatch.setattr(store, "log_event", spy)
    request = {**v2_request(["a", "b", "c"], ["BR", None, 7]), "parameters": {"request_id": "req-9"}}
    await send(api, "churn", logger_event("request", "e", request))
    logged = await send(api, "churn", logger_event("response", "e", v2_response(np.zeros((3, 3)))))
    assert logged["log"]["accepted"] == 3
    assert list(made[0].ids) == ["req-9:0", "req-9:1", "req-9:2"]
    assert made[0].segments == {"country": ["BR", None, "7"]}


async def test_an_events_segments_reach_the_history_by_segment(api: httpx.AsyncClient) -> None:
    """The rows of a completed event keep their segments as POST .../predictions rows do, and a
    pair the event completes keeps its losses as one a label completes: the history by `country`
    has one entry per value (the integer 7 as "7", null as null), each mean that of /v1/loss over
    its own row."""
    await configure(
        api, "churn", {"prediction": "logits", "id": "user", "segments": {"country": "country"}}, segments=["country"]
    )
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [-1.0, 1.0, 0.0]])
    labels = [0, 2, 1]
    # c's label comes first: the event's completion joins it; a's and b's join as their labels come.
    early = await api.post("/v1/models/churn/labels", json={"ids": ["c"], "labels": labels[2:]})
    assert early.json()["pending_labels"] == 1
    await send(api, "churn", logger_event("request", "e", v2_request(["a", "b", "c"], ["BR", None, 7])))
    completed = await send(api, "churn", logger_event("response", "e", v2_response(logits)))
    assert completed["log"]["joined_ids"] == ["c"]
    joined = await api.post("/v1/models/churn/labels", json={"ids": ["a", "b"], "labels": labels[:2]})
    assert joined.json()["joined"] == 2
    response = await api.get("/v1/models/churn/history", params={"by": "country", "step": 86400 * 2})
    assert response.status_code == 200, response.text
    found: dict[Any, list[Any]] = {}
    for bucket in response.json()["buckets"]:
        found.setdefault(bucket["segment"], []).append(bucket)
    assert sorted(found, key=str) == sorted(["BR", None, "7"], key=str)
    for row, segment in enumerate(["BR", None, "7"]):
        (bucket,) = found[segment]
        assert (bucket["predictions"], bucket["joined"], bucket["pending"]) == (1, 1, 0)
        reference = await api.post(
            "/v1/loss",
            json={
                **SCCE,
                "predictions": logits[row : row + 1].tolist(),
                "labels": labels[row : row + 1],
                "convention": "torch",
            },
        )
        assert bucket["losses"][0]["mean"] == pytest.approx(reference.json()["mean"], rel=1e-12)


async def test_events_segments_must_be_declared_in_the_models_segments(api: httpx.AsyncClient) -> None:
    events = {"prediction": "logits", "segments": {"country": "country", "device": "device"}}
    body = {"losses": [SCCE], "convention": "torch", "events": events, "segments": ["device"]}
    response = await api.put("/v1/models/churn", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "events", "segments", "country"]
    assert (await api.put("/v1/models/churn", json={**body, "segments": ["device", "country"]})).status_code == 200


@pytest.mark.parametrize(
    ("value", "reason"),
    [("", "1 to 64 characters"), ("x" * 65, "1 to 64 characters"), ("a\nb", "printable"), (True, "a boolean")],
)
async def test_a_bad_segment_value_in_a_request_is_refused_at_its_row(
    api: httpx.AsyncClient, value: Any, reason: str
) -> None:
    await configure(
        api, "churn", {"prediction": "logits", "id": "user", "segments": {"country": "country"}}, segments=["country"]
    )
    message = logger_event("request", "e", v2_request(["a", "b"], ["BR", value]))
    response = await api.post("/v1/models/churn/events", content=message[0], headers=message[1])
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert error["loc"][-2:] == ["data", 1]
    assert reason in error["msg"]


def test_segments_and_ids_read_from_v1_instances() -> None:
    config = {"prediction": "predictions", "id": "tx", "segments": {"device": "device", "country": "geo"}}
    data = {"instances": [{"tx": "t1", "device": "ios", "geo": "BR"}, {"tx": 2, "device": None, "geo": "US"}]}
    half = read_request(data, config, ["body"])
    assert (half.rows, half.ids, half.base) == (2, ["t1", "2"], None)
    assert half.segments == {"device": ["ios", None], "country": ["BR", "US"]}


def output(**tensor: Any) -> dict[str, Any]:
    """A v2 response with one output tensor, "logits" unless named otherwise."""
    return {"outputs": [{"name": "logits", "shape": [1, 3], "datatype": "FP64", "data": [0.0] * 3, **tensor}]}


def user_input(**tensor: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "user", "shape": [1], "datatype": "BYTES", "data": ["a"], **tensor}]}


AT, IN = ["body", "outputs", 0], ["body", "inputs", 0]
BAD_EVENTS = [
    # (what, kind, headers changed (None: removed), body, status, loc)
    ("unknown type", "response", {"ce-type": f"{REQUEST}.explain"}, None, 422, ["header", "ce-type"]),
    ("no Ce-Id", "response", {"ce-id": None}, None, 422, ["header", "ce-id"]),
    ("empty Ce-Id", "response", {"ce-id": ""}, None, 422, ["header", "ce-id"]),
    ("control character in Ce-Id", "response", {"ce-id": "a%00b"}, None, 422, ["header", "ce-id"]),
    ("no Ce-Source", "response", {"ce-source": None}, None, 422, ["header", "ce-source"]),
    ("specversion 0.3", "response", {"ce-specversion": "0.3"}, None, 422, ["header", "ce-specversion"]),
    ("time without offset", "response", {"ce-time": "2026-03-01T12:00:00"}, None, 422, ["header", "ce-time"]),
    ("time not a time", "response", {"ce-time": "yesterday"}, None, 422, ["header", "ce-time"]),
    ("malformed JSON", "response", {}, b'{"outputs": [', 400, None),
    ("not JSON content", "response", {"content-type": "application/octet-stream"}, None, 415, None),
    ("missing output", "response", {}, output(name="probs"), 422, ["body", "outputs"]),
    ("neither v1 nor v2", "response", {}, {"result": [1.0]}, 422, ["body", "logits"]),
    ("output data short", "response", {}, output(shape=[2, 3]), 422, [*AT, "data"]),
    ("output BYTES", "response", {}, output(datatype="BYTES"), 422, [*AT, "datatype"]),
    ("output a string", "response", {}, output(data=[1.0, "x", 0.0]), 422, [*AT, "data", 1]),
    ("output overflows FP32", "response", {}, output(datatype="FP32", data=[1e39, 0, 0]), 422, [*AT, "data", 0]),
    ("output binary", "response", {}, {"outputs": [{"name": "logits", "shape": [1], "datatype": "FP32",
                                                    "parameters": {"binary_data_size": 4}}]}, 422, [*AT, "data"]),
    ("response a list", "response", {}, [1.0], 422, ["body"]),
    ("repeated key", "response", {}, b'{"outputs": [], "outputs": []}', 422, ["body", "outputs"]),
    ("request without the id input", "request", {}, user_input(name="x"), 422, ["body", "inputs"]),
    ("request id repeated", "request", {}, user_input(shape=[2], data=["a", "a"]), 422, [*IN, "data", 1]),
    ("request id shape", "request", {}, user_input(shape=[1, 2], data=["a", "b"]), 422, [*IN, "shape"]),
    ("request neither v1 nor v2", "request", {}, {"rows": []}, 422, ["body"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "kind", "changes", "body", "status", "loc"), BAD_EVENTS, ids=[c[0] for c in BAD_EVENTS]
)
async def test_bad_events_are_refused_precisely_and_keep_nothing(
    api: httpx.AsyncClient,
    what: str,
    kind: str,
    changes: dict[str, str | None],
    body: Any,
    status: int,
    loc: list[Any] | None,
) -> None:
    await configure(api, "churn", {"prediction": "logits", "id": "user"})
    good = v2_response(np.zeros((1, 3))) if kind == "response" else v2_request(["a"])
    content, headers = logger_event(kind, "e-1", good if body is None else body)
    for name, value in changes.items():
        headers.pop(name, None)
        if value is not None:
            headers[name] = value
    response = await api.post("/v1/models/churn/events", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    if loc is not None:
        assert response.json()["errors"][0]["loc"] == loc, response.text
    assert table(api, "SELECT count(*) FROM loss_events") == [(0,)]
    assert table(api, "SELECT count(*) FROM loss_predictions") == [(0,)]


async def test_halves_that_disagree_are_refused_when_they_meet_and_nothing_is_half_logged(
    api: httpx.AsyncClient,
) -> None:
    await configure(api, "churn", {"prediction": "logits", "id": "user"})
    await send(api, "churn", logger_event("request", "e", v2_request(["a", "b"])))
    three = logger_event("response", "e", v2_response(np.zeros((3, 3))))
    refused = await api.post("/v1/models/churn/events", content=three[0], headers=three[1])
    assert refused.status_code == 422
    assert "3 rows of predictions and its request 2 rows" in refused.json()["detail"]
    assert table(api, "SELECT count(*) FROM loss_predictions") == [(0,)]
    assert table(api, "SELECT id, done_at IS NULL FROM loss_events") == [("e", True)]  # the request still waits
    # A prediction row of another shape than the model's first: refused, the request still waits.
    await api.post("/v1/models/churn/predictions", json={"ids": ["z"], "predictions": [[0.0, 1.0]]})
    other = logger_event("response", "e", v2_response(np.zeros((2, 3))))
    assert (await api.post("/v1/models/churn/events", content=other[0], headers=other[1])).status_code == 422
    assert table(api, "SELECT count(*) FROM loss_predictions") == [(1,)]
    assert table(api, "SELECT count(*) FROM loss_events WHERE done_at IS NULL") == [(1,)]


async def test_a_model_without_events_and_an_unknown_model(api: httpx.AsyncClient) -> None:
    await api.put("/v1/models/plain", json={"losses": [{"loss": "mse"}]})
    message = logger_event("response", "e", {"predictions": [1.0]})
    plain = await api.post("/v1/models/plain/events", content=message[0], headers=message[1])
    assert plain.status_code == 422
    assert "has no `events` configuration" in plain.json()["detail"]
    assert (await api.post("/v1/models/nope/events", content=message[0], headers=message[1])).status_code == 404


@pytest.mark.parametrize(
    ("events", "loc"),
    [
        ({}, ["body", "events", "prediction"]),
        ({"prediction": ""}, ["body", "events", "prediction"]),
        ({"prediction": "p", "segments": {"1bad": "x"}}, ["body", "events", "segments", "1bad", "[key]"]),
        ({"prediction": "p", "segments": {f"k{i}": "x" for i in range(9)}}, ["body", "events", "segments"]),
        ({"prediction": "p", "unknown": 1}, ["body", "events", "unknown"]),
        ({"prediction": "p", "id": 5}, ["body", "events", "id"]),
    ],
)
async def test_bad_events_configurations_are_refused(
    api: httpx.AsyncClient, events: dict[str, Any], loc: list[Any]
) -> None:
    response = await api.put("/v1/models/m", json={"losses": [{"loss": "mse"}], "events": events})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == loc


async def test_posting_events_needs_the_ingest_scope_for_the_model(tmp_path: Path) -> None:
    from tests.api.test_tenants import KEYS, auth, keys_toml

    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(keys_toml(KEYS))
    app = create_app(Settings(api_keys_file=str(keys_file), store_url=f"sqlite:///{tmp_path}/s.sqlite3"))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://x") as api:
        body = {"losses": [{"loss": "mse"}], "events": {"prediction": "predictions"}}
        assert (await api.put("/v1/models/churn-a", json=body, headers=auth("churn-admin"))).status_code == 200
        content, headers = logger_event("response", "e", {"predictions": [0.5]})
        statuses = [
            (await api.post("/v1/models/churn-a/events", content=content, headers={**headers, **extra})).status_code
            for extra in ({}, auth("reader"), auth("fraud-team"), auth("churn-admin"))
        ]
        assert statuses == [401, 403, 403, 200]  # no key; no ingest scope; another team's model; its own


def test_a_store_of_the_previous_layout_gains_the_events_table_and_keeps_its_rows(store_url: str) -> None:
    from service.store import EventCounts, Store
    from service.store.connect import connect
    from service.store.schema import MIGRATIONS, SCHEMA_VERSION

    database = connect(store_url)
    try:
        with database.transaction() as tx:
            tx.execute("CREATE TABLE loss_schema (version INTEGER NOT NULL)")
            events = [name for name, _ in MIGRATIONS].index("inference events")
            for _, step in MIGRATIONS[:events]:
                step(tx)
            tx.execute("INSERT INTO loss_schema (version) VALUES (?)", [events])
            tx.execute(
                "INSERT INTO loss_models (name, config, retention_seconds, created_at, updated_at) "
                "VALUES ('m', ?, 100.0, 0.0, 0.0)",
                [json.dumps({"losses": [{"loss": "mse", "options": {}}], "convention": "keras", "dtype": "float64"})],
            )
    finally:
        database.close()
    store = Store.open(store_url)
    try:
        assert store.event_counts("m") is not None
        assert store.event_counts("m") == EventCounts(0, 0, 0)
        with store.database.transaction(write=False) as tx:
            assert tx.one("SELECT max(version) FROM loss_schema") == (SCHEMA_VERSION,)
            assert tx.all("SELECT count(*) FROM loss_events") == [(0,)]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2026-03-01T12:00:00.123456789Z", 1772366400.123456),  # Go's RFC3339Nano: nanoseconds, cut to microseconds
        ("2026-03-01T14:00:00+02:00", 1772366400.0),
        ("2026-03-01T12:00:00Z", 1772366400.0),
    ],
)
async def test_ce_time_as_the_go_sdk_writes_it_is_the_predictions_time(
    api: httpx.AsyncClient, header: str, seconds: float
) -> None:
    await api.put("/v1/models/v1", json={"losses": [{"loss": "mse"}], "events": {"prediction": "predictions"}})
    content, headers = logger_event("response", "t", {"predictions": [1.0]})
    response = await api.post("/v1/models/v1/events", content=content, headers={**headers, "ce-time": header})
    assert response.status_code == 200, response.text
    assert table(api, "SELECT at FROM loss_predictions") == [(pytest.approx(seconds, abs=1e-6),)]
