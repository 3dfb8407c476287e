"""The estimates /metrics reports (`loss_service_expected_loss*`, `loss_service_estimate_cohort_*`),
on SQLite and PostgreSQL: the periodic job (LOSS_SERVICE_ESTIMATE_INTERVAL) reads, per model
configured with `estimate`, the last hour's predictions and the cohort's joined pairs.

Every value is checked against a naive float64 reference written in tests/api/test_history_estimates.py
(the per-class losses written out and weighted by the prediction's own probabilities), and the
realized mean against the plain mean of -log softmax(z)[label] over the same pairs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.server.monitoring import Monitor
from service.usecases import estimate_watch, upkeep
from service.usecases.errors import StoreUnavailableError
from service.values.watched import Watched
from tests.api.test_history_estimates import reference, scce_table, softmax
from tests.apps import AppClient, MakeApp

pytestmark = pytest.mark.anyio
HANG = 60.0  # stops a hang only
HOUR = 3600.0
SCCE = {
    "losses": [{"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True}}],
    "convention": "torch",
    "retention_seconds": 5 * 86400,
}
LOSS = "sparse_categorical_crossentropy"  # as answers name it
Series = dict[str, dict[tuple[str, str], float]]


def scraped(text: str) -> Series:
    """Each estimate family's samples by (model, loss)."""
    found: Series = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("loss_service_expected_loss", "loss_service_estimate_cohort")):
            for sample in family.samples:
                found.setdefault(sample.name, {})[(sample.labels["model"], sample.labels["loss"])] = sample.value
    return found


async def metrics_when(api: AppClient, done: Callable[[Series], bool]) -> Series:
    """The estimate series once `done` accepts them (the job runs every 50 ms); the last seen in
    the error where it never does."""
    found: Series = {}
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        found = scraped((await api.get("/metrics")).text)
        if done(found):
            return found
        await anyio.sleep(0.05)
    raise AssertionError(f"never came; the last scrape: {found}")


async def ok(api: AppClient, method: str, url: str, body: dict[str, Any]) -> None:
    response = await api.request(method, url, json=body)
    assert response.status_code in (200, 201), response.text


async def log(api: AppClient, name: str, z: Any, times: Any, first: int = 0) -> list[str]:
    ids = [f"{name}-{first + i}" for i in range(len(z))]
    body = {"ids": ids, "predictions": z.tolist(), "timestamps": times.tolist()}
    await ok(api, "POST", f"/v1/models/{name}/predictions", body)
    return ids


def realized(z: Any, labels: Any) -> float:
    """PyTorch's mean cross-entropy of logits, plainly: the mean of -log softmax(z)[label]."""
    return float(np.mean([-math.log(softmax(z[i : i + 1])[0, c]) for i, c in enumerate(labels)]))


