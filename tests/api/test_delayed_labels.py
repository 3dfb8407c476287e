"""Delayed labels over HTTP, in-process: the contract of /v1/models, its errors and its metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from service.config import Settings
from service.server.app import create_app
from service.usecases import upkeep
from tests.apps import AppClient, MakeApp
from tests.servers import HANG

pytestmark = pytest.mark.anyio
SCCE_TORCH = {
    "losses": [
        {"loss": "scce", "options": {"from_logits": True}},
        {"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True, "label_smoothing": 0.1}},
    ],
    "convention": "torch",
}


@pytest.fixture
async def api(make_app: MakeApp, tmp_path: Path) -> httpx.AsyncClient:
    return await make_app(store_url=f"sqlite:///{tmp_path}/store.sqlite3", max_pending=50, sweep_interval=0.05)


async def configure(api: httpx.AsyncClient, model: str = "fraud", **config: Any) -> dict[str, Any]:
    response = await api.put(f"/v1/models/{model}", json={**SCCE_TORCH, **config})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def post(api: httpx.AsyncClient, side: str, body: dict[str, Any], model: str = "fraud") -> dict[str, Any]:
    response = await api.post(f"/v1/models/{model}/{side}", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition, 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
async def test_joined_losses_are_bit_identical_to_v1_loss(api: httpx.AsyncClient, dtype: str) -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, (40, 5)).tolist()
    labels = rng.integers(0, 5, 40).tolist()
    weights = rng.uniform(0, 2, 40).tolist()
    ids = [f"tx-{i}" for i in range(40)]
    await configure(api, dtype=dtype)
    # Labels first for half the ids, predictions first for the others.
    await post(api, "labels", {"ids": ids[:20], "labels": labels[:20], "sample_weight": weights[:20]})
    first = await post(api, "predictions", {"ids": ids, "predictions": logits})
    second = await post(api, "labels", {"ids": ids[20:], "labels": labels[20:], "sample_weight": weights[20:]})
    for answer, part in ((first, slice(0, 20)), (second, slice(20, 40))):
        assert answer["joined_ids"] == ids[part]
        for result, call in zip(answer["results"], SCCE_TORCH["losses"], strict=True):
            reference = await api.post(
                "/v1/loss",
                json={
                    **call,
                    "predictions": logits[part],
                    "labels": labels[part],
                    "sample_weight": weights[part],
                    "convention": "torch",
                    "dtype": dtype,
                },
            )
            assert result == reference.json()  # every number, bit for bit


async def test_the_contract_of_a_log_answer(api: httpx.AsyncClient) -> None:
    await configure(api)
    first = await post(api, "predictions", {"ids": ["a", 7, "c"], "predictions": [[1.0, 0.0]] * 3})
    assert first == {
        "accepted": 3,
        "duplicates": 0,
        "duplicate_ids": [],
        "joined": 0,
        "joined_ids": [],
        "results": [],
        "pending_predictions": 3,
        "pending_labels": 0,
    }
    second = await post(api, "labels", {"ids": ["7", "a", "zz", 8], "labels": [0, 1, 1, 0]})
    assert (second["accepted"], second["joined"], second["joined_ids"]) == (4, 2, ["7", "a"])
    assert [r["count"] for r in second["results"]] == [2, 2]
    assert (second["pending_predictions"], second["pending_labels"]) == (1, 2)
    again = await post(api, "labels", {"ids": ["a", "c", 7], "labels": [0, 0, 0]})
    assert (again["accepted"], again["duplicates"], again["duplicate_ids"], again["joined_ids"]) == (
        1,
        2,
        ["a", "7"],
        ["c"],
    )
    status = (await api.get("/v1/models/fraud")).json()
    assert {
        k: status[k] for k in ("pending_predictions", "pending_labels", "joined", "prediction_shape", "label_shape")
    } == {
        "pending_predictions": 0,
        "pending_labels": 2,
        "joined": 3,
        "prediction_shape": [2],
        "label_shape": [],
    }
    assert 0 <= status["oldest_pending_seconds"] < 60


async def test_retries_are_duplicates_and_record_nothing_twice(api: httpx.AsyncClient) -> None:
    await configure(api)
    body = {"ids": list(range(10)), "predictions": np.eye(2)[np.arange(10) % 2].tolist()}
    await post(api, "predictions", body)
    labels = {"ids": list(range(10)), "labels": [1] * 10}
    await post(api, "labels", labels)
    before = (await api.get("/metrics")).text
    for _ in range(3):
        retried = await post(api, "labels", labels)
        assert (retried["accepted"], retried["duplicates"], retried["joined"]) == (0, 10, 0)
        retried = await post(api, "predictions", body)
        assert (retried["accepted"], retried["duplicates"], retried["joined"]) == (0, 10, 0)
    after = (await api.get("/metrics")).text
    loss = "sparse_categorical_crossentropy"
    for text in (before, after):
        assert metric(text, "loss_service_joined_total", model="fraud") == 10
        assert metric(text, "loss_service_samples_total", model="fraud", loss=loss) == 20  # two configured losses
        assert metric(text, "loss_service_label_delay_seconds_count", model="fraud") == 10
    assert metric(after, "loss_service_duplicates_total", model="fraud", kind="labels") == 30
    assert metric(after, "loss_service_logged_total", model="fraud", kind="predictions") == 10
    assert metric(after, "loss_service_pending", model="fraud", kind="predictions") == 0


async def test_configuration_lifecycle(api: httpx.AsyncClient) -> None:
    stored = await configure(api, dtype="float32", retention_seconds=60)
    assert stored["losses"] == [
        {"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True}},
        {"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True, "label_smoothing": 0.1}},
    ]
    assert (stored["model"], stored["convention"], stored["dtype"], stored["retention_seconds"]) == (
        "fraud",
        "torch",
        "float32",
        60,
    )
    await configure(api, "other.model:v2", losses=[{"loss": "mse"}], convention="keras")
    listed = (await api.get("/v1/models")).json()["models"]
    assert [m["model"] for m in listed] == ["fraud", "other.model:v2"]
    await post(api, "predictions", {"ids": ["a"], "predictions": [[0.0, 1.0]]})
    changed = await configure(api, losses=[{"loss": "scce", "options": {"from_logits": True}}])
    assert changed["created_at"] == stored["created_at"]
    assert changed["updated_at"] > stored["updated_at"]
    joined = await post(api, "labels", {"ids": ["a"], "labels": [1]})
    assert [r["loss"] for r in joined["results"]] == ["sparse_categorical_crossentropy"]  # the new configuration
    assert (await api.delete("/v1/models/fraud")).status_code == 204
    assert (await api.get("/v1/models/fraud")).status_code == 404
    assert (await api.delete("/v1/models/fraud")).status_code == 404
    await configure(api)
    fresh = await post(api, "labels", {"ids": ["a"], "labels": [1]})
    assert (fresh["accepted"], fresh["joined"]) == (1, 0)  # nothing of the deleted model remains


async def test_rows_past_retention_are_swept_and_counted(api: httpx.AsyncClient) -> None:
    await configure(api, retention_seconds=0.2)
    await post(api, "predictions", {"ids": ["a", "b"], "predictions": [[0.0, 1.0]] * 2})
    await post(api, "labels", {"ids": ["b", "c"], "labels": [1, 1]})
    for _ in range(100):
        status = (await api.get("/v1/models/fraud")).json()
        if status["pending_predictions"] == status["pending_labels"] == 0:
            break
        await asyncio.sleep(0.05)
    assert {k: status[k] for k in ("expired_predictions", "expired_labels", "pending_predictions", "joined")} == {
        "expired_predictions": 1,
        "expired_labels": 1,
        "pending_predictions": 0,
        "joined": 1,
    }
    text = (await api.get("/metrics")).text
    assert metric(text, "loss_service_expired_total", model="fraud", kind="predictions") == 1
    assert metric(text, "loss_service_expired_total", model="fraud", kind="labels") == 1
    assert metric(text, "loss_service_pending", model="fraud", kind="labels") == 0
    again = await post(api, "predictions", {"ids": ["b"], "predictions": [[0.0, 1.0]]})
    assert again["accepted"] == 1  # no longer retained, so no longer a duplicate


async def test_label_delay_is_measured_from_the_prediction_time(api: httpx.AsyncClient) -> None:
    await configure(api)
    import time

    now = time.time()
    await post(
        api, "predictions", {"ids": ["a", "b"], "predictions": [[0.0, 1.0]] * 2, "timestamps": [now - 7200, now - 30]}
    )
    await post(api, "labels", {"ids": ["a", "b"], "labels": [1, 1]})
    text = (await api.get("/metrics")).text
    assert metric(text, "loss_service_label_delay_seconds_bucket", model="fraud", le="60.0") == 1
    assert metric(text, "loss_service_label_delay_seconds_bucket", model="fraud", le="3600.0") == 1
    assert metric(text, "loss_service_label_delay_seconds_bucket", model="fraud", le="14400.0") == 2
    assert 7200 < metric(text, "loss_service_label_delay_seconds_sum", model="fraud") < 7300


async def test_too_many_pending_rows_get_429_and_nothing_is_stored(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A model's MAX_PENDING is a bound on its storage: a 429 audited and counted as the quotas are."""
    caplog.set_level(logging.INFO, logger="loss_service.audit")
    await configure(api)  # the fixture allows 50 pending rows
    await post(api, "predictions", {"ids": list(range(40)), "predictions": [[0.0, 1.0]] * 40})
    refused = await api.post("/v1/models/fraud/labels", json={"ids": list(range(100, 111)), "labels": [1] * 11})
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert "LOSS_SERVICE_MAX_PENDING" in refused.json()["detail"]
    assert refused.json()["errors"] == [{"loc": ["body", "ids"], "msg": refused.json()["detail"]}]
    status = (await api.get("/v1/models/fraud")).json()
    assert (status["pending_predictions"], status["pending_labels"]) == (40, 0)
    audited = [json.loads(r.getMessage()) for r in caplog.records if r.name == "loss_service.audit"]
    assert [(line["status"], line["route"], line["model"], line["reason"]) for line in audited] == [
        (429, "/v1/models/fraud/labels", "fraud", "max_pending")
    ]
    scrape = (await api.get("/metrics")).text
    assert metric(scrape, "loss_service_http_requests_rejected_total", reason="quota") == 1


