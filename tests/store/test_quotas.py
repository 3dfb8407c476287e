"""Quotas per API key (models, stored bytes, values per row), on SQLite and PostgreSQL: each refusal
exact and storing nothing, the accounting equal to the rows, concurrent writes unable to squeeze
past a limit together, and the usage in /metrics and the model status."""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.config import Settings
from service.server.api.access import KeyRing, KeysFileError, digest
from service.store import SCHEMA_VERSION, Pairs, Store
from tests.apps import app_client

# What each stored row counts beside its id and payload (docs/security.md#quotas).
ROW_BYTES = 64

CONFIG = {"losses": [{"loss": "mse", "options": {}}], "convention": "keras", "dtype": "float64"}
MSE = {"losses": [{"loss": "mse"}]}


@pytest.fixture
def url(store_url: str) -> str:
    return store_url


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    opened = Store.open(url)
    yield opened
    opened.close()


def keep(_: Any, pairs: Pairs) -> Pairs:
    return pairs


def rows_bytes(store: Store) -> dict[str, int]:
    """Each model's rows as the test counts them, read row by row: 64 + id + payload bytes, and a
    prediction's segments (UTF-8 JSON) and losses (its history)."""
    with store.database.transaction(write=False) as tx:
        names = dict(tx.all("SELECT id, name FROM loss_models"))
        counted = dict.fromkeys(names.values(), 0)
        for table, extra in (("loss_predictions", "segments, losses"), ("loss_labels", "NULL, losses")):
            for model_id, row_id, payload, segments, losses in tx.all(
                f"SELECT model_id, id, payload, {extra} FROM {table}"
            ):
                size = sum(0 if blob is None else len(bytes(blob)) for blob in (payload, losses))
                size += 0 if segments is None else len(segments.encode())
                counted[names[model_id]] += ROW_BYTES + len(row_id.encode()) + size
    return counted


def kept_bytes(store: Store) -> dict[str, int]:
    return {model.name: model.stored_bytes for model in store.models()}


# -- the store's accounting ---------------------------------------------------------------------


def test_stored_bytes_equal_the_rows_after_any_sequence_of_operations(store: Store) -> None:
    """Logs of both sides (joining, waiting, duplicates, several dtypes, multibyte ids), retention
    sweeps, reconfiguration and deletion, in a random order: after each, every model's
    `stored_bytes` equals the sum over its rows, counted one by one."""
    rng = random.Random(29)
    models = ["m-a", "m-b", "m-c"]
    now = 0.0
    ids = [f"id-{i}" for i in range(40)] + ["ä", "€uro", "𝔘"]
    for name in models:
        store.configure_model(name, CONFIG, 50.0, now)
    for operations in range(1, 121):
        now += rng.choice([1.0, 5.0, 20.0])
        choice = rng.random()
        name = rng.choice(models)
        if store.model(name) is None:
            store.configure_model(name, CONFIG, rng.choice([30.0, 50.0]), now)
        elif choice < 0.75:
            side = rng.choice(["predictions", "labels"])
            chosen = rng.sample(ids, rng.randint(1, 8))
            width = {"predictions": 3, "labels": 3}[side]
            dtype = rng.choice([np.float64, np.float32]) if side == "predictions" else np.float64
            rows = np.asarray([[rng.random() for _ in range(width)] for _ in chosen], dtype=dtype)
            store.log(side, name, chosen, rows, now=now, max_pending=10**6, on_join=keep)  # type: ignore[arg-type]
        elif choice < 0.85:
            store.sweep_expired(now)
        elif choice < 0.95:
            store.configure_model(name, CONFIG, rng.choice([30.0, 50.0]), now)
        else:
            store.delete_model(name)
        assert kept_bytes(store) == rows_bytes(store), f"after operation {operations}"
    assert sum(kept_bytes(store).values()) > 0
    joined = sum(model.joined for model in store.models())
    assert joined > 0, "the sequence must join pairs (whose payloads are dropped)"


