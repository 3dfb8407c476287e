"""/metrics per tenant: a metrics key restricted to model patterns sees only those models' series
(and every series without a model); each key holds its own share of the `model` labels, so one
tenant's new models cannot push another's into the overflow label."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import generate_latest

from service.config import Settings
from service.server.api.access import digest
from service.server.monitoring import Monitor, Observation
from service.server.monitoring.labels import request_state
from tests.apps import MakeApp, app_client
from tests.monitoring.test_monitoring import samples, value
from tests.servers import HANG, served

pytestmark = pytest.mark.anyio
# name: (scopes, model patterns)
KEYS: dict[str, tuple[list[str], list[str] | None]] = {
    "fraud-team": (["compute", "ingest", "read", "admin"], ["fraud-*"]),
    "churn-team": (["compute", "ingest", "read", "admin"], ["churn-*"]),
    "fraud-metrics": (["metrics"], ["fraud-*"]),
    "fraud-and-churn-metrics": (["metrics"], ["churn-*", "fraud-*"]),
    "all-metrics": (["metrics", "compute"], None),
}
MSE = {"loss": "mse", "predictions": [[0.0], [0.0]], "labels": [[1.0], [3.0]]}


def keys_toml() -> str:
    tables = []
    for name, (scopes, models) in KEYS.items():
        table = f'[[keys]]\nname = "{name}"\nkey_sha256 = "{digest(key(name))}"\nscopes = {scopes!r}\n'
        if models is not None:
            table += f"models = {models!r}\n"
        tables.append(table.replace("'", '"'))
    return "\n".join(tables)


def key(name: str) -> str:
    return f"{name}-key-0123456789"


def auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key(name)}"}


def keyed_settings(tmp_path: Path, **settings: Any) -> Settings:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(keys_toml())
    return Settings(
        api_keys_file=str(keys_file),
        metrics_auth=True,
        store_url=f"sqlite:///{tmp_path}/store.sqlite3",
        **settings,
    )


@pytest.fixture
async def api(make_app: MakeApp, tmp_path: Path) -> httpx.AsyncClient:
    return await make_app(keyed_settings(tmp_path))


async def compute(api: httpx.AsyncClient, team: str, model: str) -> None:
    response = await api.post("/v1/loss", json={**MSE, "model": model}, headers=auth(team))
    assert response.status_code == 200, response.text


async def scrape(api: httpx.AsyncClient, viewer: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await api.get("/metrics", headers=auth(viewer))
    assert response.status_code == 200, response.text
    return samples(response.text)


def models_in(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {dict(labels)["model"] for _, labels in scrape if "model" in dict(labels)}


async def test_a_metrics_key_restricted_to_models_sees_only_their_series(api: httpx.AsyncClient) -> None:
    for i in range(3):
        await compute(api, "fraud-team", f"fraud-{i}")
        await compute(api, "churn-team", f"churn-{i}")
    config = {"losses": [{"loss": "mse"}]}
    for team, model in (("fraud-team", "fraud-logged"), ("churn-team", "churn-logged")):
        assert (await api.put(f"/v1/models/{model}", json=config, headers=auth(team))).status_code == 200
        logged = await api.post(
            f"/v1/models/{model}/predictions", json={"ids": [1], "predictions": [[0.5]]}, headers=auth(team)
        )
        assert logged.status_code == 200
    everything = await scrape(api, "all-metrics")
    fraud_only = await scrape(api, "fraud-metrics")
    assert {m for m in models_in(everything) if m.startswith("churn-")} == {
        "churn-0",
        "churn-1",
        "churn-2",
        "churn-logged",
    }
    assert models_in(fraud_only) == {"fraud-0", "fraud-1", "fraud-2", "fraud-logged"}
    # The fraud series are all there, with the values an unrestricted scrape gives them.
    for (name, labels), number in everything.items():
        model = dict(labels).get("model")
        if model is not None and model.startswith("fraud-") and not name.startswith("loss_service_http"):
            assert fraud_only[(name, labels)] == number, (name, labels)
    # Series without a model label stay: request counts, keys in force, rejections.
    assert value(fraud_only, "loss_service_api_keys") == len(KEYS)
    assert (
        "loss_service_http_requests_total",
        (("method", "POST"), ("route", "/v1/loss"), ("status_class", "2xx")),
    ) in fraud_only
    both = await scrape(api, "fraud-and-churn-metrics")
    assert models_in(both) == {m for m in models_in(everything) if m.startswith(("fraud-", "churn-"))}


async def test_other_and_unlabelled_are_hidden_from_a_restricted_key_and_a_keys_overflow_shown_to_its_viewers(
    tmp_path: Path,
) -> None:
    # Five keys, four labels: one label per key.
    async with app_client(keyed_settings(tmp_path, max_models=5)) as api:
        await compute(api, "fraud-team", "fraud-a")
        await compute(api, "fraud-team", "fraud-b")  # past fraud-team's share
        await compute(api, "churn-team", "churn-a")
        await compute(api, "churn-team", "churn-b")  # past churn-team's share
        unlabelled = await api.post("/v1/loss", json=MSE, headers=auth("all-metrics"))
        assert unlabelled.status_code == 200
        everything = await scrape(api, "all-metrics")
        assert models_in(everything) == {"fraud-a", "other:fraud-team", "churn-a", "other:churn-team", "unlabelled"}
        assert models_in(await scrape(api, "fraud-metrics")) == {"fraud-a", "other:fraud-team"}
        both = models_in(await scrape(api, "fraud-and-churn-metrics"))
        assert both == {"fraud-a", "other:fraud-team", "churn-a", "other:churn-team"}


async def test_one_keys_new_models_cannot_take_another_keys_labels(tmp_path: Path) -> None:
    """Five keys and LOSS_SERVICE_MAX_MODELS=10: two labels each. churn-team brings eight models;
    fraud-team's two still get labels of their own."""
    async with app_client(keyed_settings(tmp_path, max_models=10)) as api:
        for i in range(8):
            await compute(api, "churn-team", f"churn-{i}")
        await compute(api, "fraud-team", "fraud-a")
        await compute(api, "fraud-team", "fraud-b")
        everything = await scrape(api, "all-metrics")
        batches = {
            dict(labels)["model"]: number
            for (name, labels), number in everything.items()
            if name == "loss_service_batches_total"
        }
        assert batches == {"churn-0": 1, "churn-1": 1, "other:churn-team": 6, "fraud-a": 1, "fraud-b": 1}
        assert value(everything, "loss_service_model_label_overflow_total") == 6


