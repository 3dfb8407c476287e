"""Monitoring against real processes: two workers, the dashboard's metric names, a real Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.monitoring.test_monitoring import samples, value
from tests.servers import HANG, free_port, served, serving, wait_for

pytestmark = pytest.mark.slow
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "loss-service.json"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules" / "loss-service.yml"
METRIC = re.compile(r"\b(loss_service_[a-z_]+)")

FRAUD = {
    "loss": "mse",
    "model": "fraud-v3",
    "predictions": [[0.0]] * 4,
    "labels": [[1.0], [2.0], [3.0], [4.0]],
}  # mean 7.5
CHURN = {"loss": "mae", "model": "churn-v1", "predictions": [[0.0]] * 2, "labels": [[1.0], [3.0]]}  # mean 2


def send(url: str, body: dict[str, Any], times: int) -> None:
    def one(_: int) -> int:
        return httpx.post(f"{url}/v1/loss", json=body, timeout=HANG).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(times))) == {200}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    metrics_dir = tmp_path_factory.mktemp("metrics")
    env = {
        "LOSS_SERVICE_METRICS_DIR": str(metrics_dir),
        "LOSS_SERVICE_SWEEP_INTERVAL": "0.2",
        "LOSS_SERVICE_COMPARE_INTERVAL": "0.2",
        "LOSS_SERVICE_ESTIMATE_INTERVAL": "0.2",
        "LOSS_SERVICE_MAX_SEGMENT_VALUES": "1",
    }
    with served("--workers", "2", env=env) as url:
        yield url, metrics_dir


def test_two_workers_report_exactly_the_samples_sent(two_workers: tuple[str, Path]) -> None:
    url, metrics_dir = two_workers
    send(url, {**FRAUD, "model": "count-check"}, 200)
    scrape = samples(httpx.get(f"{url}/metrics", timeout=HANG).text)
    labels = {"model": "count-check", "loss": "mean_squared_error"}
    assert value(scrape, "loss_service_samples_total", **labels) == 800
    assert value(scrape, "loss_service_batches_total", **labels) == 200
    assert value(scrape, "loss_service_sample_loss_sum", **labels) == 200 * 30.0
    worker_pids = {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("*.db")}
    assert len(worker_pids) >= 2, f"expected files from two worker processes, found {sorted(worker_pids)}"


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def use_the_delayed_labels_store(url: str) -> None:
    """Joins, a label delay, pending rows and an expired one, a challenger compared with the
    model, and a model whose losses are estimated, so that their series exist."""
    config = {"losses": [{"loss": "mse"}], "retention_seconds": 0.5, "segments": ["country"]}
    httpx.put(f"{url}/v1/models/delayed", json=config, timeout=HANG).raise_for_status()
    challenger = {"losses": [{"loss": "mse"}], "labels_from": "delayed", "compare_to": ["delayed"]}
    httpx.put(f"{url}/v1/models/delayed-b", json=challenger, timeout=HANG).raise_for_status()
    # One segment value per model (LOSS_SERVICE_MAX_SEGMENT_VALUES=1): US is counted as other.
    predictions = {"ids": [1, 2, 3], "predictions": [[0.0], [1.0], [2.0]], "segments": {"country": ["BR", "US", None]}}
    httpx.post(f"{url}/v1/models/delayed/predictions", json=predictions, timeout=HANG)
    labels = {"ids": [1, 2], "labels": [[1.0], [1.0]]}
    httpx.post(f"{url}/v1/models/delayed/labels", json=labels, timeout=HANG).raise_for_status()
    estimated = {"losses": [{"loss": "binary_crossentropy"}], "estimate": {}}
    httpx.put(f"{url}/v1/models/estimated", json=estimated, timeout=HANG).raise_for_status()
    predictions = {"ids": [1, 2], "predictions": [[0.2], [0.7]]}
    httpx.post(f"{url}/v1/models/estimated/predictions", json=predictions, timeout=HANG).raise_for_status()
    labels = {"ids": [1], "labels": [[0.0]]}
    httpx.post(f"{url}/v1/models/estimated/labels", json=labels, timeout=HANG).raise_for_status()
    deadline = time.monotonic() + HANG
    while (
        any(series not in httpx.get(f"{url}/metrics", timeout=HANG).text for series in SERIES_AWAITED)
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)


# Series that appear after a sweep, a comparison or an estimate run (every 0.2 s here), not with a request.
SERIES_AWAITED = (
    "loss_service_expired_total{",
    "loss_service_comparison_verdict{",
    "loss_service_estimate_cohort_realized{",
    "loss_service_expected_loss{",
)


def test_every_metric_the_dashboard_and_alerts_use_is_exported(two_workers: tuple[str, Path]) -> None:
    url, _ = two_workers
    send(url, FRAUD, 1)
    use_the_delayed_labels_store(url)
    exported = {name for name, _ in samples(httpx.get(f"{url}/metrics", timeout=HANG).text)}
    rules = yaml.safe_load(RULES.read_text())
    rule_expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {m for expr in dashboard_expressions() + rule_expressions for m in METRIC.findall(expr)}
    assert used, "no metric names found in the dashboard"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_dashboard_has_datasource_and_model_variables() -> None:
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "model" in variables["model"]["definition"]
    assert all('model=~"$model"' in e for e in dashboard_expressions() if "sample_loss" in e or "samples_total" in e)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus); .ci/run installs it")
    return path


def test_promtool_accepts_config_and_rules_and_the_rule_unit_tests_pass(promtool: str) -> None:
    for args in (
        ["check", "config", str(PROMETHEUS_CONFIG)],
        ["check", "rules", str(RULES)],
        ["test", "rules", str(RULES.with_suffix(".test.yml"))],
    ):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=HANG).json()
    assert response["status"] == "success", response
    return list(response["data"]["result"])


def wait_for_scraped_count(prometheus: str, expected: float, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = query(prometheus, 'sum(loss_service_samples_total{model=~"fraud-v3|churn-v1"})')
        if result and float(result[0]["value"][1]) == expected:
            return
        time.sleep(0.5)
    raise TimeoutError(f"Prometheus never scraped a total of {expected} samples")


def test_prometheus_computes_the_dashboards_mean_loss_per_model(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus); .ci/run installs it")
    with served() as url:
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        # Only the target's address changes (and the rule file's path, now that the config moves).
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [url.removeprefix("http://")]
        config["rule_files"] = [str(RULES)]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        prometheus = f"http://127.0.0.1:{port}"
        try:
            wait_for(f"{prometheus}/-/ready", process)
            send(url, FRAUD, 5)
            send(url, CHURN, 5)
            wait_for_scraped_count(prometheus, 5 * 4 + 5 * 2)
            send(url, FRAUD, 10)
            send(url, CHURN, 10)
            wait_for_scraped_count(prometheus, 15 * 4 + 15 * 2)
            mean_panel = dashboard_expressions()[0]
            expr = mean_panel.replace("$model", "fraud-v3|churn-v1").replace("$__rate_interval", "5m")
            means = {r["metric"]["model"]: float(r["value"][1]) for r in query(prometheus, expr)}
            assert means == {"fraud-v3": pytest.approx(7.5, rel=1e-9), "churn-v1": pytest.approx(2.0, rel=1e-9)}
            rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=HANG).json()["data"]["groups"]
            in_file = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
            assert sum(len(g["rules"]) for g in rules) == in_file == 18, "Prometheus loaded every rule of the file"
        finally:
            process.terminate()
            process.wait(timeout=HANG)


def test_two_servers_on_one_host_keep_their_own_metrics() -> None:
    """Each multi-worker server's default metrics directory is its own: starting another does not wipe it."""

    def own_directory(process: subprocess.Popen[bytes]) -> Path:
        return Path(tempfile.gettempdir()) / f"loss-service-metrics-{process.pid}"

    with serving("--workers", "2") as (first, first_process):
        send(first, {**FRAUD, "model": "host-a"}, 3)
        with serving("--workers", "2") as (second, second_process):
            send(second, {**FRAUD, "model": "host-b"}, 1)
            scrape_second = samples(httpx.get(f"{second}/metrics", timeout=HANG).text)
            # Only these two servers' directories are looked at: others on the machine are not ours.
            directories = {own_directory(first_process), own_directory(second_process)}
            assert all(directory.is_dir() for directory in directories)
        scrape_first = samples(httpx.get(f"{first}/metrics", timeout=HANG).text)
        labels = {"loss": "mean_squared_error"}
        assert value(scrape_first, "loss_service_batches_total", model="host-a", **labels) == 3
        assert ("loss_service_batches_total", (("loss", "mean_squared_error"), ("model", "host-b"))) not in scrape_first
        assert value(scrape_second, "loss_service_batches_total", model="host-b", **labels) == 1
    assert not any(directory.exists() for directory in directories), "left behind"


