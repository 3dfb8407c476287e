"""Live segments in /metrics: the joined pairs' per-sample losses by each declared segment key's
value, at most LOSS_SERVICE_MAX_SEGMENT_VALUES values per key and model (later ones as 'other',
counted), on SQLite and PostgreSQL, scoped per metrics key and merged across workers.

Every expected number is a naive float64 computation of the squared and absolute errors of the
pairs the test sent, grouped by the values it chose; never the service's own numbers."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.config import Settings
from service.server.monitoring import Monitor
from tests.api.test_history import Client, served  # noqa: F401  (the fixture: SQLite and PostgreSQL)
from tests.apps import app_client
from tests.monitoring.test_metrics_scoping import auth, keyed_settings, scrape
from tests.monitoring.test_monitoring import samples, value
from tests.servers import served as serve

CONFIG = {"losses": [{"loss": "mse"}, {"loss": "mae"}], "convention": "torch", "segments": ["country", "device"]}


def cohort(n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "ids": [f"{seed}-{i}" for i in range(n)],
        "predictions": rng.normal(size=(n, 2)),
        "labels": rng.normal(size=(n, 2)),
        "country": [["BR", "US", None, "DE"][i % 4] for i in range(n)],
        "device": [["ios", "android"][i % 2] if i % 5 else None for i in range(n)],
    }


def naive(rows: list[dict[str, Any]], key: str) -> dict[tuple[str, str], tuple[float, int]]:
    """{(loss, value label): (sum, count)} of the per-sample (here per-element) errors."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for c in rows:
        for i, segment in enumerate(c[key]):
            error = np.asarray(c["predictions"][i], dtype=np.float64) - np.asarray(c["labels"][i], dtype=np.float64)
            label = "null" if segment is None else segment
            out[("mean_squared_error", label)] += list(error**2)
            out[("mean_absolute_error", label)] += list(np.abs(error))
    return {k: (float(np.sum(v)), len(v)) for k, v in out.items()}


def segment_series(scrape: dict[Any, float], model: str, key: str) -> dict[tuple[str, str], tuple[float, int]]:
    found: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for (name, labels), number in scrape.items():
        labelled = dict(labels)
        if labelled.get("model") != model or labelled.get("segment_key") != key:
            continue
        if name == "loss_service_segment_loss_sum":
            found[(labelled["loss"], labelled["segment_value"])][0] = number
        elif name == "loss_service_segment_loss_count":
            found[(labelled["loss"], labelled["segment_value"])][1] = int(number)
    return {k: (v[0], int(v[1])) for k, v in found.items()}


def assert_matches(
    got: dict[tuple[str, str], tuple[float, int]], want: dict[tuple[str, str], tuple[float, int]]
) -> None:
    assert set(got) == set(want)
    for k, (total, count) in want.items():
        assert got[k][1] == count, k
        assert got[k][0] == pytest.approx(total, rel=1e-9, abs=1e-12), k


def test_each_values_series_holds_its_joined_pairs_losses(served: Client) -> None:  # noqa: F811
    served.ok("PUT", "/v1/models/shop", json=CONFIG)
    first, second = cohort(24, 1), cohort(16, 2)
    # The first cohort's predictions wait for their labels (segments read back from the store);
    # the second's labels wait for their predictions (segments from the request that joins).
    for c, order in ((first, ("predictions", "labels")), (second, ("labels", "predictions"))):
        for side in order:
            body: dict[str, Any] = {"ids": c["ids"], side: c[side].tolist()}
            if side == "predictions":
                body["segments"] = {"country": c["country"], "device": c["device"]}
            served.ok("POST", f"/v1/models/shop/{side}", json=body)
    scraped = samples(served.request("GET", "/metrics").text)
    for key in ("country", "device"):
        got = segment_series(scraped, "shop", key)
        assert_matches(got, naive([first, second], key))
        # Every pair is in one value's series of each key: they add up to the model's own series.
        for loss in ("mean_squared_error", "mean_absolute_error"):
            model_sum = value(scraped, "loss_service_sample_loss_sum", model="shop", loss=loss)
            assert sum(total for (name, _), (total, _) in got.items() if name == loss) == pytest.approx(model_sum)
    assert not any(name == "loss_service_segment_value_overflow_total" for name, _ in scraped)


def test_a_model_without_segment_keys_has_no_segment_series(served: Client) -> None:  # noqa: F811
    served.ok("PUT", "/v1/models/plain", json={"losses": [{"loss": "mse"}]})
    served.ok("POST", "/v1/models/plain/predictions", json={"ids": [1, 2], "predictions": [[0.0], [1.0]]})
    served.ok("POST", "/v1/models/plain/labels", json={"ids": [1, 2], "labels": [[1.0], [1.0]]})
    scraped = samples(served.request("GET", "/metrics").text)
    assert value(scraped, "loss_service_sample_loss_count", model="plain", loss="mean_squared_error") == 2
    assert not [labels for name, labels in scraped if name.startswith("loss_service_segment_")]