async def test_a_label_that_does_not_fit_its_prediction_is_refused_with_nothing_stored(api: httpx.AsyncClient) -> None:
    await configure(api)
    await post(api, "predictions", {"ids": ["a", "b"], "predictions": [[0.0, 1.0, 2.0]] * 2})
    refused = await api.post("/v1/models/fraud/labels", json={"ids": ["q", "b"], "labels": [0, 3]})
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["loc"] == ["body", "ids", 1]
    assert "'b'" in refused.json()["detail"]
    assert "class label 3" in refused.json()["detail"]
    status = (await api.get("/v1/models/fraud")).json()
    assert (status["pending_predictions"], status["pending_labels"], status["joined"]) == (2, 0, 0)


async def test_a_pair_the_loss_refuses_is_named_by_its_id_its_side_and_the_losss_words(api: httpx.AsyncClient) -> None:
    """The refusal of a join says which id, which stored side it does not fit, where in the row
    and why, in the loss's words; a refusal of the whole batch (no row to name) counts the pairs.
    Nothing of the refused request is stored."""
    bce = {"losses": [{"loss": "binary_crossentropy"}], "convention": "keras"}
    assert (await api.put("/v1/models/b", json=bce)).status_code == 200
    await post(api, "predictions", {"ids": ["a", "b"], "predictions": [[0.2, 0.3], [0.4, 0.5]]}, model="b")
    await post(api, "labels", {"ids": ["c"], "labels": [[0, 2]]}, model="b")
    mse = {"losses": [{"loss": "mse"}]}
    assert (await api.put("/v1/models/m", json=mse)).status_code == 200
    await post(api, "predictions", {"ids": ["a", "b"], "predictions": [[0.2, 0.3], [0.4, 0.5]]}, model="m")
    refusals = [
        (
            "b", "labels", {"ids": ["z", "b"], "labels": [[0, 1], [1, 2]]}, ["body", "ids", 1],
            "id 'b' does not fit its stored predictions: labels[1]: binary targets must lie in [0, 1], got 2.0 "
            "(binary_crossentropy); nothing stored",
        ),
        (
            "b", "predictions", {"ids": ["c"], "predictions": [[0.1, 0.2]]}, ["body", "ids", 0],
            "id 'c' does not fit its stored labels: labels[1]: binary targets must lie in [0, 1], got 2.0 "
            "(binary_crossentropy); nothing stored",
        ),
        (
            "m", "labels", {"ids": ["a", "b"], "labels": [[0.0], [1.0]]}, ["body", "ids"],
            "the 2 pairs this request completes: labels: shape [2, 1] does not match predictions shape [2, 2] "
            "(mean_squared_error); nothing stored",
        ),
    ]  # fmt: skip
    for model, side, body, loc, message in refusals:
        refused = await api.post(f"/v1/models/{model}/{side}", json=body)
        assert refused.status_code == 422
        assert refused.json()["errors"] == [{"loc": loc, "msg": message}]
        # The detail leads with the id's index where there is one; a whole batch's refusal reads as it is.
        assert refused.json()["detail"] == (f"ids.{loc[2]}: {message}" if len(loc) > 2 else message)
    for model, pending in (("b", (2, 1, 0)), ("m", (2, 0, 0))):
        status = (await api.get(f"/v1/models/{model}")).json()
        assert (status["pending_predictions"], status["pending_labels"], status["joined"]) == pending


