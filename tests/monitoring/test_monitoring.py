"""/metrics through the ASGI app: request health, per-model loss distributions, the metric declarations."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from service.config import DEFAULT_LOSS_BUCKETS, Settings
from service.server.app import create_app
from service.server.monitoring import Monitor, exposition
from service.server.monitoring.series import bounds_array, observe_grouped, observe_many
from tests.servers import HANG

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape[(name, tuple(sorted(labels.items())))]


MSE = {"loss": "mse", "predictions": [[0.0], [0.0], [0.0], [0.0]], "labels": [[1.0], [2.0], [3.0], [4.0]]}


async def test_batches_show_up_per_model_and_loss(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await client.post("/v1/loss", json={**MSE, "model": "fraud-v3"})).status_code == 200
    await client.post("/v1/loss", json={"loss": "mae", "predictions": [[0.0]], "labels": [[0.5]], "model": "churn"})
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    scrape = samples(response.text)
    labels = {"model": "fraud-v3", "loss": "mean_squared_error"}
    assert value(scrape, "loss_service_samples_total", **labels) == 12
    assert value(scrape, "loss_service_batches_total", **labels) == 3
    assert value(scrape, "loss_service_sample_loss_count", **labels) == 12
    assert value(scrape, "loss_service_sample_loss_sum", **labels) == 3 * (1 + 4 + 9 + 16)
    assert value(scrape, "loss_service_last_batch_mean_loss", **labels) == 7.5
    # losses 1, 4, 9, 16 fall at or under the bounds 1, 5, 10, 25
    assert value(scrape, "loss_service_sample_loss_bucket", le="1.0", **labels) == 3
    assert value(scrape, "loss_service_sample_loss_bucket", le="5.0", **labels) == 6
    assert value(scrape, "loss_service_sample_loss_bucket", le="10.0", **labels) == 9
    assert value(scrape, "loss_service_sample_loss_bucket", le="25.0", **labels) == 12
    assert value(scrape, "loss_service_sample_loss_sum", model="churn", loss="mean_absolute_error") == 0.5


async def test_requests_are_labelled_by_route_template_and_status_class(client: httpx.AsyncClient) -> None:
    await client.get("/v1/losses/mse")
    await client.get("/v1/losses/bce")
    await client.get("/no/such/path")
    await client.post("/v1/loss", json={"loss": "nope"})
    scrape = samples((await client.get("/metrics")).text)
    assert (
        value(scrape, "loss_service_http_requests_total", route="/v1/losses/{name}", method="GET", status_class="2xx")
        == 2
    )
    assert value(scrape, "loss_service_http_requests_total", route="unmatched", method="GET", status_class="4xx") == 1
    assert value(scrape, "loss_service_http_requests_total", route="/v1/loss", method="POST", status_class="4xx") == 1
    assert value(scrape, "loss_service_http_request_duration_seconds_count", route="/v1/loss", method="POST") == 1
    assert value(scrape, "loss_service_http_request_body_bytes_sum", route="/v1/loss") == len(b'{"loss":"nope"}')
    assert value(scrape, "loss_service_http_requests_rejected_total", reason="invalid") == 1
    assert value(scrape, "loss_service_http_requests_rejected_total", reason="overloaded") == 0


async def test_non_finite_inputs_are_counted_by_field(client: httpx.AsyncClient) -> None:
    raw = b'{"loss": "mse", "predictions": [[NaN]], "labels": [[Infinity]]}'
    response = await client.post("/v1/loss", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    scrape = samples((await client.get("/metrics")).text)
    assert value(scrape, "loss_service_nonfinite_inputs_total", field="predictions") == 1
    assert value(scrape, "loss_service_nonfinite_inputs_total", field="labels") == 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bulk_observe_equals_observe_one_by_one(dtype: str) -> None:
    """float32 values (a float32 request's per_sample) are summed as observe sums them, in float64."""
    rng = np.random.default_rng(3)
    values = np.concatenate([10 ** rng.uniform(-6, 3, 5000), np.array(DEFAULT_LOSS_BUCKETS), [0.0, 1e9]])
    values = values.astype(dtype)
    one, bulk = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("h", "h", buckets=DEFAULT_LOSS_BUCKETS, registry=one)
    by_bulk = Histogram("h", "h", buckets=DEFAULT_LOSS_BUCKETS, registry=bulk)
    for v in values:
        by_one.observe(float(v))
    observe_many(by_bulk, values)
    expected = {
        s.name + str(s.labels): s.value for s in next(iter(one.collect())).samples if not s.name.endswith("_created")
    }
    actual = {
        s.name + str(s.labels): s.value for s in next(iter(bulk.collect())).samples if not s.name.endswith("_created")
    }
    assert actual.keys() == expected.keys()
    for key, v in expected.items():
        assert actual[key] == pytest.approx(v, rel=1e-12), key


def test_bulk_observe_refuses_bounds_that_are_not_the_histograms() -> None:
    """The bounds a caller keeps (`BatchSeries.bounds`) must be its histogram's: another's, with
    more buckets, would drop the values past the histogram's count of buckets. Refused, not miscounted."""
    registry = CollectorRegistry()
    histogram = Histogram("h", "h", buckets=(1.0, 2.0), registry=registry)
    other = bounds_array((1.0, 2.0, 5.0, 10.0, float("inf")))
    with pytest.raises(ValueError, match="zip"):
        observe_many(histogram, np.array([0.5, 3.0, 7.0]), other)


@pytest.mark.parametrize("fails", [False, True], ids=["renders", "fails"])
def test_a_scrape_arriving_while_one_renders_shares_its_rendering_or_its_failure(
    fails: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scrape that arrives while another of its scope renders waits for that rendering and
    gets it, or the exception it raised; the next scrape renders afresh."""
    rendering, joined = threading.Event(), threading.Event()

    class Flight(concurrent.futures.Future):  # type: ignore[type-arg]
        def result(self, timeout: float | None = None) -> Any:
            joined.set()  # the follower waits for the leader's rendering
            return super().result(timeout)

    monkeypatch.setattr(exposition.concurrent.futures, "Future", Flight)
    renderings = exposition.SharedRenderings()
    followed: list[Any] = []

    def follower_render() -> tuple[bytes, str]:
        raise AssertionError("a scrape that arrives during a rendering does not render")

    def follower() -> None:
        rendering.wait(HANG)
        try:
            followed.append(renderings.shared("key", follower_render))
        except RuntimeError as exc:
            followed.append(str(exc))

    def leader_render() -> tuple[bytes, str]:
        rendering.set()
        joined.wait(HANG)
        if fails:
            raise RuntimeError("the rendering failed")
        return b"leader's", "text/plain"

    thread = threading.Thread(target=follower)
    thread.start()
    try:
        if fails:
            with pytest.raises(RuntimeError, match="the rendering failed"):
                renderings.shared("key", leader_render)
        else:
            assert renderings.shared("key", leader_render) == (b"leader's", "text/plain")
    finally:
        rendering.set()
        thread.join(HANG)
    assert followed == (["the rendering failed"] if fails else [(b"leader's", "text/plain")])
    assert renderings.shared("key", lambda: (b"fresh", "text/plain")) == (b"fresh", "text/plain")


def exposed(registry: CollectorRegistry) -> dict[str, float]:
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for s in next(iter(registry.collect())).samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_grouped_observe_equals_observe_one_by_one_per_group(dtype: str) -> None:
    """`observe_grouped` against Histogram.observe value by value into each pair's group: three
    values a pair, some exactly on a bucket bound, and a last group no pair falls in (its series
    still exposed, all zero)."""
    rng = np.random.default_rng(4)
    bounds = np.array(DEFAULT_LOSS_BUCKETS)
    values = np.concatenate([[0.0, 1e9], bounds, bounds, 10 ** rng.uniform(-6, 3, 62)]).reshape(-1, 3).astype(dtype)
    rows = rng.integers(0, 3, len(values))  # groups 0-2 of 4
    one, grouped = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("h", "h", ["g"], buckets=DEFAULT_LOSS_BUCKETS, registry=one)
    by_group = Histogram("h", "h", ["g"], buckets=DEFAULT_LOSS_BUCKETS, registry=grouped)
    children = [by_group.labels(str(g)) for g in range(4)]
    by_one.labels("3")
    for row, g in zip(values, rows, strict=True):
        for v in row:
            by_one.labels(str(g)).observe(float(v))
    limits = bounds_array(tuple(children[0]._upper_bounds))
    observe_grouped(children, rows, values, np.searchsorted(limits, values, side="left"), limits.size)
    expected, actual = exposed(one), exposed(grouped)
    assert actual.keys() == expected.keys()
    for key, v in expected.items():
        assert actual[key] == pytest.approx(v, rel=1e-12), key


def test_grouped_observe_refuses_a_bucket_count_that_is_not_the_histograms() -> None:
    """A `size` one short (the bounds without +Inf) would fold group 0's +Inf bucket into group
    1's first: refused, not miscounted."""
    registry = CollectorRegistry()
    histogram = Histogram("h", "h", ["g"], buckets=(1.0, 2.0), registry=registry)
    children = [histogram.labels("a"), histogram.labels("b")]
    values = np.array([[1e9], [0.5]])
    buckets = np.searchsorted(bounds_array((1.0, 2.0, float("inf"))), values, side="left")
    with pytest.raises(ValueError, match="zip"):
        observe_grouped(children, np.array([0, 1]), values, buckets, 2)


def only_otel_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str | None) -> None:
    """The OTLP export configured by `endpoint` alone (None: off), whatever the environment holds."""
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    if endpoint is not None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)