@pytest.mark.anyio
async def test_values_past_the_limit_are_other_and_counted_per_model_and_key(tmp_path: Path) -> None:
    settings = Settings(store_url=f"sqlite:///{tmp_path}/s.sqlite3", max_segment_values=2)
    config = {"losses": [{"loss": "mae"}], "segments": ["country"]}
    requests = [  # (model, values): A and B take the two labels; C, D and E come later
        ("m1", ["A", "B", "C", None, "A", "D"]),
        ("m1", ["C", "E", "B", "other"]),
        ("m2", ["C", "E", "A"]),  # another model has labels of its own
    ]
    async with app_client(settings) as api:
        for model in ("m1", "m2"):
            assert (await api.put(f"/v1/models/{model}", json=config)).status_code == 200
        expected: dict[tuple[str, str], float] = defaultdict(float)
        overflowed: dict[str, int] = defaultdict(int)
        labelled: dict[str, list[str]] = defaultdict(list)
        for r, (model, values) in enumerate(requests):
            ids = [f"{r}-{i}" for i in range(len(values))]
            errors = [float(i + 1) for i in range(len(values))]
            body = {"ids": ids, "predictions": [[0.0]] * len(ids), "segments": {"country": values}}
            assert (await api.post(f"/v1/models/{model}/predictions", json=body)).status_code == 200
            labels = {"ids": ids, "labels": [[e] for e in errors]}
            assert (await api.post(f"/v1/models/{model}/labels", json=labels)).status_code == 200
            for segment, error in zip(values, errors, strict=True):
                if segment is None:
                    label = "null"
                elif segment in labelled[model] or len(labelled[model]) < 2:
                    labelled[model] += [] if segment in labelled[model] else [segment]
                    label = segment
                else:
                    label, overflowed[model] = "other", overflowed[model] + 1
                expected[(model, label)] += error
        scraped = samples((await api.get("/metrics")).text)
    assert labelled == {"m1": ["A", "B"], "m2": ["C", "E"]}
    got = {
        (dict(labels)["model"], dict(labels)["segment_value"]): number
        for (name, labels), number in scraped.items()
        if name == "loss_service_segment_loss_sum"
    }
    assert got == pytest.approx(dict(expected))
    assert ("m1", "other") in got
    assert ("m2", "other") in got
    for model, count in overflowed.items():
        assert value(scraped, "loss_service_segment_value_overflow_total", model=model, segment_key="country") == count
    assert overflowed == {"m1": 5, "m2": 1}  # C, D, C, E, and the literal "other", past the limit too


def test_each_segment_key_has_its_own_values_up_to_the_limit() -> None:
    """LOSS_SERVICE_MAX_SEGMENT_VALUES bounds each key's values on its own: one value of country
    leaves device its one value too; none counts as 'other'."""
    monitor = Monitor(Settings(max_segment_values=1))
    losses = [("mean_squared_error", np.array([[1.0, 2.0], [3.0, 4.0]]))]
    pairs = [{"country": "BR", "device": "ios"}, {"country": "BR", "device": "ios"}]
    monitor.observe_segments("m", ["country", "device"], pairs, losses)
    scraped = samples(monitor.exposition()[0].decode())
    for key, label in (("country", "BR"), ("device", "ios")):
        labels = {"model": "m", "loss": "mean_squared_error", "segment_key": key, "segment_value": label}
        assert value(scraped, "loss_service_segment_loss_sum", **labels) == 1 + 2 + 3 + 4
        assert value(scraped, "loss_service_segment_loss_count", **labels) == 4
    assert not [name for name, _ in scraped if name == "loss_service_segment_value_overflow_total"]


def test_a_write_that_joined_no_pairs_records_no_segment() -> None:
    monitor = Monitor(Settings())
    monitor.observe_segments("m", ["country"], [], [("mean_squared_error", np.empty((0, 2)))])
    scraped = samples(monitor.exposition()[0].decode())
    assert not [name for name, _ in scraped if name.startswith("loss_service_segment")]