@pytest.mark.parametrize(
    ("segments", "undeclared", "declared"),
    [([], "country", "none"), (["country"], "device", "country"), (["country", "os"], "device", "country, os")],
)
async def test_an_events_segment_must_be_a_declared_segment_key(
    api: httpx.AsyncClient, segments: list[str], undeclared: str, declared: str
) -> None:
    """Where KServe's events carry a segment, the model must keep its history by that key: the first
    key it does not declare is refused, naming the keys it does."""
    events = {"prediction": "probs", "segments": {key: f"input_{key}" for key in ["country", "device"]}}
    refused = await api.put("/v1/models/e", json={"losses": [{"loss": "scce"}], "segments": segments, "events": events})
    assert refused.status_code == 422
    message = f"is not a segment key of this model (its `segments`: {declared}); declare it in `segments`"
    assert refused.json()["errors"] == [{"loc": ["body", "events", "segments", undeclared], "msg": message}]
    assert (await api.get("/v1/models/e")).status_code == 404


BAD_LOGS: list[tuple[str, str, Any, list[Any]]] = [
    ("predictions", "repeated id", {"ids": ["a", "b", "a"], "predictions": [[0.0, 1.0]] * 3}, ["body", "ids", 2]),
    ("predictions", "int equal to a string id", {"ids": ["7", 7], "predictions": [[0.0, 1.0]] * 2}, ["body", "ids", 1]),
    ("predictions", "negative id", {"ids": [-1], "predictions": [[0.0, 1.0]]}, ["body", "ids", 0]),
    ("predictions", "boolean id", {"ids": [True], "predictions": [[0.0, 1.0]]}, ["body", "ids", 0]),
    ("predictions", "float id", {"ids": [1.5], "predictions": [[0.0, 1.0]]}, ["body", "ids", 0]),
    ("predictions", "empty id", {"ids": [""], "predictions": [[0.0, 1.0]]}, ["body", "ids", 0]),
    ("predictions", "long id", {"ids": ["x" * 129], "predictions": [[0.0, 1.0]]}, ["body", "ids", 0]),
    ("predictions", "NUL in an id", {"ids": ["a", "b\x00"], "predictions": [[0.0, 1.0]] * 2}, ["body", "ids", 1]),
    ("labels", "C0 control in an id", {"ids": ["a", "b", "\x1fc"], "labels": [1, 0, 1]}, ["body", "ids", 2]),
    ("labels", "DEL in an id", {"ids": ["a\x7f"], "labels": [1]}, ["body", "ids", 0]),
    ("predictions", "C1 control in an id", {"ids": [7, "x\x85"], "predictions": [[0.0, 1.0]] * 2}, ["body", "ids", 1]),
    ("predictions", "no ids", {"ids": [], "predictions": [[0.0, 1.0]]}, ["body", "ids"]),
    ("predictions", "ids not a list", {"ids": "a", "predictions": [[0.0, 1.0]]}, ["body", "ids"]),
    ("predictions", "fewer rows than ids", {"ids": ["a", "b"], "predictions": [[0.0, 1.0]]}, ["body", "predictions"]),
    ("predictions", "NaN", '{"ids": ["a"], "predictions": [[0.0, NaN]]}', ["body", "predictions", 0, 1]),
    ("predictions", "overflows float32", {"ids": ["a"], "predictions": [[0.0, 1e39]]}, ["body", "predictions", 0, 1]),
    (
        "predictions",
        "negative timestamp",
        {"ids": ["a"], "predictions": [[0.0, 1.0]], "timestamps": [-1.0]},
        ["body", "timestamps", 0],
    ),
    (
        "predictions",
        "timestamps per row",
        {"ids": ["a"], "predictions": [[0.0, 1.0]], "timestamps": [1.0, 2.0]},
        ["body", "timestamps"],
    ),
    (
        "predictions",
        "labels on the predictions route",
        {"ids": ["a"], "predictions": [[0.0, 1.0]], "labels": [1]},
        ["body", "labels"],
    ),
    ("predictions", "another row shape", {"ids": ["a"], "predictions": [[0.0, 1.0, 2.0]]}, ["body", "predictions"]),
    ("labels", "negative weight", {"ids": ["a"], "labels": [1], "sample_weight": [-1.0]}, ["body", "sample_weight", 0]),
    (
        "labels",
        "weights per class",
        {"ids": ["a"], "labels": [1], "sample_weight": [[1.0, 2.0]]},
        ["body", "sample_weight"],
    ),
    ("labels", "string label", {"ids": ["a"], "labels": ["1"]}, ["body", "labels", 0]),
    ("labels", "timestamps on labels", {"ids": ["a"], "labels": [1], "timestamps": [1.0]}, ["body", "timestamps"]),
]