async def test_a_per_key_share_can_be_set(tmp_path: Path) -> None:
    async with app_client(keyed_settings(tmp_path, max_models=100, max_models_per_key=3)) as api:
        for i in range(5):
            await compute(api, "churn-team", f"churn-{i}")
        everything = await scrape(api, "all-metrics")
        assert {m for m in models_in(everything) if "churn" in m} == {
            "churn-0",
            "churn-1",
            "churn-2",
            "other:churn-team",
        }


def observed_by(monitor: Monitor, key: str | None, model: str) -> str:
    """The label of `model` after a batch of it that `key`'s request computed."""
    token = request_state.set(Observation(key=key))
    try:
        monitor.observe_batch(model, "mse", np.array([0.5]), 0.5)
        return monitor.model_label(model)
    finally:
        request_state.reset(token)


def test_a_share_split_unevenly_is_rounded_down() -> None:
    """LOSS_SERVICE_MAX_MODELS=3 and two keys: one label a key, not one and a half."""
    monitor = Monitor(Settings(max_models=3, model_label_idle=600), clock=lambda: 0.0)
    monitor.set_keys(2, False)
    assert observed_by(monitor, "fraud", "fraud-1") == "fraud-1"
    assert observed_by(monitor, "fraud", "fraud-2") == "other:fraud"
    assert observed_by(monitor, "churn", "churn-1") == "churn-1"


