"""The comparisons /metrics reports (`loss_service_comparison_*`), on SQLite and PostgreSQL: the
periodic job (LOSS_SERVICE_COMPARE_INTERVAL) compares each model with the champions its
`compare_to` names, over the last 24 h.

Its values are checked against GET .../compare/{champion} over the same pairs, and the difference
against a naive float64 mean of the per-pair binary cross-entropy differences computed here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.server.monitoring import Monitor
from service.usecases import comparisons, upkeep
from service.usecases.errors import StoreUnavailableError
from service.values.compared import Compared
from tests.apps import AppClient, MakeApp

pytestmark = pytest.mark.anyio
HANG = 60.0  # stops a hang only
BCE = {"losses": [{"loss": "binary_crossentropy"}, {"loss": "mse"}], "convention": "keras", "dtype": "float64"}
N = 400
LOSSES = ("binary_crossentropy", "mean_squared_error")  # BCE's, as answers name them


def scraped(text: str) -> dict[str, dict[tuple[str, str, str], float]]:
    """Each comparison family's samples by (model, champion, loss)."""
    found: dict[str, dict[tuple[str, str, str], float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("loss_service_comparison_"):
            for sample in family.samples:
                key = (sample.labels["model"], sample.labels["champion"], sample.labels["loss"])
                found.setdefault(sample.name, {})[key] = sample.value
    return found


async def metrics_when(api: AppClient, done: Callable[[dict[str, dict[tuple[str, str, str], float]]], bool]) -> Any:
    """The comparison series once `done` accepts them (the job runs every 50 ms)."""
    with anyio.fail_after(HANG):
        while True:
            found = scraped((await api.get("/metrics")).text)
            if done(found):
                return found
            await anyio.sleep(0.05)


def bce(p: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Binary cross-entropy of probabilities, per pair, in float64 (no clipping: p stays in [0.05, 0.95])."""
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


async def put(api: AppClient, name: str, **fields: Any) -> None:
    response = await api.put(f"/v1/models/{name}", json=BCE | fields)
    assert response.status_code in (200, 201), response.text


async def log(api: AppClient, name: str, kind: str, ids: list[str], values: np.ndarray[Any, Any]) -> None:
    response = await api.post(f"/v1/models/{name}/{kind}", json={"ids": ids, kind: values.tolist()})
    assert response.status_code == 200, response.text


async def test_the_job_reports_each_configured_pair_as_the_compare_route_answers_it(
    make_app: MakeApp, store_url: str
) -> None:
    api = await make_app(store_url=store_url, compare_interval=0.05)
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, N).astype(np.float64)
    # The champion is right with probability ~0.8, "worse" with ~0.6, "better" with ~0.9.
    near = {name: rng.uniform(low, high, N) for name, (low, high) in {"a": (0.7, 0.9), "worse": (0.5, 0.7)}.items()}
    near["better"] = rng.uniform(0.85, 0.95, N)
    ids = [f"id-{i}" for i in range(N)]
    await put(api, "a")
    for name in ("worse", "better"):
        await put(api, name, labels_from="a", compare_to=["a"])
    await put(api, "single", labels_from="a", compare_to=["a"])  # one pair: a difference, no band yet
    await put(api, "gone")
    await put(api, "lone", compare_to=["gone"])  # no pair at all
    await put(api, "solo")
    await put(api, "stranger", compare_to=["solo"])
    await put(api, "solo", losses=[{"loss": "mae"}])  # reconfigured: no loss in common with stranger, no pair
    for name, right in near.items():
        predictions = np.where(y == 1, right, 1 - right)
        await log(api, name, "predictions", ids, predictions[:, None])
    await log(api, "single", "predictions", ids[:1], np.array([[0.5]]))
    await log(api, "a", "labels", ids, y[:, None])

    # A run that began before the labels came may have compared some pairs without them: wait for
    # one that saw them all.
    joined = {(m, "a", loss): (1 if m == "single" else N) for m in ("worse", "better", "single") for loss in LOSSES}
    found = await metrics_when(
        api, lambda f: all(f.get("loss_service_comparison_pairs", {}).get(k) == n for k, n in joined.items())
    )
    pairs = {
        (model, champion, loss)
        for model in ("worse", "better", "single")
        for champion, loss in [("a", "binary_crossentropy"), ("a", "mean_squared_error")]
    } | {("lone", "gone", "binary_crossentropy"), ("lone", "gone", "mean_squared_error")}
    assert set(found["loss_service_comparison_pairs"]) == set(found["loss_service_comparison_verdict"]) == pairs
    for model, champion, loss in sorted(pairs):
        answer = (await api.get(f"/v1/models/{model}/compare/{champion}", params={"loss": loss})).json()
        key = (model, champion, loss)
        assert found["loss_service_comparison_pairs"][key] == answer["n"]
        assert (
            found["loss_service_comparison_verdict"][key]
            == {"better": -1, "undecided": 0, "worse": 1}[answer["verdict"]]
        )
        for family, field in (("difference", "mean"), ("low", "low"), ("high", "high")):
            exported = found.get(f"loss_service_comparison_{family}", {}).get(key)
            if answer["difference"][field] is None:
                assert exported is None, (key, family)  # undefined: left unset, never NaN
            else:
                assert exported == pytest.approx(answer["difference"][field], rel=1e-12), (key, family)
    # What the route answers is what the pairs' losses say, computed naively here.
    champion_loss = bce(np.where(y == 1, near["a"], 1 - near["a"]), y)
    for name, verdict in (("worse", 1), ("better", -1)):
        naive = float(np.mean(bce(np.where(y == 1, near[name], 1 - near[name]), y) - champion_loss))
        key = (name, "a", "binary_crossentropy")
        assert found["loss_service_comparison_difference"][key] == pytest.approx(naive, rel=1e-9)
        assert found["loss_service_comparison_verdict"][key] == verdict
        assert found["loss_service_comparison_low"][key] < naive < found["loss_service_comparison_high"][key]
    single = ("single", "a", "binary_crossentropy")
    assert found["loss_service_comparison_pairs"][single] == 1
    assert found["loss_service_comparison_difference"][single] == pytest.approx(
        float(bce(np.array([0.5]), y[:1])[0] - champion_loss[0]), rel=1e-9
    )
    assert single not in found["loss_service_comparison_low"]
    assert ("lone", "gone", "mean_squared_error") not in found.get("loss_service_comparison_difference", {})
    assert all(math.isfinite(value) for family in found.values() for value in family.values())

    # A pair no longer configured, or whose champion went, leaves /metrics at the next run.
    await put(api, "better", labels_from="a", compare_to=[])
    assert (await api.delete("/v1/models/gone")).status_code in (200, 204)
    found = await metrics_when(
        api, lambda f: not any(k[0] in ("better", "lone") for k in f.get("loss_service_comparison_pairs", {}))
    )
    for family in found.values():
        assert {k[0] for k in family} <= {"worse", "single"}, family
    assert ("worse", "a", "binary_crossentropy") in found["loss_service_comparison_verdict"]


async def test_a_failed_run_is_logged_once_keeps_the_last_values_and_is_retried(
    make_app: MakeApp, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store fails for three runs: one warning, the loop goes on, and the next run reports."""
    api = await make_app(store_url=f"sqlite:///{tmp_path}/store.sqlite3", compare_interval=3600)
    await put(api, "a")
    await put(api, "b", labels_from="a", compare_to=["a"])
    found: list[list[Compared]] = []
    failures = [3]
    real = comparisons.configured_pairs

    def failing(store: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise StoreUnavailableError("the database cannot be reached", 1, False)
        return real(store)

    class Recording:
        def set_comparisons(self, compared: list[Compared]) -> None:
            found.append(list(compared))

    monkeypatch.setattr(comparisons, "configured_pairs", failing)
    state = api.app.state
    with caplog.at_level(logging.WARNING, logger="service.api"):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                upkeep.compare_forever,
                state.store,
                Recording(),
                0.01,
                upkeep.store_threads(state),  # type: ignore[arg-type]
            )
            with anyio.fail_after(HANG):
                while not found:
                    await anyio.sleep(0.01)
            tasks.cancel_scope.cancel()
    failed = [r for r in caplog.records if "comparing the models for /metrics failed" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]
    assert failures == [0]
    assert [(c.model, c.champion, c.loss, c.n, c.verdict) for c in found[0]] == [
        ("b", "a", "binary_crossentropy", 0, 0),
        ("b", "a", "mean_squared_error", 0, 0),
    ]


def test_shared_labels_show_the_worst_verdict_and_no_value_that_is_not_finite() -> None:
    """Models counted as 'other' share their labels: the pair shown is the one an alert on `worse` needs."""
    monitor = Monitor(Settings(model_allowlist=["a"]))
    rows = [
        Compared("x", "a", "mse", 500, -0.2, -0.3, -0.1, -1),
        Compared("y", "a", "mse", 10, 0.4, 0.1, 0.7, 1),
        Compared("z", "a", "mse", 900, 0.01, math.nan, math.inf, 0),
    ]
    monitor.set_comparisons(rows)
    found = scraped(monitor.exposition()[0].decode())
    key = ("other", "a", "mse")
    assert found["loss_service_comparison_verdict"] == {key: 1}
    assert found["loss_service_comparison_difference"] == {key: 0.4}
    monitor.set_comparisons(rows[2:])
    found = scraped(monitor.exposition()[0].decode())
    assert found["loss_service_comparison_difference"] == {key: 0.01}
    assert key not in found.get("loss_service_comparison_low", {})
    assert key not in found.get("loss_service_comparison_high", {})
    monitor.set_comparisons([])
    assert scraped(monitor.exposition()[0].decode()) == {}


def test_a_scoped_scrape_shows_a_comparison_only_to_who_may_read_both_models() -> None:
    monitor = Monitor(Settings())
    monitor.set_comparisons(
        [Compared("b", "a", "mse", 5, 0.1, -0.2, 0.4, 0), Compared("c", "b", "mse", 5, 0.1, None, None, 0)]
    )
    found = scraped(monitor.exposition(lambda model: model in {"b", "c"})[0].decode())
    assert set(found["loss_service_comparison_verdict"]) == {("c", "b", "mse")}


def test_with_several_workers_each_shows_its_own_last_run(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under PROMETHEUS_MULTIPROC_DIR the comparisons come from the worker's own run, and a pair it
    no longer has is gone, which values in the multiprocess files could not be."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monitor = Monitor(Settings())
    monitor.set_comparisons([Compared("b", "a", "mse", 5, 0.1, -0.2, 0.4, 0)])
    assert scraped(monitor.exposition()[0].decode())["loss_service_comparison_pairs"] == {("b", "a", "mse"): 5}
    monitor.set_comparisons([])
    assert scraped(monitor.exposition()[0].decode()) == {}