async def test_the_job_reports_the_last_hour_and_the_cohorts_joined_pairs_as_the_naive_sums_give_them(
    make_app: MakeApp, store_url: str
) -> None:
    api = await make_app(store_url=store_url, estimate_interval=0.05)
    rng = np.random.default_rng(11)
    now = time.time()
    # Recent: half an hour ago, half joined; old: two hours ago (in the cohort, not the last
    # hour), all joined; ancient: 30 h ago (in neither).
    sizes = {"recent": 40, "old": 60, "ancient": 30}
    ages = {"recent": 1800.0, "old": 2 * HOUR, "ancient": 30 * HOUR}
    z = {part: rng.normal(size=(n, 3)) * 2 for part, n in sizes.items()}
    drawn = {part: np.array([rng.choice(3, p=row) for row in softmax(z[part])]) for part in sizes}
    await ok(api, "PUT", "/v1/models/m", SCCE | {"estimate": {"losses": [0]}})
    await ok(api, "PUT", "/v1/models/plain", SCCE)  # no estimate: no series
    await ok(api, "PUT", "/v1/models/drift", SCCE | {"estimate": {"losses": [0]}})
    joined_labels = {}
    for part, n in sizes.items():
        ids = await log(api, "m", z[part], now - ages[part] + rng.uniform(-60, 60, n), first=1000 * len(joined_labels))
        keep = n // 2 if part == "recent" else n
        await ok(api, "POST", "/v1/models/m/labels", {"ids": ids[:keep], "labels": drawn[part][:keep].tolist()})
        joined_labels[part] = keep
        await log(api, "plain", z[part], now - ages[part] + np.zeros(n), first=1000 * len(joined_labels))
    # "drift": every label is the class its prediction finds least likely.
    ids = await log(api, "drift", z["old"], now - ages["old"] + np.zeros(sizes["old"]))
    least = np.argmin(z["old"], axis=1)
    await ok(api, "POST", "/v1/models/drift/labels", {"ids": ids, "labels": least.tolist()})

    cohort_pairs = joined_labels["recent"] + joined_labels["old"]
    found = await metrics_when(
        api,
        lambda f: (
            f.get("loss_service_estimate_cohort_pairs", {}).get(("m", LOSS)) == cohort_pairs
            and f.get("loss_service_expected_loss_predictions", {}).get(("m", LOSS)) == sizes["recent"]
            and ("drift", LOSS) in f.get("loss_service_estimate_cohort_realized", {})
        ),
    )
    key = ("m", LOSS)
    assert {labels[0] for family in found.values() for labels in family} == {"m", "drift"}
    table = {part: scce_table(values) for part, values in z.items()}
    hour = reference(table["recent"], softmax(z["recent"]), np.ones(40), np.ones(40, bool))
    for family, field in (("", "mean"), ("_low", "low"), ("_high", "high")):
        assert found[f"loss_service_expected_loss{family}"][key] == pytest.approx(hour[field], rel=1e-9)
    pairs_z = np.concatenate([z["recent"][:20], z["old"]])
    pairs_labels = np.concatenate([drawn["recent"][:20], drawn["old"]])
    cohort = reference(scce_table(pairs_z), softmax(pairs_z), np.ones(80), np.ones(80, bool))
    for family, field in (("expected", "mean"), ("low", "low"), ("high", "high")):
        assert found[f"loss_service_estimate_cohort_{family}"][key] == pytest.approx(cohort[field], rel=1e-9)
    assert found["loss_service_estimate_cohort_realized"][key] == pytest.approx(
        realized(pairs_z, pairs_labels), rel=1e-9
    )
    # Labels from the predictions' own distribution land inside the band; the least likely class
    # every time lands far above it.
    assert found["loss_service_estimate_cohort_low"][key] < found["loss_service_estimate_cohort_realized"][key]
    assert found["loss_service_estimate_cohort_realized"][key] < found["loss_service_estimate_cohort_high"][key]
    drift = ("drift", LOSS)
    assert found["loss_service_estimate_cohort_realized"][drift] == pytest.approx(realized(z["old"], least), rel=1e-9)
    assert found["loss_service_estimate_cohort_realized"][drift] > found["loss_service_estimate_cohort_high"][drift]
    assert drift not in found.get("loss_service_expected_loss", {})  # no prediction in the last hour

    # A model no longer estimated leaves /metrics at the next run.
    await ok(api, "PUT", "/v1/models/drift", SCCE)
    found = await metrics_when(api, lambda f: all(labels[0] == "m" for family in f.values() for labels in family))
    assert key in found["loss_service_estimate_cohort_realized"]


async def test_a_cohort_with_pairs_joined_before_the_estimate_shows_no_realized_mean(
    make_app: MakeApp, store_url: str
) -> None:
    """Like for like: the realized mean of pairs some of which have no estimate is not compared with the band."""
    api = await make_app(store_url=store_url, estimate_interval=0.05)
    rng = np.random.default_rng(5)
    now = time.time()
    z, labels = rng.normal(size=(30, 3)), rng.integers(0, 3, 30)
    await ok(api, "PUT", "/v1/models/late", SCCE)
    ids = await log(api, "late", z, now - HOUR * 2 + np.zeros(30))
    await ok(api, "POST", "/v1/models/late/labels", {"ids": ids[:10], "labels": labels[:10].tolist()})
    await ok(api, "PUT", "/v1/models/late", SCCE | {"estimate": {"losses": [0]}})
    await ok(api, "POST", "/v1/models/late/labels", {"ids": ids[10:], "labels": labels[10:].tolist()})
    key = ("late", LOSS)
    found = await metrics_when(api, lambda f: f.get("loss_service_estimate_cohort_pairs", {}).get(key) == 20)
    assert key not in found.get("loss_service_estimate_cohort_realized", {})
    later = reference(scce_table(z[10:]), softmax(z[10:]), np.ones(20), np.ones(20, bool))
    assert found["loss_service_estimate_cohort_expected"][key] == pytest.approx(later["mean"], rel=1e-9)