def test_every_label_taken_before_a_keys_share_is_lets_it_take_only_the_idlest_of_all() -> None:
    """A per-key share (2) above the keys' split of LOSS_SERVICE_MAX_MODELS (2): every label can be
    taken while a key still has share left. Then its new model takes the label unused for longest,
    whoever's, once idle for LOSS_SERVICE_MODEL_LABEL_IDLE; until then it counts as 'other:<key>'."""
    now = [0.0]
    monitor = Monitor(Settings(max_models=2, max_models_per_key=2, model_label_idle=600), clock=lambda: now[0])
    monitor.set_keys(2, False)
    assert observed_by(monitor, "fraud", "fraud-1") == "fraud-1"
    now[0] = 100.0
    assert observed_by(monitor, "churn", "churn-1") == "churn-1"
    assert observed_by(monitor, "fraud", "fraud-2") == "other:fraud"  # every label taken, none idle
    now[0] = 650.0
    assert observed_by(monitor, "fraud", "fraud-2") == "fraud-2"  # fraud-1 was idle 650 s
    assert observed_by(monitor, "churn", "churn-2") == "other:churn"  # churn-1, the idlest, only 550 s
    labelled = {
        dict(labels)["model"]
        for name, labels in samples(generate_latest(monitor.registry).decode())
        if name == "loss_service_batches_total"
    }
    assert labelled == {"fraud-2", "churn-1", "other:fraud", "other:churn"}


def test_a_model_outside_the_allowlist_counts_under_its_keys_other_label() -> None:
    monitor = Monitor(Settings(model_allowlist=["fraud-1"]))
    monitor.set_keys(2, False)
    assert observed_by(monitor, "fraud", "fraud-1") == "fraud-1"
    assert observed_by(monitor, "fraud", "fraud-2") == "other:fraud"
    assert observed_by(monitor, None, "swept") == "other"


def test_a_keys_idle_label_is_taken_by_its_own_new_model_never_by_another_keys() -> None:
    now = [0.0]
    monitor = Monitor(Settings(max_models=4, model_label_idle=600), clock=lambda: now[0])
    monitor.set_keys(2, False)  # two labels a key
    batch = np.array([0.5])

    def observe(key: str | None, model: str) -> str:
        token = request_state.set(Observation(key=key))
        try:
            monitor.observe_batch(model, "mse", batch, 0.5)
            return monitor.model_label(model)
        finally:
            request_state.reset(token)

    assert [observe("fraud", "fraud-1"), observe("fraud", "fraud-2")] == ["fraud-1", "fraud-2"]
    assert observe("fraud", "fraud-3") == "other:fraud"  # its share is in use
    now[0] = 300.0
    assert observe("churn", "churn-1") == "churn-1"
    now[0] = 600.0
    assert observe("fraud", "fraud-2") == "fraud-2"  # in use again: fraud-1 is its idlest, 600 s idle
    assert observe("fraud", "fraud-3") == "fraud-3"  # takes fraud-1's label
    assert observe("churn", "churn-2") == "churn-2"  # churn's own share was free all along
    assert observe("churn", "churn-3") == "other:churn"
    # A model keeps its label whoever uses it, and the retention sweep (no key) only reuses labels.
    assert observe("churn", "fraud-3") == "fraud-3"
    assert observe(None, "churn-1") == "churn-1"
    assert observe(None, "never-seen") == "other"
    monitor = Monitor(Settings(max_models=100))
    monitor.set_keys(2, False)
    assert observe(None, "swept") == "other"  # with keys in force, only a key's request claims a label
    monitor.set_keys(0, False)
    assert observe(None, "swept") == "swept"  # without keys, every caller is the one tenant