@pytest.mark.parametrize(("side", "what", "body", "loc"), BAD_LOGS, ids=[case[1] for case in BAD_LOGS])
async def test_bad_logs_name_field_and_index(
    api: httpx.AsyncClient, side: str, what: str, body: dict[str, Any], loc: list[Any]
) -> None:
    await configure(api, dtype="float32")
    await post(api, "predictions", {"ids": ["first"], "predictions": [[0.0, 1.0]]})
    raw = body if isinstance(body, str) else json.dumps(body)
    response = await api.post(f"/v1/models/fraud/{side}", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == loc, response.text
    status = (await api.get("/v1/models/fraud")).json()
    assert (status["pending_predictions"], status["pending_labels"]) == (1, 0), "nothing of a refused request is stored"


async def test_unknown_models_and_bad_names(api: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/v1/models/nope"), ("DELETE", "/v1/models/nope"), ("POST", "/v1/models/nope/labels")):
        body = {"ids": ["a"], "labels": [1]} if method == "POST" else None
        response = await api.request(method, path, json=body)
        assert response.status_code == 404, path
        assert response.json()["detail"] == "no model named 'nope' is configured; PUT /v1/models/nope configures it"
    for name in ("a b", "x" * 65, "é"):
        response = await api.put(f"/v1/models/{name}", json=SCCE_TORCH)
        assert response.status_code == 422, name
        assert response.json()["errors"][0]["loc"] == ["path", "model"]
    response = await api.request("PATCH", "/v1/models/fraud")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, PUT"


BAD_CONFIGS: list[tuple[str, dict[str, Any], list[Any]]] = [
    ("no losses", {"losses": []}, ["body", "losses"]),
    ("unknown loss", {"losses": [{"loss": "nope"}]}, ["body", "losses", 0, "loss"]),
    (
        "unknown option",
        {"losses": [{"loss": "mse", "options": {"bogus": 1}}]},
        ["body", "losses", 0, "options", "bogus"],
    ),
    (
        "option of the other convention",
        {"losses": [{"loss": "bce", "options": {"pos_weight": [2.0]}}], "convention": "keras"},
        ["body", "losses", 0, "options", "pos_weight"],
    ),
    ("bad dtype", {"losses": [{"loss": "mse"}], "dtype": "float16"}, ["body", "dtype"]),
    ("zero retention", {"losses": [{"loss": "mse"}], "retention_seconds": 0}, ["body", "retention_seconds"]),
    ("string retention", {"losses": [{"loss": "mse"}], "retention_seconds": "60"}, ["body", "retention_seconds"]),
    ("extra field", {"losses": [{"loss": "mse"}], "model": "x"}, ["body", "model"]),
]


@pytest.mark.parametrize(("what", "body", "loc"), BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
async def test_bad_configurations_are_refused_as_evaluate_refuses_them(
    api: httpx.AsyncClient, what: str, body: dict[str, Any], loc: list[Any]
) -> None:
    response = await api.put("/v1/models/m", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"][: len(loc)] == loc
    assert (await api.get("/v1/models/m")).status_code == 404


async def test_a_store_with_a_newer_schema_stops_the_start(tmp_path: Path) -> None:
    from service.store import SCHEMA_VERSION, Store

    url = f"sqlite:///{tmp_path}/store.sqlite3"
    store = Store.open(url)
    with store.database.transaction() as tx:
        tx.execute("UPDATE loss_schema SET version = ?", [SCHEMA_VERSION + 1])
    store.close()
    app = create_app(Settings(store_url=url))
    with pytest.raises(Exception, match="newer than"):
        async with app.router.lifespan_context(app):
            pass


async def test_pending_counts_by_kind_and_a_label_before_its_prediction_counts_no_delay(
    api: httpx.AsyncClient,
) -> None:
    """loss_service_pending carries the store's counts per model and kind; a label that arrived
    before its prediction (clock skew, a negative delay) is observed as 0 s, not less."""
    await configure(api)
    import time

    await post(api, "predictions", {"ids": ["a", "b", "c"], "predictions": [[0.0, 1.0]] * 3})
    await post(api, "labels", {"ids": ["x", "y"], "labels": [1, 0]})
    text = (await api.get("/metrics")).text
    assert metric(text, "loss_service_pending", model="fraud", kind="predictions") == 3
    assert metric(text, "loss_service_pending", model="fraud", kind="labels") == 2
    await post(api, "predictions", {"ids": ["x"], "predictions": [[0.0, 1.0]], "timestamps": [time.time() + 3600]})
    text = (await api.get("/metrics")).text
    assert metric(text, "loss_service_pending", model="fraud", kind="predictions") == 3
    assert metric(text, "loss_service_pending", model="fraud", kind="labels") == 1
    assert metric(text, "loss_service_label_delay_seconds_count", model="fraud") == 1
    assert metric(text, "loss_service_label_delay_seconds_sum", model="fraud") == 0.0


# -- ids with control characters (issue #29, item 2) ---------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def api_on(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The service on SQLite or on PostgreSQL."""
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    if request.param == "postgresql":
        url = str(request.getfixturevalue("postgres_url"))
    app = create_app(Settings(store_url=url, max_pending=200_000, sweep_interval=3600))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loss-service") as c:
            yield c


def stored_ids(api: httpx.AsyncClient, table: str) -> list[str]:
    store = api._transport.app.state.store  # type: ignore[attr-defined]
    with store.database.transaction(write=False) as tx:
        return sorted(row[0] for row in tx.all(f"SELECT id FROM {table}"))


async def test_ids_with_nul_are_refused_by_index_and_never_stored(api_on: httpx.AsyncClient) -> None:
    """SQLite's JSON functions cut strings at U+0000: ["\\u0000a", "\\u0000b"] was answered
    `accepted: 2` with one row "" stored, the pending count drifting for good, and "a\\u0000x"
    taken for a duplicate of "a"; PostgreSQL answered 500. Each such id is a 422 naming its index."""
    api = api_on
    await configure(api)
    headers = {"content-type": "application/json"}
    for side, raw, index in [
        ("predictions", b'{"ids": ["\\u0000a", "\\u0000b"], "predictions": [[0.0, 1.0], [1.0, 0.0]]}', 0),
        ("labels", b'{"ids": ["\\u0000a", "\\u0000b"], "labels": [1, 0]}', 0),
        ("predictions", b'{"ids": ["x", 7, "a\\u0000x"], "predictions": [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]}', 2),
        ("labels", b'{"ids": ["x", "y\\u0085"], "labels": [1, 0]}', 1),
    ]:
        response = await api.post(f"/v1/models/fraud/{side}", content=raw, headers=headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["errors"][0]["loc"] == ["body", "ids", index]
        code = "U+0085" if b"u0085" in raw else "U+0000"
        assert problem["detail"].startswith(f"ids.{index}: id contains the control character {code}")
    await post(api, "predictions", {"ids": ["a"], "predictions": [[0.0, 1.0]]})
    shadowing = await api.post(
        "/v1/models/fraud/predictions", content=b'{"ids": ["a\\u0000x"], "predictions": [[0.0, 1.0]]}', headers=headers
    )
    assert shadowing.status_code == 422, "not a duplicate of 'a'"
    joined = await post(api, "labels", {"ids": ["a"], "labels": [1]})
    assert joined["joined_ids"] == ["a"]
    status = (await api.get("/v1/models/fraud")).json()
    assert (status["pending_predictions"], status["pending_labels"], status["joined"]) == (0, 0, 1)
    assert stored_ids(api, "loss_predictions") == stored_ids(api, "loss_labels") == ["a"]


async def test_a_control_character_among_100k_ids_is_found_at_its_index(
    api_on: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large bodies take other decoders (simdjson for the arrays, field by field from 32 MB): the
    refusal is the same, at the index of the one bad id; nothing of the request is stored."""
    from service.server.api.body import json as body_module

    api = api_on
    await configure(api, losses=[{"loss": "mse"}], convention="keras")
    ids = [f"id-{i}" for i in range(100_000)]
    ids[99_998] = "late\x00"
    raw = json.dumps({"ids": ids, "predictions": [0.5] * len(ids)}).encode()
    for fieldwise_from in (body_module.FIELDWISE_BYTES, 0):
        monkeypatch.setattr(body_module, "FIELDWISE_BYTES", fieldwise_from)
        response = await api.post(
            "/v1/models/fraud/predictions", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["body", "ids", 99_998]
    ids[99_998] = "late"
    accepted = await post(api, "predictions", {"ids": ids, "predictions": [0.5] * len(ids)})
    assert accepted["accepted"] == 100_000
    assert (await api.get("/v1/models/fraud")).json()["pending_predictions"] == 100_000


def test_the_refused_characters_are_unicodes_controls_and_the_openapi_pattern_agrees() -> None:
    """Every character of the Basic Multilingual Plane (the refused ones all lie there), and a few
    beyond: an id holding it is refused exactly when it is a control character (general category
    Cc) or a surrogate, and the pattern the OpenAPI document publishes refuses the same ones."""
    import unicodedata

    from service.server.api.model_schemas import ID_PATTERN, _holds_refused, _refused_character

    pattern = re.compile(ID_PATTERN)
    for code in [*range(0x10000), 0x1F600, 0xE0001, 0x10FFFF]:
        text = f"id-{chr(code)}"
        surrogate = 0xD800 <= code <= 0xDFFF
        refused = unicodedata.category(chr(code)) == "Cc" or surrogate
        assert (_refused_character(text) is not None) == _holds_refused(text) == refused, hex(code)
        if not surrogate:  # a JSON string cannot hold one
            assert (pattern.fullmatch(text) is None) == refused, hex(code)


async def test_an_id_the_store_refuses_is_a_422_naming_its_index(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schema refuses every id the store would; should the two ever disagree, the store's own
    refusal is still a 422 at the id's index, not a 500."""
    from service.store import RowIdError, Store

    await configure(api)

    def refuse(*_: Any, **__: Any) -> None:
        raise RowIdError(1, "id contains U+0000, which the store cannot keep")

    monkeypatch.setattr(Store, "log", refuse)
    response = await api.post("/v1/models/fraud/predictions", json={"ids": ["a", "b"], "predictions": [[0.0, 1.0]] * 2})
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"loc": ["body", "ids", 1], "msg": "id contains U+0000, which the store cannot keep"}
    ]


def count(store: Any, sql: str) -> int:
    with store.database.transaction(write=False) as tx:
        return int(tx.one(sql)[0])


async def test_a_models_deletion_goes_a_batch_at_a_time_and_one_finished_meanwhile_counts_as_found(
    api: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`batch_rows` rows per transaction: 5 predictions and their 3 rollup cells (minute, hour,
    day) in batches of 2 leave 6, 4, 2, then none; the model's row goes with the batch that finds
    fewer than 2. A deletion another request finishes between two batches still deleted a model
    that was there (the route's 204, not 404)."""
    store, threads = api.app.state.store, upkeep.store_threads(api.app.state)
    real = store.delete_batch
    left: list[int] = []

    def counted(name: str, limit: int = 10**9) -> bool | None:
        done = real(name, limit)
        left.append(sum(count(store, f"SELECT count(*) FROM {t}") for t in ("loss_predictions", "loss_rollups")))
        return done

    monkeypatch.setattr(store, "delete_batch", counted)
    await configure(api)
    await post(api, "predictions", {"ids": list("abcde"), "predictions": [[0.0, 1.0]] * 5})
    with anyio.fail_after(HANG):
        assert await upkeep.delete_model(store, "fraud", threads, batch_rows=2) is True
    assert left == [6, 4, 2, 0, 0]
    assert (await api.get("/v1/models/fraud")).status_code == 404

    def finished_meanwhile(name: str, limit: int = 10**9) -> bool | None:
        if calls:
            assert real(name, 10**9) is True  # another deletion takes the rest
        calls.append(limit)
        return real(name, limit)

    calls: list[int] = []
    monkeypatch.setattr(store, "delete_batch", finished_meanwhile)
    await configure(api)
    await post(api, "predictions", {"ids": list("abcde"), "predictions": [[0.0, 1.0]] * 5})
    with anyio.fail_after(HANG):
        assert await upkeep.delete_model(store, "fraud", threads, batch_rows=2) is True
    assert calls == [2, 2]


async def test_writes_wait_for_the_write_threads_and_reads_do_not(api: AppClient) -> None:
    """SQLite has one writing connection, so one write thread: a second write waits for the first
    to return; a read, in threads of its own, does not."""
    store = api.app.state.store
    threads = upkeep.StoreThreads(store)
    assert store.database.writers == 1
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        started.set()
        release.wait(HANG)
        order.append("first")

    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as group:
            group.start_soon(threads.write, first)
            while not started.is_set():
                await anyio.sleep(0.005)
            try:
                group.start_soon(threads.write, lambda: order.append("second"))
                while not order and threads.writes.statistics().tasks_waiting == 0:
                    await anyio.sleep(0.005)
                assert order == []  # the second write waits for the only write thread
                assert await threads.read(lambda: "read") == "read"
            finally:
                release.set()
    assert order == ["first", "second"]


async def test_the_sweep_loop_expires_event_halves_after_the_settings_ttl_or_by_default_the_defaults(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sweep_forever` sweeps at once with the settings' event TTL (here 60 s), or without settings
    with the settings' default (600 s); `now` is pinned past each TTL, short of the other."""
    from tests.api.test_inference_events import logger_event, v2_request

    api = await make_app(store_url=f"sqlite:///{tmp_path}/store.sqlite3", sweep_interval=3600)
    await configure(api, "churn", events={"prediction": "logits", "id": "user"})
    state = api.app.state
    store, monitor, threads = state.store, state.monitor, upkeep.store_threads(state)
    swept = anyio.Event()
    observe_expired = monitor.observe_expired

    def observed(model: str, expired: Any, pending: Any) -> None:
        observe_expired(model, expired, pending)
        if model == "churn":
            swept.set()

    monkeypatch.setattr(monitor, "observe_expired", observed)

    class Failed:
        """A failed sweep is logged and retried an interval later: here it fails the test at once."""

        def exception(self, message: str, *args: Any) -> None:
            raise AssertionError(message % args)

    monkeypatch.setattr(upkeep, "log", Failed())

    async def log_halves(first: int) -> float:
        for e in range(first, first + 2):
            message = logger_event("request", f"r{e}", v2_request([f"u{e}"]))
            assert (await api.post("/v1/models/churn/events", content=message[0], headers=message[1])).is_success
        return float(count(store, "SELECT max(arrived) FROM loss_events"))

    async def one_sweep(now: float, settings: Settings | None) -> None:
        nonlocal swept
        swept = anyio.Event()
        monkeypatch.setattr(upkeep, "time", types.SimpleNamespace(time=lambda: now, monotonic=time.monotonic))
        with anyio.fail_after(HANG):
            async with anyio.create_task_group() as group:
                group.start_soon(upkeep.sweep_forever, store, monitor, 3600, threads, None, settings)
                await swept.wait()
                group.cancel_scope.cancel()

    arrived = await log_halves(0)
    await one_sweep(arrived + 61, state.settings.model_copy(update={"event_ttl": 60.0}))
    assert store.event_counts("churn").expired == 2
    arrived = await log_halves(2)
    await one_sweep(arrived + 599, None)
    assert (store.event_counts("churn").expired, store.event_counts("churn").pending) == (2, 2)
    await one_sweep(arrived + 601, None)
    assert (store.event_counts("churn").expired, store.event_counts("churn").pending) == (4, 0)


async def test_a_model_others_take_their_labels_from_is_not_deleted(api: AppClient) -> None:
    await configure(api)
    await configure(api, "fraud-shadow", labels_from="fraud")
    refused = await api.delete("/v1/models/fraud")
    assert refused.status_code == 409
    assert refused.json()["detail"].endswith("reconfigure or delete them first; nothing was removed")
    assert (await api.get("/v1/models/fraud")).status_code == 200


async def test_the_sweep_expires_inference_event_halves_past_their_ttl_a_batch_at_a_time(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Halves waiting for their other half expire once they waited longer than the event TTL
    (not before), `batch_rows` per transaction: 5 halves in batches of 2 leave 3, 1, then none."""
    from tests.api.test_inference_events import logger_event, v2_request

    api = await make_app(store_url=f"sqlite:///{tmp_path}/store.sqlite3", sweep_interval=3600)
    await configure(api, "churn", events={"prediction": "logits", "id": "user"})
    for e in range(5):
        message = logger_event("request", f"r{e}", v2_request([f"u{e}"]))
        assert (await api.post("/v1/models/churn/events", content=message[0], headers=message[1])).is_success
    store, threads = api.app.state.store, upkeep.store_threads(api.app.state)
    real = store.sweep_events
    waiting: list[int] = []

    def counted(name: str, now: float, ttl_seconds: float, limit: int = 10**9) -> bool | None:
        done = real(name, now, ttl_seconds, limit)
        waiting.append(store.event_counts("churn").pending)
        return done

    monkeypatch.setattr(store, "sweep_events", counted)
    arrived = count(store, "SELECT max(arrived) FROM loss_events")
    with anyio.fail_after(HANG):
        await upkeep.sweep(store, arrived + 300, threads, batch_rows=2, event_ttl=600.0)
    assert waiting == [5]  # 300 s of a 600 s TTL: none expires
    with anyio.fail_after(HANG):
        await upkeep.sweep(store, arrived + 601, threads, batch_rows=2, event_ttl=600.0)
    assert waiting == [5, 3, 1, 0]
    assert store.event_counts("churn").expired == 5