def test_a_models_segment_series_and_values_go_with_its_label() -> None:
    monitor = Monitor(Settings(max_models=1, model_label_idle=0, max_segment_values=1))
    losses = [("mean_squared_error", np.array([[1.0, 2.0], [3.0, 4.0]]))]
    monitor.observe_segments("a", ["k"], [{"k": "x"}, {"k": "y"}], losses)
    first = samples(monitor.exposition()[0].decode())
    assert (
        value(
            first,
            "loss_service_segment_loss_sum",
            model="a",
            loss="mean_squared_error",
            segment_key="k",
            segment_value="x",
        )
        == 3
    )
    assert value(first, "loss_service_segment_value_overflow_total", model="a", segment_key="k") == 1
    # b takes a's label (idle 0 s): a's series are removed and b's first value has a label of its own.
    monitor.observe_segments("b", ["k"], [{"k": "y"}, {}], losses)
    second = samples(monitor.exposition()[0].decode())
    models = {dict(labels).get("model") for name, labels in second if name.startswith("loss_service_segment")}
    assert models == {"b"}
    assert (
        value(
            second,
            "loss_service_segment_loss_sum",
            model="b",
            loss="mean_squared_error",
            segment_key="k",
            segment_value="y",
        )
        == 3
    )
    assert (
        value(
            second,
            "loss_service_segment_loss_sum",
            model="b",
            loss="mean_squared_error",
            segment_key="k",
            segment_value="null",
        )
        == 7
    )
    # a comes back and takes the label again: its values start afresh (y was 'other' for it before).
    monitor.observe_segments("a", ["k"], [{"k": "y"}, {"k": "x"}], losses)
    third = samples(monitor.exposition()[0].decode())
    assert (
        value(
            third,
            "loss_service_segment_loss_sum",
            model="a",
            loss="mean_squared_error",
            segment_key="k",
            segment_value="y",
        )
        == 3
    )
    assert ("loss_service_segment_value_overflow_total", (("model", "a"), ("segment_key", "k"))) in third


@pytest.mark.anyio
async def test_a_metrics_key_restricted_to_models_sees_only_their_segment_series(tmp_path: Path) -> None:
    config = {"losses": [{"loss": "mse"}], "segments": ["country"]}
    async with app_client(keyed_settings(tmp_path)) as api:
        for team, model in (("fraud-team", "fraud-seg"), ("churn-team", "churn-seg")):
            headers = auth(team)
            assert (await api.put(f"/v1/models/{model}", json=config, headers=headers)).status_code == 200
            body = {"ids": [1, 2], "predictions": [[0.0], [0.0]], "segments": {"country": ["BR", None]}}
            assert (await api.post(f"/v1/models/{model}/predictions", json=body, headers=headers)).status_code == 200
            labels = {"ids": [1, 2], "labels": [[1.0], [2.0]]}
            assert (await api.post(f"/v1/models/{model}/labels", json=labels, headers=headers)).status_code == 200
        everything, fraud_only = await scrape(api, "all-metrics"), await scrape(api, "fraud-metrics")

    def segment_models(scraped: dict[Any, float]) -> set[str]:
        return {dict(labels)["model"] for name, labels in scraped if name.startswith("loss_service_segment_loss")}

    assert segment_models(everything) == {"fraud-seg", "churn-seg"}
    assert segment_models(fraud_only) == {"fraud-seg"}
    labels = {"model": "fraud-seg", "loss": "mean_squared_error", "segment_key": "country", "segment_value": "BR"}
    assert value(fraud_only, "loss_service_segment_loss_sum", **labels) == 1.0


@pytest.mark.slow
def test_two_workers_segment_series_merge_to_every_pair_sent(tmp_path: Path) -> None:
    env = {"LOSS_SERVICE_METRICS_DIR": str(tmp_path / "metrics"), "LOSS_SERVICE_STORE_URL": f"sqlite:///{tmp_path}/s"}
    with serve("--workers", "2", env=env) as url:
        httpx.put(f"{url}/v1/models/shop", json=CONFIG, timeout=30).raise_for_status()
        sent = [cohort(10, seed) for seed in range(12)]

        def log(side: str, c: dict[str, Any]) -> None:
            body: dict[str, Any] = {"ids": c["ids"], side: c[side].tolist()}
            if side == "predictions":
                body["segments"] = {"country": c["country"], "device": c["device"]}
            httpx.post(f"{url}/v1/models/shop/{side}", json=body, timeout=30).raise_for_status()

        with ThreadPoolExecutor(6) as pool:  # at once, so that both workers take some
            for side in ("predictions", "labels"):
                list(pool.map(lambda c, side=side: log(side, c), sent))
        scraped = samples(httpx.get(f"{url}/metrics", timeout=30).text)
    pids = {path.stem.rsplit("_", 1)[-1] for path in (tmp_path / "metrics").glob("histogram_*.db")}
    assert len(pids) >= 2, f"one worker recorded every request: {pids}"
    for key in ("country", "device"):
        assert_matches(segment_series(scraped, "shop", key), naive(sent, key))