@pytest.mark.parametrize("exported", [False, True], ids=["prometheus", "otlp-too"])
def test_recorded_requests_are_what_prometheus_clients_own_calls_count(
    monkeypatch: pytest.MonkeyPatch, exported: bool
) -> None:
    """Monitor.record_request counts into its series' values directly; the same requests counted
    with prometheus-client's `inc` and `observe` give the same samples. Where the OTLP export is
    configured, requests take another path (counted through `_count`, for the export too): the
    samples are the same, and the export's counters hold the same counts."""
    from service.server.monitoring.metrics import LATENCY_BUCKETS, Metrics

    only_otel_endpoint(monkeypatch, "http://127.0.0.1:9" if exported else None)  # never exported to here

    grpc = "/inference.GRPCInferenceService/ModelInfer"
    # (route, method, status, seconds, body bytes, key, refusal, the rejection reason counted)
    requests = [
        ("/v1/loss", "POST", 200, 0.0004, 120, None, None, None),
        ("/v1/loss", "POST", 200, LATENCY_BUCKETS[0], 100, None, None, None),  # on a bound: that bucket
        ("/v1/loss", "POST", 200, 0.0, 0, "alice", None, None),
        ("/v1/loss", "POST", 422, 0.003, 10**9, None, None, "invalid"),
        ("/v1/loss", "POST", 429, 0.002, 7, "alice", "rate_limited", "rate_limited"),
        ("/v1/loss", "POST", 503, 60.0, 10**10, None, None, "overloaded"),  # past every bound: +Inf
        ("/readyz", "GET", 503, 0.0001, 0, None, None, None),
        (grpc, "GRPC", 200, LATENCY_BUCKETS[3], 1708, None, None, None),
        (grpc, "GRPC", 200, 0.0011, 1708, None, None, None),
        (grpc, "GRPC", 401, 0.0002, 1708, None, None, "unauthorised"),
        (grpc, "GRPC", 413, 0.0002, 10**8, "bob", None, "too_large"),
    ]
    monitor = Monitor(Settings())
    assert (monitor.otlp is not None) is exported
    expected = Metrics(CollectorRegistry(), DEFAULT_LOSS_BUCKETS)
    for _ in range(2):  # the second time through, every series is found again
        for route, method, status, seconds, size, key, refusal, reason in requests:
            monitor.record_request(route, method, status, seconds, size, key, refusal)
            status_class = f"{status // 100}xx"
            expected.requests.labels(route, method, status_class).inc()
            expected.latency.labels(route, method).observe(seconds)
            expected.body_size.labels(route).observe(size)
            if key is not None:
                expected.key_requests.labels(key, status_class).inc()
            if reason is not None:
                expected.rejected.labels(reason).inc()

    def counted(metrics: Metrics) -> dict[str, float]:
        families = (metrics.requests, metrics.latency, metrics.body_size, metrics.key_requests, metrics.rejected)
        return {
            s.name + str(sorted(s.labels.items())): s.value
            for family in families
            for metric in family.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        }

    assert counted(monitor) == counted(expected)
    if monitor.otlp is not None:  # worked out by hand from the list above, each request twice
        assert dict(monitor.otlp.counts(monitor.requests)) == {
            ("/v1/loss", "POST", "2xx"): 6,
            ("/v1/loss", "POST", "4xx"): 4,
            ("/v1/loss", "POST", "5xx"): 2,
            ("/readyz", "GET", "5xx"): 2,
            (grpc, "GRPC", "2xx"): 4,
            (grpc, "GRPC", "4xx"): 4,
        }
        per_key = {("alice", "2xx"): 2, ("alice", "4xx"): 2, ("bob", "4xx"): 2}
        assert dict(monitor.otlp.counts(monitor.key_requests)) == per_key
        assert dict(monitor.otlp.counts(monitor.rejected)) == {
            ("invalid",): 2,
            ("rate_limited",): 2,
            ("overloaded",): 2,
            ("unauthorised",): 2,
            ("too_large",): 2,
        }