async def test_a_failed_run_is_logged_once_keeps_the_last_values_and_is_retried(
    make_app: MakeApp, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    api = await make_app(store_url=f"sqlite:///{tmp_path}/store.sqlite3", estimate_interval=3600)
    await ok(api, "PUT", "/v1/models/a", SCCE | {"estimate": {"losses": [0]}})
    found: list[list[Watched]] = []
    failures = [3]
    real = estimate_watch.estimated_models

    def failing(store: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise StoreUnavailableError("the database cannot be reached", 1, False)
        return real(store)

    class Recording:
        def set_estimates(self, watched: list[Watched]) -> None:
            found.append(list(watched))

    monkeypatch.setattr(estimate_watch, "estimated_models", failing)
    state = api.app.state
    with caplog.at_level(logging.WARNING, logger="service.api"):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                upkeep.estimate_forever,
                state.store,
                Recording(),
                0.01,
                upkeep.store_threads(state),  # type: ignore[arg-type]
                86400.0,
            )
            with anyio.fail_after(HANG):
                while not found:
                    await anyio.sleep(0.01)
            tasks.cancel_scope.cancel()
    failed = [r for r in caplog.records if "estimating the models for /metrics failed" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]
    assert failures == [0]
    assert [(w.model, w.loss, w.predictions, w.pairs, w.expected, w.realized) for w in found[0]] == [
        ("a", LOSS, 0, 0, None, None)
    ]


def watched(model: str, pairs: int, realized: float | None, low: float = 0.4, high: float = 0.6) -> Watched:
    return Watched(model, "log_loss", 10, 0.5, 0.4, 0.6, pairs, realized, 0.5, low, high)


def test_shared_labels_show_a_drifting_loss_and_no_value_that_is_not_finite() -> None:
    """Models counted as 'other' share their labels: the loss shown is the one the drift alert needs."""
    monitor = Monitor(Settings(model_allowlist=["a"]))
    rows = [watched("x", 900, 0.5), watched("y", 10, 0.9), watched("z", 5000, 0.45, low=math.nan, high=math.inf)]
    monitor.set_estimates(rows)
    found = scraped(monitor.exposition()[0].decode())
    key = ("other", "log_loss")
    assert found["loss_service_estimate_cohort_realized"] == {key: 0.9}
    assert found["loss_service_estimate_cohort_pairs"] == {key: 10}
    monitor.set_estimates(rows[2:])
    found = scraped(monitor.exposition()[0].decode())
    assert found["loss_service_estimate_cohort_pairs"] == {key: 5000}
    assert key not in found.get("loss_service_estimate_cohort_low", {})
    assert key not in found.get("loss_service_estimate_cohort_high", {})
    monitor.set_estimates([])
    assert scraped(monitor.exposition()[0].decode()) == {}


def test_a_scoped_scrape_shows_only_the_models_it_may_read() -> None:
    monitor = Monitor(Settings())
    monitor.set_estimates([watched("a", 5, 0.5), watched("b", 5, 0.5)])
    found = scraped(monitor.exposition(lambda model: model == "b")[0].decode())
    assert set(found["loss_service_estimate_cohort_realized"]) == {("b", "log_loss")}


def test_with_several_workers_each_shows_its_own_last_run(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monitor = Monitor(Settings())
    monitor.set_estimates([watched("a", 5, 0.5)])
    assert scraped(monitor.exposition()[0].decode())["loss_service_estimate_cohort_pairs"] == {("a", "log_loss"): 5}
    monitor.set_estimates([])
    assert scraped(monitor.exposition()[0].decode()) == {}


# -- the dashboard's estimate panels, evaluated by promtool on known series --------------------------

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "loss-service.json"


def test_promtool_computes_the_estimate_panels_from_two_workers_series(tmp_path: Path) -> None:
    """Each target of the two panels, `$model` substituted as Grafana does, over the series of two
    workers that report the same run (one alert per loss, one line per loss): the values chosen here."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus); .ci/run installs it")
    panels = [
        p
        for p in json.loads(DASHBOARD.read_text())["panels"]
        if any(n in json.dumps(p.get("targets", [])) for n in ("loss_service_expected_loss", "loss_service_estimate"))
    ]
    chosen = {
        "loss_service_expected_loss": 0.5,
        "loss_service_expected_loss_low": 0.4,
        "loss_service_expected_loss_high": 0.6,
        "loss_service_estimate_cohort_realized": 0.71,
        "loss_service_estimate_cohort_expected": 0.52,
        "loss_service_estimate_cohort_low": 0.45,
        "loss_service_estimate_cohort_high": 0.59,
    }
    series = [
        {"series": f'{name}{{instance="{worker}", model="{model}", loss="log_loss"}}', "values": f"{value}x30"}
        for name, value in chosen.items()
        for worker in ("a:8000", "b:8000")
        for model in ("fraud", "churn")
    ]
    cases = []
    expressions = [(target["expr"], target["legendFormat"]) for panel in panels for target in panel["targets"]]
    assert len(expressions) == len(chosen)
    for expr, _ in expressions:
        (name,) = {n for n in chosen if f"{n}{{" in expr}
        cases.append(
            {
                "expr": f"round(1e6 * ({expr.replace('$model', 'fraud')}))",
                "eval_time": "10m",
                "exp_samples": [{"labels": '{model="fraud", loss="log_loss"}', "value": round(1e6 * chosen[name])}],
            }
        )
    test_file = tmp_path / "panels.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": cases}],
            }
        )
    )
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