@pytest.mark.slow
def test_two_workers_scope_the_merged_metrics(tmp_path: Path) -> None:
    """Under `loss-service serve --workers 2` (prometheus-client's multiprocess files), a scrape by
    a restricted key holds only its models' series, merged across the workers."""
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(keys_toml())
    env = {
        "LOSS_SERVICE_API_KEYS_FILE": str(keys_file),
        "LOSS_SERVICE_METRICS_AUTH": "true",
        "LOSS_SERVICE_METRICS_DIR": str(tmp_path / "metrics"),
        "LOSS_SERVICE_STORE_URL": f"sqlite:///{tmp_path}/store.sqlite3",
    }
    with served("--workers", "2", env=env) as url, httpx.Client(base_url=url, timeout=HANG) as client:
        for _ in range(20):  # new connections: both workers get some
            with httpx.Client(base_url=url, timeout=HANG) as one:
                for team, model in (("fraud-team", "fraud-v1"), ("churn-team", "churn-v1")):
                    response = one.post("/v1/loss", json={**MSE, "model": model}, headers=auth(team))
                    assert response.status_code == 200
        everything = samples(client.get("/metrics", headers=auth("all-metrics")).text)
        fraud_only = samples(client.get("/metrics", headers=auth("fraud-metrics")).text)
    assert models_in(everything) == {"fraud-v1", "churn-v1"}
    assert models_in(fraud_only) == {"fraud-v1"}
    assert value(fraud_only, "loss_service_batches_total", model="fraud-v1", loss="mean_squared_error") == 20
    worker_files = {path.stem.rsplit("_", 1)[-1] for path in (tmp_path / "metrics").glob("counter_*.db")}
    assert len(worker_files) >= 2, "both workers wrote metrics"


async def test_rows_logged_in_a_worker_thread_are_charged_to_their_key(tmp_path: Path) -> None:
    """The store's routes run in a worker thread; the key reaches the label budget there too."""
    async with app_client(keyed_settings(tmp_path, max_models=5)) as api:  # five keys: one label each
        for model in ("fraud-a", "fraud-b"):
            put = await api.put(f"/v1/models/{model}", json={"losses": [{"loss": "mse"}]}, headers=auth("fraud-team"))
            assert put.status_code == 200
            rows = {"ids": [1], "predictions": [[0.5]]}
            logged = await api.post(f"/v1/models/{model}/predictions", json=rows, headers=auth("fraud-team"))
            assert logged.status_code == 200
        everything = await scrape(api, "all-metrics")
        assert value(everything, "loss_service_logged_total", model="fraud-a", kind="predictions") == 1
        assert value(everything, "loss_service_logged_total", model="other:fraud-team", kind="predictions") == 1


def test_a_scoped_scrape_never_gets_a_full_page_rendered_meanwhile() -> None:
    """Scrapes that arrive while a page renders share it, but only scrapes of the same scope: a
    restricted key's scrape during a full one renders its own page, never gets the full one."""
    monitor = Monitor(Settings())
    for model in ("fraud-1", "churn-1"):
        monitor.observe_batch(model, "mse", np.array([0.5]), 0.5)
    rendering = threading.Event()
    release = threading.Event()
    calls: list[Any] = []
    render = monitor.exposition

    def held(visible: Any = None) -> tuple[bytes, str]:
        calls.append(visible)
        rendering.set()
        release.wait(60)
        return render(visible)

    monitor.exposition = held  # type: ignore[method-assign]

    def fraud(label: str) -> bool:
        return label.startswith("fraud-")

    scope = ("fraud-metrics", ("fraud-*",))
    with ThreadPoolExecutor(4) as pool:
        full = pool.submit(monitor.exposition_shared)
        assert rendering.wait(60)
        scoped = [pool.submit(monitor.exposition_shared, fraud, scope) for _ in range(2)]
        hang = time.monotonic() + 60  # only stops a hang: a scoped scrape waiting on the full page
        while len(calls) < 2 and time.monotonic() < hang:  # the scoped page is rendered on its own
            time.sleep(0.01)
        release.set()
        pages = [future.result(timeout=60)[0].decode() for future in (full, *scoped)]
    assert calls[0] is None  # the full rendering
    assert set(calls[1:]) == {fraud}  # and one or two scoped ones (the second scrape may come after)
    assert 'model="churn-1"' in pages[0]
    assert 'model="churn-1"' not in pages[1]
    assert 'model="fraud-1"' in pages[1]
    assert pages[1] == pages[2]