def test_a_sweeps_expired_rows_are_counted_by_kind_and_its_pending_rows_set() -> None:
    monitor = Monitor(Settings())
    monitor.observe_expired("fraud", (3, 0), (2, 5))
    monitor.observe_expired("fraud", (1, 4), (0, 1))
    scrape = samples(monitor.exposition()[0].decode())
    assert value(scrape, "loss_service_expired_total", model="fraud", kind="predictions") == 4
    assert value(scrape, "loss_service_expired_total", model="fraud", kind="labels") == 4
    assert value(scrape, "loss_service_pending", model="fraud", kind="predictions") == 0  # the last sweep's
    assert value(scrape, "loss_service_pending", model="fraud", kind="labels") == 1


def test_settings_read_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSS_SERVICE_LOSS_BUCKETS", "0.1, 1, 10")
    monkeypatch.setenv("LOSS_SERVICE_MODEL_ALLOWLIST", "fraud-v3,churn")
    settings = Settings()
    assert settings.loss_buckets == [0.1, 1.0, 10.0]
    assert settings.model_allowlist == ["fraud-v3", "churn"]
    monkeypatch.setenv("LOSS_SERVICE_LOSS_BUCKETS", "1, 0.5")
    with pytest.raises(ValueError, match="strictly increasing"):
        Settings()