def test_the_migration_counts_the_rows_stored_before_it(url: str) -> None:
    """A store written before `stored_bytes` existed (layout 1) gets it computed from its rows."""
    store = Store.open(url)
    store.configure_model("m", CONFIG, 100.0, 0.0)
    store.log("predictions", "m", ["a", "b", "é"], np.ones((3, 4)), now=1.0, max_pending=99, on_join=keep)
    store.log("labels", "m", ["a", "zz"], np.ones((2, 4)), now=2.0, max_pending=99, on_join=keep)
    expected = rows_bytes(store)
    with store.database.transaction() as tx:
        tx.execute("ALTER TABLE loss_models DROP COLUMN stored_bytes")
        tx.execute("UPDATE loss_schema SET version = 1")
    store.close()
    reopened = Store.open(url)
    try:
        assert kept_bytes(reopened) == expected
        with reopened.database.transaction(write=False) as tx:
            assert tx.one("SELECT max(version) FROM loss_schema") == (SCHEMA_VERSION,)
    finally:
        reopened.close()


def test_a_write_past_max_stored_bytes_stores_nothing_and_one_that_frees_bytes_passes(store: Store) -> None:
    from service.store import Quota, QuotaExceededError

    store.configure_model("m", CONFIG, 100.0, 0.0)
    row = ROW_BYTES + 1 + 8 * 100  # one waiting row: 64 + a one-byte id + 100 float64
    quota = Quota("holder", None, 10, 2 * row)
    store.log("predictions", "m", ["a", "b"], np.ones((2, 100)), now=1.0, max_pending=99, on_join=keep, quota=quota)
    before = (store.model("m"), rows_bytes(store))
    with pytest.raises(QuotaExceededError) as refused:
        store.log("predictions", "m", ["c"], np.ones((1, 100)), now=2.0, max_pending=99, on_join=keep, quota=quota)
    assert (refused.value.quota, refused.value.used, refused.value.adding, refused.value.limit) == (
        "max_stored_bytes",
        2 * row,
        row,
        2 * row,
    )
    assert str(refused.value) == (
        f"quota max_stored_bytes exceeded: holder holds {2 * row:,} stored bytes and this request would add "
        f"{row:,}, past its limit of {2 * row:,}; nothing of this request was stored"
    )
    assert (store.model("m"), rows_bytes(store)) == before
    # A label joining a waiting prediction drops its payload: the write frees bytes and passes.
    freed = store.log("labels", "m", ["a"], np.ones((1, 100)), now=3.0, max_pending=99, on_join=keep, quota=quota)
    assert freed.pairs.ids == ["a"]
    assert freed.usage is not None
    assert freed.usage.stored_bytes == 2 * row - 8 * 100 + ROW_BYTES + 1
    assert kept_bytes(store) == rows_bytes(store) == {"m": freed.usage.stored_bytes}


def test_creating_a_model_past_max_models_is_refused_and_reconfiguring_is_not(store: Store) -> None:
    from service.store import Quota, QuotaExceededError

    quota = Quota("holder", ("t-*",), 2, 10**9)
    store.configure_model("other", CONFIG, 1.0, 0.0, quota)  # not counted: the holder's patterns miss it
    store.configure_model("t-1", CONFIG, 1.0, 0.0, quota)
    store.configure_model("t-2", CONFIG, 1.0, 0.0, quota)
    with pytest.raises(QuotaExceededError) as refused:
        store.configure_model("t-3", CONFIG, 1.0, 0.0, quota)
    assert (refused.value.quota, refused.value.used, refused.value.limit) == ("max_models", 2, 2)
    assert [model.name for model in store.models()] == ["other", "t-1", "t-2"]
    assert store.configure_model("t-2", CONFIG, 7.0, 1.0, quota).retention_seconds == 7.0
    store.delete_model("t-1")
    store.configure_model("t-3", CONFIG, 1.0, 0.0, quota)