async def test_a_restricted_metrics_key_sees_the_quota_usage_of_its_models_keys_only(api: httpx.AsyncClient) -> None:
    """`loss_service_quota_usage{key}` sums the models a key's patterns match: a `fraud-*` metrics
    key sees fraud-team's usage, never churn-team's (its models, its stored bytes)."""
    for team, model in (("fraud-team", "fraud-q"), ("churn-team", "churn-q")):
        assert (await api.put(f"/v1/models/{model}", json={"losses": [{"loss": "mse"}]}, headers=auth(team))).is_success
        rows = {"ids": [1, 2], "predictions": [[0.5], [0.25]]}
        assert (await api.post(f"/v1/models/{model}/predictions", json=rows, headers=auth(team))).is_success

    def usage_keys(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
        return {dict(labels)["key"] for name, labels in scrape if name == "loss_service_quota_usage"}

    assert usage_keys(await scrape(api, "all-metrics")) == {"fraud-team", "churn-team"}
    assert usage_keys(await scrape(api, "fraud-metrics")) == {"fraud-team"}
    assert usage_keys(await scrape(api, "fraud-and-churn-metrics")) == {"fraud-team", "churn-team"}


def test_a_model_back_in_a_share_freed_by_a_keys_reload_counts_into_fresh_series() -> None:
    """A model whose label was taken over comes back without taking anyone's when a keys reload
    leaves its key a larger share: its batches count from one again, into series /metrics shows."""
    now = [0.0]
    monitor = Monitor(Settings(max_models=2, model_label_idle=600), clock=lambda: now[0])
    monitor.set_keys(2, False)  # one label a key
    batch = np.array([0.5])
    token = request_state.set(Observation(key="fraud"))
    try:
        monitor.observe_batch("fraud-1", "mse", batch, 0.5)
        now[0] = 600.0
        monitor.observe_batch("fraud-2", "mse", batch, 0.5)  # takes the idle fraud-1's label
        monitor.set_keys(1, False)  # the other key is gone: fraud may hold both labels
        monitor.observe_batch("fraud-1", "mse", batch, 0.5)
    finally:
        request_state.reset(token)
    scrape = samples(generate_latest(monitor.registry).decode())
    assert value(scrape, "loss_service_batches_total", model="fraud-1", loss="mse") == 1
    assert value(scrape, "loss_service_batches_total", model="fraud-2", loss="mse") == 1


def test_a_keys_quota_usage_shows_where_its_overflow_label_does_not_where_its_name_would() -> None:
    """A scoped scrape asks about a key's usage under the key's overflow label, `other:<key>`, never
    under its bare name (a model may be named like a key)."""
    monitor = Monitor(Settings())
    monitor.set_quota_usage("team-a", 2, 100, 0.0)
    monitor.set_quota_usage("team-b", 1, 50, 0.0)
    asked: list[str] = []

    def visible(label: str) -> bool:
        asked.append(label)
        return label in ("other:team-a", "team-b")  # team-b: a model's name, not its key's label

    scrape = samples(monitor.exposition(visible)[0].decode())
    shown = {dict(labels)["key"] for name, labels in scrape if name == "loss_service_quota_usage"}
    assert shown == {"team-a"}
    assert value(scrape, "loss_service_quota_usage", key="team-a", quota="stored_bytes") == 100
    assert sorted(asked) == ["other:team-a", "other:team-b"]