def test_the_docs_metrics_table_is_what_the_registry_exposes() -> None:
    """Name, type and labels of every metric, as docs/monitoring.md lists them (the dashboard and
    alerts are written against those names; a renamed metric or label fails here)."""
    import re

    from prometheus_client.metrics import MetricWrapperBase

    table = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    rows = re.findall(r"^\| `(loss_service_\w+)` \| (\w+) \|([^|]*)\|", table, re.MULTILINE)
    documented = {name.removesuffix("_total"): (kind, re.findall(r"`(\w+)`", labels)) for name, kind, labels in rows}
    monitor = Monitor(Settings())
    metrics = [value for value in vars(monitor).values() if isinstance(value, MetricWrapperBase)]
    exposed = {metric._name: (metric._type, list(metric._labelnames)) for metric in metrics}
    # The comparisons and estimates are collectors of the worker's own run (ComparisonGauges,
    # EstimateGauges), not wrapped metrics.
    for family in [*monitor.comparisons.describe(), *monitor.estimates.describe()]:
        exposed[family.name] = (family.type, list(family._labelnames))
    assert len(exposed) == len(rows) >= 20
    for name, (kind, labels) in documented.items():
        assert exposed.get(name) is not None, f"{name} is documented but not exposed"
        assert exposed[name][0] == kind, name
        # The table also names label values (reason: too_large, ...): the label names come first.
        assert labels[: len(exposed[name][1])] == exposed[name][1], name


@pytest.mark.parametrize("opentelemetry", [False, True])
async def test_fastapi_asks_opentelemetry_about_each_request_only_when_asked_to(
    opentelemetry: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace

    asked = []
    get_tracer_provider = trace.get_tracer_provider
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: asked.append(1) or get_tracer_provider())
    app = create_app(Settings(opentelemetry=opentelemetry))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://m") as c:
        asked.clear()
        for _ in range(3):
            assert (
                await c.post("/v1/loss", json={"loss": "mse", "predictions": [[1.0]], "labels": [[0.0]]})
            ).is_success
    assert (len(asked) >= 3) is opentelemetry


def test_the_store_status_gauge_is_1_for_the_status_last_found_and_0_for_the_others() -> None:
    """`loss_service_store_status`: a new worker's store is ok until it finds otherwise; each status
    set is the one series at 1, whatever came before."""

    def shown(monitor: Monitor) -> dict[str, float]:
        scrape = samples(monitor.exposition()[0].decode())
        status = "loss_service_store_status"
        return {dict(labels)["status"]: v for (name, labels), v in scrape.items() if name == status}

    monitor = Monitor(Settings())
    assert shown(monitor) == {"ok": 1.0, "full": 0.0, "unavailable": 0.0}
    for status in ("full", "unavailable", "ok", "unavailable"):
        monitor.set_store_status(status)
        assert shown(monitor) == {each: float(each == status) for each in ("ok", "full", "unavailable")}