NAMES = ["fraud-1", "fraud-22", "frXud-3", "a_b", "aXb", "a_bc", "x.y", "xzy", "m-v1", "m-v12", "f", "F-1", "-", "a:b"]
PATTERNS = [
    ("fraud-*",),
    ("f?aud-?",),
    ("*",),
    ("a_b",),  # `_` is literal, never LIKE's one-character wildcard
    ("a_b*", "x.y"),
    ("*-v?",),
    ("f",),
    ("f*",),  # case matters: not F-1
    ("",),
    ("[af]*",),  # a set: matched by fnmatchcase, not in SQL
    ("*[!0-9]", "m-v1"),
    ("a%b", "-"),  # `%` is literal
]


@pytest.mark.parametrize("patterns", PATTERNS, ids=[",".join(p) or "empty" for p in PATTERNS])
def test_a_keys_usage_counts_exactly_the_models_its_patterns_match(store: Store, patterns: tuple[str, ...]) -> None:
    """The database sums usage over the models whose names match, as the key's access check
    (fnmatchcase) reads its patterns: the same models, whatever the pattern."""
    from fnmatch import fnmatchcase

    from service.store import Quota

    for size, name in enumerate(NAMES):
        store.configure_model(name, CONFIG, 100.0, 0.0)
        store.log("predictions", name, ["i"] * 1, np.ones((1, size + 1)), now=1.0, max_pending=9, on_join=keep)
    kept = kept_bytes(store)
    matched = [name for name in NAMES if any(fnmatchcase(name, pattern) for pattern in patterns)]
    usage = store.usage(Quota("k", patterns, 100, 10**9))
    assert (usage.models, usage.stored_bytes) == (len(matched), sum(kept[name] for name in matched))