def test_one_worker_keeps_its_metrics_in_memory(tmp_path: Path) -> None:
    """One worker shares nothing, so it writes no metrics files, even when a directory is
    configured or PROMETHEUS_MULTIPROC_DIR is inherited, and still counts every batch."""
    configured, inherited = tmp_path / "configured", tmp_path / "inherited"
    inherited.mkdir()
    before = set(Path(tempfile.gettempdir()).glob("loss-service-metrics-*"))
    env = {"LOSS_SERVICE_METRICS_DIR": str(configured), "PROMETHEUS_MULTIPROC_DIR": str(inherited)}
    with served(env=env) as url:
        send(url, FRAUD, 5)
        scrape = samples(httpx.get(f"{url}/metrics", timeout=HANG).text)
        assert not configured.exists()
        assert not any(inherited.iterdir())
        assert set(Path(tempfile.gettempdir()).glob("loss-service-metrics-*")) == before
    assert value(scrape, "loss_service_batches_total", model="fraud-v3", loss="mean_squared_error") == 5
    assert value(scrape, "loss_service_samples_total", model="fraud-v3", loss="mean_squared_error") == 20


def test_liveness_is_not_held_up_while_a_large_metrics_page_is_scraped_in_a_loop() -> None:
    """4,500 series of per-sample histograms (~10 MB of exposition, ~1 s to render): four scrapers
    in a loop for 5 s, and /livez, asked every 50 ms, answers each time in a fraction of one
    scrape's time. The page renders in a worker thread, once for all the scrapes that arrive while
    it renders; a render on the event loop would hold /livez for as long as a scrape takes. Two
    durations of the same run are compared, so the test holds on a slow machine as on a fast one."""
    with served(env={"LOSS_SERVICE_MAX_MODELS": "3000"}) as url:
        losses = [{"loss": "mse"}, {"loss": "mae"}, {"loss": "huber"}]
        with httpx.Client(base_url=url, timeout=HANG) as client:
            for number in range(1500):
                body = {"predictions": [[0.5]], "labels": [[1.0]], "losses": losses, "model": f"m{number}"}
                assert client.post("/v1/evaluate", json=body).status_code == 200
            assert len(client.get("/metrics").content) > 5_000_000
        stop = time.monotonic() + 5.0
        scrapes: list[float] = []

        def scrape() -> None:
            with httpx.Client(base_url=url, timeout=HANG) as scraper:
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    assert scraper.get("/metrics").status_code == 200
                    scrapes.append(time.perf_counter() - started)

        with ThreadPoolExecutor(4) as pool:
            scrapers = [pool.submit(scrape) for _ in range(4)]
            time.sleep(0.5)  # the scrapers are under way
            latencies = []
            with httpx.Client(base_url=url, timeout=HANG) as probe:
                while time.monotonic() < stop - 0.5:
                    started = time.perf_counter()
                    assert probe.get("/livez").status_code == 200
                    latencies.append(time.perf_counter() - started)
                    time.sleep(0.05)
            for scraper in scrapers:
                scraper.result()
    assert len(scrapes) >= 4
    typical_scrape = sorted(scrapes)[len(scrapes) // 2]
    assert max(latencies) < typical_scrape / 2, (
        f"slowest /livez {max(latencies) * 1e3:.0f} ms of {len(latencies)}; a scrape {typical_scrape * 1e3:.0f} ms"
    )