# -- the dashboard's segment row, evaluated by promtool on known series ------------------------------

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "loss-service.json"


def segment_panels() -> list[dict[str, Any]]:
    import json

    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [p for p in panels if any("segment_" in t["expr"] for t in p.get("targets", []))]


def test_the_segment_row_has_a_panel_per_key_and_variables_of_the_exported_labels() -> None:
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["segment_key"]["definition"].startswith("label_values(loss_service_segment_loss_count{")
    assert variables["segment_key"]["definition"].endswith(", segment_key)")
    assert 'segment_key=~"$segment_key"' in variables["segment_value"]["definition"]
    panels = segment_panels()
    assert [p["repeat"] for p in panels if "repeat" in p] == ["segment_key"]  # one mean-loss panel per key
    for panel in panels:
        for target in panel["targets"]:
            assert 'model=~"$model"' in target["expr"]
            assert 'segment_key=~"$segment_key"' in target["expr"]


def test_promtool_computes_the_segment_panels_from_known_series(tmp_path: Path) -> None:
    """The row's mean-loss and ratio panels, variables substituted as Grafana does, over series whose
    means the test chose: BR 0.5, US 0.1, null 0.25 (by rates per minute of sums and counts)."""
    import shutil
    import subprocess

    import yaml

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus); .ci/run installs it")
    per_minute = {"BR": (10, 5.0), "US": (30, 3.0), "null": (8, 2.0)}  # count, sum
    series = []
    for name, (count, total) in per_minute.items():
        labels = f'model="shop", loss="mse", segment_key="country", segment_value="{name}"'
        series.append({"series": f"loss_service_segment_loss_count{{{labels}}}", "values": f"0+{count}x180"})
        series.append({"series": f"loss_service_segment_loss_sum{{{labels}}}", "values": f"0+{total}x180"})
    variables = {"$model": ".*", "$segment_key": "country", "$segment_value": ".*", "$__rate_interval": "5m"}
    mean_panel, ratio_panel = (p["targets"][0]["expr"] for p in segment_panels()[:2])
    for name, substituted in variables.items():
        mean_panel, ratio_panel = mean_panel.replace(name, substituted), ratio_panel.replace(name, substituted)
    key_mean = sum(t for _, t in per_minute.values()) / sum(c for c, _ in per_minute.values())
    cases = []
    for expr, is_ratio in ((mean_panel, False), (ratio_panel, True)):
        cases.append(
            {
                "expr": f"round(1e6 * ({expr}))",  # in millionths: `sum` may add in any order
                "eval_time": "150m",
                "exp_samples": [
                    {
                        "labels": f'{{model="shop", loss="mse", segment_key="country", segment_value="{name}"}}',
                        "value": round(1e6 * (total / count / (key_mean if is_ratio else 1.0))),
                    }
                    for name, (count, total) in per_minute.items()
                ],
            }
        )
    test_file = tmp_path / "panels.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": cases}],
            }
        )
    )
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_segment_histograms_count_each_value_as_prometheus_observe_does() -> None:
    """observe_segments fills the buckets and sums in one pass for every value: the same as
    prometheus-client's own observe(), value by value, into a histogram per value."""
    from prometheus_client import CollectorRegistry, Histogram

    settings = Settings()
    monitor = Monitor(settings)
    rng = np.random.default_rng(3)
    per_sample = np.exp(rng.normal(-2, 3, size=(400, 3)))  # across every bucket, +Inf included
    per_sample[::7] = settings.loss_buckets[3]  # on a bound: the bucket whose bound equals it
    countries = [{"country": str(c)} if c != "none" else {} for c in rng.choice(["A", "B", "C", "none"], 400)]
    monitor.observe_segments("m", ["country"], countries, [("mse", per_sample)])
    scraped = samples(monitor.exposition()[0].decode())
    registry = CollectorRegistry()
    reference = Histogram("ref", "", ["segment_value"], buckets=settings.loss_buckets, registry=registry)
    for row, values in zip(per_sample, countries, strict=True):
        for number in row:
            reference.labels(values.get("country", "null")).observe(float(number))
    from prometheus_client import generate_latest

    expected = samples(generate_latest(registry).decode())
    compared = 0
    for (name, labels), number in expected.items():
        if name.startswith("ref_") and not name.endswith("_created"):
            ours = dict(labels) | {"model": "m", "loss": "mse", "segment_key": "country"}
            got = scraped[(name.replace("ref_", "loss_service_segment_loss_"), tuple(sorted(ours.items())))]
            assert got == pytest.approx(number, rel=1e-12), (name, labels)
            compared += 1
    assert compared == 4 * (len(settings.loss_buckets) + 1 + 2)