def test_concurrent_writes_of_one_key_cannot_together_pass_its_quota(url: str) -> None:
    """Eight writers on eight models counted by one quota, each transaction held open after its
    check (a join whose loss takes 0.2 s): room for three, so exactly three are stored. Without
    the holder's lock, on PostgreSQL every writer read the same usage and all eight were stored."""
    from service.store import Quota, QuotaExceededError

    setup = Store.open(url)
    models = [f"t-{i}" for i in range(8)]
    for name in models:
        setup.configure_model(name, CONFIG, 1000.0, 0.0)
        setup.log("labels", name, ["j"], np.ones((1, 1)), now=1.0, max_pending=99, on_join=keep)
    base = sum(kept_bytes(setup).values())
    # Each write joins "j" (64 + 1 bytes, less the label's 8) and leaves "big" waiting (64 + 3 + 800).
    adding = ROW_BYTES + 1 - 8 + ROW_BYTES + 3 + 8 * 100
    quota = Quota("team", ("t-*",), 100, base + 3 * adding)
    stores = [Store.open(url) for _ in models]
    start = threading.Barrier(len(models))
    outcomes: list[str] = []

    def slow_join(_: Any, pairs: Pairs) -> Pairs:
        threading.Event().wait(0.2)  # the transaction stays open between its check and its commit
        return pairs

    def write(store: Store, name: str) -> None:
        rows = np.ones((2, 100))
        start.wait(timeout=60)
        try:
            store.log("predictions", name, ["j", "big"], rows, now=2.0, max_pending=99, on_join=slow_join, quota=quota)
            outcomes.append("stored")
        except QuotaExceededError:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=pair) for pair in zip(stores, models, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for opened in stores:
        opened.close()
    try:
        assert sorted(outcomes) == ["refused"] * 5 + ["stored"] * 3
        assert sum(kept_bytes(setup).values()) == base + 3 * adding == quota.max_stored_bytes
        assert kept_bytes(setup) == rows_bytes(setup)
    finally:
        setup.close()


def test_concurrent_creations_of_one_key_cannot_together_pass_max_models(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight creations at once with room for three models, each pausing 0.2 s after reading the
    key's usage: exactly three models exist after. Without the holder's lock, on PostgreSQL
    every creation read the same count and all eight were created."""
    from service.store import Quota, QuotaExceededError
    from service.store import store as store_module

    read = store_module._usage

    def slow_read(*args: Any) -> Any:
        usage = read(*args)
        threading.Event().wait(0.2)
        return usage

    monkeypatch.setattr(store_module, "_usage", slow_read)
    setup = Store.open(url)
    setup.configure_model("other", CONFIG, 1.0, 0.0)  # not the key's
    quota = Quota("team", ("t-*",), 3, 10**9)
    stores = [Store.open(url) for _ in range(8)]
    start = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def create(store: Store, name: str) -> None:
        start.wait(timeout=60)
        try:
            store.configure_model(name, CONFIG, 1.0, 0.0, quota)
            outcomes.append("created")
        except QuotaExceededError:
            outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(opened, f"t-{i}")) for i, opened in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for opened in stores:
        opened.close()
    try:
        assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
        assert len(setup.models()) == 4
    finally:
        setup.close()


# -- over HTTP, with a keys file ------------------------------------------------------------------

KEYS = {
    # name: (key, scopes, patterns, quota fields)
    "fraud": ("fraud-key-0123456789", ["admin", "ingest", "read"], ["fraud-*"], {"max_models": 2}),
    "churn": (
        "churn-key-0123456789",
        ["admin", "ingest", "read"],
        ["churn-*"],
        {"max_stored_bytes": 2_000, "max_row_values": 3},
    ),
    "ops": ("ops-key-01234567890", ["admin", "ingest", "read", "metrics"], None, {}),
    "reader": ("reader-key-01234567", ["read"], None, {}),
}
# The settings every key without a field of its own gets.
QUOTA_SETTINGS = {"quota_models": 5, "quota_stored_bytes": 50_000, "quota_row_values": 10}


def keys_toml() -> str:
    tables = []
    for name, (key, scopes, patterns, fields) in KEYS.items():
        lines = ["[[keys]]", f'name = "{name}"', f'key_sha256 = "{digest(key)}"', f"scopes = {scopes!r}"]
        if patterns is not None:
            lines.append(f"models = {patterns!r}")
        lines += [f"{field} = {value}" for field, value in fields.items()]
        tables.append("\n".join(lines).replace("'", '"'))
    return "\n\n".join(tables) + "\n"


def auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name][0]}"}


async def serve(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with app_client(settings) as client:
        yield client.app, client


@pytest.fixture
async def keyed(tmp_path: Path, url: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(keys_toml())
    settings = Settings(api_keys_file=str(keys_file), store_url=url, **QUOTA_SETTINGS)  # type: ignore[arg-type]
    async for served in serve(settings):
        yield served


@pytest.fixture
async def keyless(url: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    settings = Settings(store_url=url, quota_models=2, quota_stored_bytes=1_000, quota_row_values=4)
    async for served in serve(settings):
        yield served


def problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "retry-after" not in response.headers, "a quota does not free itself: no Retry-After"
    detail: str = response.json()["detail"]
    return detail


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.anyio
async def test_a_key_past_its_max_models_gets_429_naming_the_quota_and_nothing_is_created(
    keyed: tuple[Any, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    _, api = keyed
    for name in ("fraud-1", "fraud-2"):
        assert (await api.put(f"/v1/models/{name}", json=MSE, headers=auth("fraud"))).status_code == 200
    refused = await api.put("/v1/models/fraud-3", json=MSE, headers=auth("fraud"))
    assert problem(refused, 429) == (
        "quota max_models exceeded: the API key 'fraud' holds 2 models and this request would add 1, past its "
        "limit of 2; nothing of this request was stored (the key file's max_models, default LOSS_SERVICE_QUOTA_MODELS)"
    )
    assert refused.json()["errors"][0]["loc"] == ["quota", "max_models"]
    text = (await api.get("/metrics", headers=auth("ops"))).text
    assert metric(text, "loss_service_http_requests_rejected_total", reason="quota") == 1
    assert metric(text, "loss_service_http_requests_rejected_total", reason="overloaded") == 0
    assert [json.loads(r.getMessage()) for r in caplog.records if r.name == "loss_service.audit"] == [
        {"event": "refused", "status": 429, "key": "fraud", "route": "/v1/models/fraud-3", "model": "fraud-3",
         "reason": "max_models"}
    ]  # fmt: skip
    listed = (await api.get("/v1/models", headers=auth("ops"))).json()["models"]
    assert [model["model"] for model in listed] == ["fraud-1", "fraud-2"]
    # Reconfiguring a model it has is no new model; another team's models are not its.
    assert (await api.put("/v1/models/fraud-2", json=MSE, headers=auth("fraud"))).status_code == 200
    assert (await api.put("/v1/models/churn-1", json=MSE, headers=auth("churn"))).status_code == 200
    # The ops key has no max_models: LOSS_SERVICE_QUOTA_MODELS (5) over every model (3 so far).
    for name in ("ops-1", "ops-2"):
        assert (await api.put(f"/v1/models/{name}", json=MSE, headers=auth("ops"))).status_code == 200
    assert "holds 5 models" in problem(await api.put("/v1/models/ops-3", json=MSE, headers=auth("ops")), 429)
    assert (await api.delete("/v1/models/fraud-1", headers=auth("fraud"))).status_code == 204
    assert (await api.put("/v1/models/fraud-3", json=MSE, headers=auth("fraud"))).status_code == 200


@pytest.mark.anyio
async def test_a_key_past_its_max_stored_bytes_gets_429_and_nothing_is_stored(
    keyed: tuple[Any, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    app, api = keyed
    assert (await api.put("/v1/models/churn-1", json=MSE, headers=auth("churn"))).status_code == 200
    row = ROW_BYTES + 3 + 3 * 8  # "r-a": 64 + 3 bytes of id + three float64
    first = await api.post(
        "/v1/models/churn-1/predictions",
        json={"ids": [f"r-{chr(97 + i)}" for i in range(12)], "predictions": [[0.5, 0.5, 0.5]] * 12},
        headers=auth("churn"),
    )
    assert first.status_code == 200, first.text
    status = (await api.get("/v1/models/churn-1", headers=auth("churn"))).json()
    assert status["stored_bytes"] == 12 * row
    refused = await api.post(
        "/v1/models/churn-1/predictions",
        json={"ids": [f"s-{chr(97 + i)}" for i in range(12)], "predictions": [[0.5, 0.5, 0.5]] * 12},
        headers=auth("churn"),
    )
    assert "max_stored_bytes" in [r.getMessage() for r in caplog.records if r.name == "loss_service.audit"][-1]
    assert problem(refused, 429) == (
        f"quota max_stored_bytes exceeded: the API key 'churn' holds {12 * row:,} stored bytes and this request "
        f"would add {12 * row:,}, past its limit of 2,000; nothing of this request was stored "
        "(the key file's max_stored_bytes, default LOSS_SERVICE_QUOTA_STORED_BYTES)"
    )
    after = (await api.get("/v1/models/churn-1", headers=auth("churn"))).json()
    assert (after["pending_predictions"], after["stored_bytes"]) == (12, 12 * row)
    assert rows_bytes(app.state.store) == {"churn-1": 12 * row}
    # Labels that join drop the predictions' payloads; their own rows still fit.
    joined = await api.post(
        "/v1/models/churn-1/labels",
        json={"ids": ["r-a", "r-b"], "labels": [[0.5, 0.5, 0.5]] * 2},
        headers=auth("churn"),
    )
    assert joined.status_code == 200, joined.text
    assert rows_bytes(app.state.store) == kept_bytes(app.state.store)


@pytest.mark.anyio
async def test_a_row_wider_than_max_row_values_gets_422_naming_the_field_and_index(
    keyed: tuple[Any, httpx.AsyncClient],
) -> None:
    app, api = keyed
    for name, key in (("churn-1", "churn"), ("fraud-1", "fraud")):
        assert (await api.put(f"/v1/models/{name}", json=MSE, headers=auth(key))).status_code == 200
    wide = await api.post(
        "/v1/models/churn-1/predictions", json={"ids": ["a"], "predictions": [[0.0] * 4]}, headers=auth("churn")
    )
    detail = problem(wide, 422)
    assert detail == (
        "predictions.0: a row holds 4 values, more than the API key 'churn''s quota max_row_values of 3 "
        "(the key file's max_row_values, default LOSS_SERVICE_QUOTA_ROW_VALUES); nothing of this request was stored"
    )
    assert wide.json()["errors"][0]["loc"] == ["body", "predictions", 0]
    square = await api.post(
        "/v1/models/churn-1/labels", json={"ids": ["a"], "labels": [[[0.0, 1.0], [2.0, 3.0]]]}, headers=auth("churn")
    )
    assert problem(square, 422).startswith("labels.0: a row holds 4 values")
    # The fraud key sets no max_row_values: LOSS_SERVICE_QUOTA_ROW_VALUES (10) holds.
    ten = await api.post(
        "/v1/models/fraud-1/predictions", json={"ids": ["a"], "predictions": [[0.0] * 10]}, headers=auth("fraud")
    )
    assert ten.status_code == 200, ten.text
    eleven = await api.post(
        "/v1/models/fraud-1/labels", json={"ids": ["b"], "labels": [[0.0] * 11]}, headers=auth("fraud")
    )
    assert "more than the API key 'fraud''s quota max_row_values of 10" in problem(eleven, 422)
    assert rows_bytes(app.state.store) == {"churn-1": 0, "fraud-1": ROW_BYTES + 1 + 80}


@pytest.mark.anyio
async def test_the_usage_per_key_is_in_metrics_and_the_model_status(keyed: tuple[Any, httpx.AsyncClient]) -> None:
    app, api = keyed
    for name, key in (("fraud-1", "fraud"), ("fraud-2", "fraud"), ("churn-1", "churn")):
        assert (await api.put(f"/v1/models/{name}", json=MSE, headers=auth(key))).status_code == 200
    for name in ("fraud-1", "fraud-2"):
        body = {"ids": ["a", "bb"], "predictions": [[1.0, 2.0]] * 2}
        assert (await api.post(f"/v1/models/{name}/predictions", json=body, headers=auth("fraud"))).status_code == 200
    body = {"ids": ["c"], "predictions": [[1.0]]}
    assert (await api.post("/v1/models/churn-1/predictions", json=body, headers=auth("churn"))).status_code == 200
    fraud_bytes = 2 * (2 * ROW_BYTES + 3 + 2 * 16)
    churn_bytes = ROW_BYTES + 1 + 8
    status = (await api.get("/v1/models/fraud-2", headers=auth("fraud"))).json()
    assert status["stored_bytes"] == fraud_bytes // 2
    assert status["quota"] == {
        "key": "fraud",
        "models": {"used": 2, "limit": 2},
        "stored_bytes": {"used": fraud_bytes, "limit": 50_000},
        "row_values": {"limit": 10},
    }
    ops = (await api.get("/v1/models/churn-1", headers=auth("ops"))).json()["quota"]
    assert ops == {
        "key": "ops",
        "models": {"used": 3, "limit": 5},
        "stored_bytes": {"used": fraud_bytes + churn_bytes, "limit": 50_000},
        "row_values": {"limit": 10},
    }
    text = (await api.get("/metrics", headers=auth("ops"))).text
    assert metric(text, "loss_service_quota_usage", key="fraud", quota="stored_bytes") == fraud_bytes
    assert metric(text, "loss_service_quota_usage", key="fraud", quota="models") == 2
    assert metric(text, "loss_service_quota_usage", key="churn", quota="stored_bytes") == churn_bytes
    # Deleting a model reports every key's usage at once.
    assert (await api.delete("/v1/models/fraud-1", headers=auth("ops"))).status_code == 204
    text = (await api.get("/metrics", headers=auth("ops"))).text
    assert metric(text, "loss_service_quota_usage", key="fraud", quota="stored_bytes") == fraud_bytes // 2
    assert metric(text, "loss_service_quota_usage", key="ops", quota="models") == 2
    assert metric(text, "loss_service_quota_usage", key="ops", quota="stored_bytes") == fraud_bytes // 2 + churn_bytes
    assert sum(kept_bytes(app.state.store).values()) == fraud_bytes // 2 + churn_bytes


@pytest.mark.anyio
async def test_without_keys_the_settings_bound_the_whole_service(keyless: tuple[Any, httpx.AsyncClient]) -> None:
    app, api = keyless
    for name in ("a", "b"):
        assert (await api.put(f"/v1/models/{name}", json=MSE)).status_code == 200
    assert problem(await api.put("/v1/models/c", json=MSE), 429) == (
        "quota max_models exceeded: the service holds 2 models and this request would add 1, past its limit of 2; "
        "nothing of this request was stored (the key file's max_models, default LOSS_SERVICE_QUOTA_MODELS)"
    )
    assert problem(await api.post("/v1/models/a/predictions", json={"ids": ["x"], "predictions": [[0.0] * 5]}), 422)
    ok = await api.post(
        "/v1/models/a/predictions", json={"ids": [str(i) for i in range(10)], "predictions": [[0.0]] * 10}
    )
    assert ok.status_code == 200, ok.text
    used = 10 * (ROW_BYTES + 1 + 8)
    four = {"ids": ["w", "x", "y", "z"], "predictions": [[0.0, 1.0]] * 4}
    over = await api.post("/v1/models/b/predictions", json=four)
    assert problem(over, 429).startswith(f"quota max_stored_bytes exceeded: the service holds {used:,} stored bytes")
    status = (await api.get("/v1/models/b")).json()
    assert status["quota"] == {
        "key": None,
        "models": {"used": 2, "limit": 2},
        "stored_bytes": {"used": used, "limit": 1_000},
        "row_values": {"limit": 4},
    }
    text = (await api.get("/metrics")).text
    assert metric(text, "loss_service_quota_usage", key="", quota="stored_bytes") == used
    assert rows_bytes(app.state.store) == {"a": used, "b": 0}


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("max_models", "0", "Input should be greater than or equal to 1"),
        ("max_stored_bytes", "-1", "Input should be greater than or equal to 1"),
        ("max_row_values", '"10"', "Input should be a valid integer"),
        ("max_models", "1.5", "Input should be a valid integer"),
    ],
)
def test_a_quota_field_that_is_not_a_positive_integer_is_refused(
    tmp_path: Path, field: str, value: str, reason: str
) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(
        f'[[keys]]\nname = "t"\nkey_sha256 = "{digest("k" * 20)}"\nscopes = ["ingest"]\n{field} = {value}\n'
    )
    with pytest.raises(KeysFileError, match=rf"^keys\.0\.{field}: {reason}"):
        KeyRing(file=str(keys_file))


def test_the_key_file_fields_reach_the_principal(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(keys_toml())
    ring = KeyRing(file=str(keys_file))
    churn, ops = ring.match(KEYS["churn"][0]), ring.match(KEYS["ops"][0])
    assert churn is not None
    assert ops is not None
    assert (churn.max_models, churn.max_stored_bytes, churn.max_row_values) == (None, 2_000, 3)
    assert (ops.max_models, ops.max_stored_bytes, ops.max_row_values) == (None, None, None)


@pytest.mark.anyio
async def test_the_retention_sweep_frees_the_usage_and_reports_it(url: str, tmp_path: Path) -> None:
    """Rows past retention leave `stored_bytes` with them, and the sweep reports every writing
    key's usage to /metrics (a key that only reads is not reported)."""
    import anyio

    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(keys_toml())
    settings = Settings(api_keys_file=str(keys_file), store_url=url, sweep_interval=0.05)
    async for app, api in serve(settings):
        assert (
            await api.put("/v1/models/fraud-1", json={**MSE, "retention_seconds": 0.5}, headers=auth("fraud"))
        ).status_code == 200
        body = {"ids": ["a", "b"], "labels": [[1.0], [2.0]]}
        assert (await api.post("/v1/models/fraud-1/labels", json=body, headers=auth("fraud"))).status_code == 200
        stored = 2 * (ROW_BYTES + 1 + 8)
        text = (await api.get("/metrics", headers=auth("ops"))).text
        assert metric(text, "loss_service_quota_usage", key="fraud", quota="stored_bytes") == stored
        with anyio.fail_after(60):  # stops only a hang: the sweep runs every 0.05 s
            while (await api.get("/v1/models/fraud-1", headers=auth("fraud"))).json()["expired_labels"] < 2:
                await anyio.sleep(0.05)
            # The sweep that expired them reports the usage once it has read it.
            while metric(text, "loss_service_quota_usage", key="fraud", quota="stored_bytes") != 0:
                await anyio.sleep(0.05)
                text = (await api.get("/metrics", headers=auth("ops"))).text
        assert metric(text, "loss_service_quota_usage", key="ops", quota="stored_bytes") == 0
        assert metric(text, "loss_service_quota_usage", key="churn", quota="models") == 0
        assert metric(text, "loss_service_quota_usage", key="reader", quota="models") is None
        status = (await api.get("/v1/models/fraud-1", headers=auth("fraud"))).json()
        assert (status["stored_bytes"], status["expired_labels"], status["quota"]["stored_bytes"]["used"]) == (0, 2, 0)
        assert rows_bytes(app.state.store) == {"fraud-1": 0}


def test_a_usage_read_before_a_write_committed_does_not_hide_it() -> None:
    """A report read before a write committed may be set after the write's own: it is dropped."""
    from prometheus_client import generate_latest

    from service.server.monitoring import Monitor

    monitor = Monitor(Settings())
    monitor.set_quota_usage("team", 1, 500, as_of=2.0)  # a write, committed at 2.0
    monitor.set_quota_usage("team", 1, 100, as_of=1.0)  # a report, read at 1.0
    monitor.set_quota_usage("other", 3, 7, as_of=1.5)
    text = generate_latest(monitor.registry).decode()
    assert metric(text, "loss_service_quota_usage", key="team", quota="stored_bytes") == 500
    assert metric(text, "loss_service_quota_usage", key="other", quota="models") == 3
    monitor.set_quota_usage("team", 0, 0, as_of=3.0)
    text = generate_latest(monitor.registry).decode()
    assert metric(text, "loss_service_quota_usage", key="team", quota="stored_bytes") == 0


@pytest.mark.anyio
async def test_a_failed_usage_report_does_not_fail_a_committed_change(
    keyless: tuple[Any, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating or deleting a model is committed before the usage is reported: a store that
    fails in between leaves the gauge to the next report, and the answer stays 200 / 204."""
    app, api = keyless

    def unreadable(*_: Any) -> Any:
        raise OSError("disk I/O error")

    monkeypatch.setattr(app.state.store, "usages", unreadable)
    assert (await api.put("/v1/models/a", json=MSE)).status_code == 200
    assert (await api.delete("/v1/models/a")).status_code == 204
    assert app.state.store.model("a") is None
