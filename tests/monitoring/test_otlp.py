"""OTLP/HTTP metrics export: a real OTLP/HTTP receiver in the test decodes what the service sends
(`opentelemetry-proto`), and its counts and sums must equal what the answers computed."""

from __future__ import annotations

import gzip
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from service.config import Settings
from service.server.monitoring.exponential import ExponentialHistogram
from tests import apps
from tests.servers import served

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD = 60.0  # seconds: a wait that should take milliseconds fails after this, never hangs


class Receiver:
    """An OTLP/HTTP receiver: POST /v1/metrics, protobuf, gzip if the request says so."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], ExportMetricsServiceRequest]] = []
        self.status = 200
        self.received = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                status = receiver.status if self.path == "/v1/metrics" else 404
                with receiver.received:  # before the answer: the exporter returns when it has it
                    if status == 200:
                        receiver.requests.append((headers, request))
                    receiver.received.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def otel_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, **variables: str) -> None:
    """Only these OTEL_ variables, whatever the environment the tests run in holds."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")  # no periodic export: only the last one
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


@asynccontextmanager
async def app_client(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with apps.app_client(Settings(store_url=f"sqlite:///{tmp_path}/store.sqlite3", **settings)) as client:
        yield client.app, client


def attributes(pairs: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in pairs}


def points(requests: list[ExportMetricsServiceRequest]) -> dict[str, list[tuple[dict[str, str], Any]]]:
    """{metric name: [(attributes, data point)]} over every request (cumulative: the last one counts)."""
    found: dict[str, list[tuple[dict[str, str], Any]]] = defaultdict(list)
    for request in requests:
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    data = getattr(metric, metric.WhichOneof("data"))
                    found[metric.name].extend((attributes(p.attributes), p) for p in data.data_points)
    return found


async def exercise(client: httpx.AsyncClient) -> dict[tuple[str, str], list[float]]:
    """/v1/loss for two models, batches small and large, and a delayed-labels join; returns the
    per-sample losses the answers hold, per (model, loss)."""
    rng = np.random.default_rng(3)
    losses: dict[tuple[str, str], list[float]] = defaultdict(list)
    for i, size in enumerate((1, 3, 17, 200, 5)):
        model = ("fraud", "churn")[i % 2]
        body = {
            "loss": "mse",
            "predictions": rng.normal(0, 2, (size, 2)).tolist(),
            "labels": rng.normal(0, 2, (size, 2)).tolist(),
            "model": model,
        }
        answer = (await client.post("/v1/loss", json=body)).json()
        losses[(model, "mean_squared_error")] += answer["per_sample"]
    # Cosine similarity is negative: the negative buckets.
    body = {"loss": "cosine_similarity", "predictions": [[1.0, 0.5], [0.2, 0.9]], "labels": [[1.0, 0.0], [0.0, 1.0]]}
    answer = (await client.post("/v1/loss", json={**body, "model": "fraud"})).json()
    losses[("fraud", "cosine_similarity")] += answer["per_sample"]
    assert min(answer["per_sample"]) < 0
    config = {"losses": [{"loss": "scce", "options": {"from_logits": True}}], "convention": "torch"}
    assert (await client.put("/v1/models/clicks", json=config)).status_code in (200, 201)
    ids = [f"c{i}" for i in range(30)]
    logits = rng.normal(0, 3, (30, 4)).tolist()
    labels = rng.integers(0, 4, 30).tolist()
    await client.post("/v1/models/clicks/labels", json={"ids": ids[:10], "labels": labels[:10]})
    for answer in (
        (await client.post("/v1/models/clicks/predictions", json={"ids": ids, "predictions": logits})).json(),
        (await client.post("/v1/models/clicks/labels", json={"ids": ids[10:], "labels": labels[10:]})).json(),
    ):
        for result in answer["results"]:
            losses[("clicks", result["loss"])] += result["per_sample"]
    return losses


@pytest.mark.parametrize("compression", ["none", "gzip"])
async def test_the_exported_histograms_and_counters_equal_what_was_computed(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    otel_env(
        monkeypatch,
        receiver.url,
        OTEL_EXPORTER_OTLP_COMPRESSION=compression,
        OTEL_EXPORTER_OTLP_HEADERS="x-team=fraud",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
    )
    async with app_client(tmp_path) as (_, client):
        computed = await exercise(client)
        assert not receiver.requests  # nothing yet: the interval is an hour
    # The lifespan's end exported what was recorded: the only export, so one not made is a failure.
    assert len(receiver.requests) == 1
    headers, request = receiver.requests[0]
    assert headers.get("content-encoding") == (None if compression == "none" else "gzip")
    assert headers["x-team"] == "fraud"
    resource = attributes(request.resource_metrics[0].resource.attributes)
    assert resource["service.name"] == "loss-service"
    assert resource["deployment.environment"] == "test"
    assert resource["service.instance.id"]
    found = points([request])

    histograms = {(a["model"], a["loss"]): p for a, p in found["loss_service_sample_loss"]}
    assert set(histograms) == set(computed)
    for key, values in computed.items():
        point = histograms[key]
        assert point.count == len(values), key
        assert point.sum == pytest.approx(math.fsum(values), rel=1e-12, abs=1e-12), key
        assert (point.min, point.max) == (min(values), max(values)), key
        assert sum(point.positive.bucket_counts) == sum(v > 0 for v in values), key
        assert sum(point.negative.bucket_counts) == sum(v < 0 for v in values), key
        assert point.zero_count == sum(v == 0 for v in values), key
    counters = {
        name: {tuple(sorted(a.items())): getattr(p, p.WhichOneof("value")) for a, p in found[name]}
        for name in found
        if name not in ("loss_service_sample_loss", "loss_service_label_delay")
    }
    for (model, loss), values in computed.items():
        labels = (("loss", loss), ("model", model))
        assert counters["loss_service_samples"][labels] == len(values)
    batches = counters["loss_service_batches"]
    assert batches[(("loss", "mean_squared_error"), ("model", "fraud"))] == 3
    assert batches[(("loss", "mean_squared_error"), ("model", "churn"))] == 2
    requests = counters["loss_service_http_requests"]
    assert requests[(("method", "POST"), ("route", "/v1/loss"), ("status_class", "2xx"))] == 6
    assert counters["loss_service_joined"][(("model", "clicks"),)] == 30
    delays = {a["model"]: p for a, p in found["loss_service_label_delay"]}
    assert delays["clicks"].count == 30
    assert counters["loss_service_logged"][(("kind", "predictions"), ("model", "clicks"))] == 30


def test_off_when_no_endpoint_is_set(tmp_path: Path) -> None:
    """No endpoint: no tallies, no meter provider, and the SDK never imported."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    script = f"""
import asyncio, sys, httpx
from service.server.app import create_app
from service.config import Settings
async def main():
    app = create_app(Settings(store_url="sqlite:///{tmp_path}/s.sqlite3"))
    async with app.router.lifespan_context(app):
        t = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=t, base_url="http://x") as c:
            r = await c.post("/v1/loss", json={{"loss": "mse", "predictions": [[1.0]], "labels": [[0.0]]}})
            assert r.status_code == 200
    print(app.state.monitor.otlp is None, "opentelemetry.sdk.metrics" in sys.modules)
asyncio.run(main())
"""
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


async def test_off_when_the_setting_says_so(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    otel_env(monkeypatch, receiver.url)
    async with app_client(tmp_path, otlp_metrics=False) as (app, client):
        await client.post("/v1/loss", json={"loss": "mse", "predictions": [[1.0]], "labels": [[0.0]]})
        assert app.state.monitor.otlp is None
    assert not receiver.requests


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {HANG_GUARD} s"
        time.sleep(0.01)


@contextmanager
def black_hole() -> Iterator[tuple[str, list[socket.socket]]]:
    """An endpoint that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


async def test_a_dead_endpoint_never_holds_a_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with black_hole() as (url, accepted):
        # Exports every 50 ms, each of which may wait 30 s for an answer that never comes.
        otel_env(monkeypatch, url, OTEL_METRIC_EXPORT_INTERVAL="50", OTEL_EXPORTER_OTLP_TIMEOUT="30")
        async with app_client(tmp_path, otlp_shutdown_timeout=0.5) as (app, client):
            body = {"loss": "mse", "predictions": [[1.0]] * 8, "labels": [[0.0]] * 8, "model": "m"}
            await client.post("/v1/loss", json=body)
            wait_until(lambda: len(accepted) >= 1, "export connection")  # an export is now waiting
            exporter = app.state.otlp.exporter
            statuses = [(await client.post("/v1/loss", json=body)).status_code for _ in range(200)]
            assert statuses == [200] * 200
            assert exporter.exports == 0  # the 200 requests were served while the one export still waited
        # The lifespan ended (its bound: otlp_shutdown_timeout), the export still unanswered.
        assert exporter.exports <= 1


async def test_failures_are_logged_once_per_episode(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.status = 400  # refused, not retried: each export fails at once
    otel_env(monkeypatch, receiver.url, OTEL_METRIC_EXPORT_INTERVAL="20")
    caplog.set_level(logging.DEBUG)
    async with app_client(tmp_path) as (app, client):
        await client.post("/v1/loss", json={"loss": "mse", "predictions": [[1.0]], "labels": [[0.0]]})
        exporter = app.state.otlp.exporter
        wait_until(lambda: exporter.failed >= 5, "five failed exports")
        receiver.status = 200
        wait_until(lambda: bool(receiver.requests), "export after recovery")
        wait_until(lambda: exporter.failed == 0, "recovery seen by the exporter")
        receiver.status = 400
        wait_until(lambda: exporter.failed >= 3, "a second episode")
        receiver.status = 200
    ours = [
        r.getMessage() for r in caplog.records if r.name == "service.monitoring.otlp" and receiver.url in r.getMessage()
    ]
    assert [m.split(" (")[0].split(",")[0] for m in ours] == [
        f"OTLP metrics export to {receiver.url} failed",
        f"OTLP metrics export to {receiver.url} works again",
        f"OTLP metrics export to {receiver.url} failed",
        f"OTLP metrics export to {receiver.url} works again",
    ][: len(ours)]
    assert len(ours) >= 3  # the last recovery may come with the shutdown's export
    assert "400" in ours[0]  # the SDK's reason, in our one line
    assert not [
        r for r in caplog.records if r.name.startswith("opentelemetry.exporter") and r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize(
    "generate",
    [
        lambda rng: rng.exponential(1.0, 5),
        lambda rng: rng.exponential(1.0, 300),
        lambda rng: np.exp(rng.normal(0, 20, 200)),
        lambda rng: np.exp(rng.normal(0, 20, 3)),
        lambda rng: np.array([0.0, 1.0, 2.0, 0.5, 4.0, 1e-320]),
        lambda rng: rng.exponential(1e-3, 1000) * rng.integers(0, 2, 1000),
    ],
)
def test_the_histogram_matches_the_sdks_bucket_for_bucket(generate: Callable[[Any], Any]) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View

    reader = InMemoryMetricReader()
    view = View(instrument_name="h", aggregation=ExponentialBucketHistogramAggregation())
    sdk = MeterProvider(metric_readers=[reader], views=[view]).get_meter("t").create_histogram("h")
    ours = ExponentialHistogram()
    rng = np.random.default_rng(11)
    for _ in range(6):
        values = generate(rng)
        for value in values.tolist():
            sdk.record(value)
        ours.record(values)
    point = reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0]

    def trimmed(offset: int, counts: Any) -> tuple[int, list[int]]:
        counts = list(counts)
        while counts and counts[0] == 0:
            counts, offset = counts[1:], offset + 1
        while counts and counts[-1] == 0:
            counts = counts[:-1]
        return offset, counts

    assert (ours.scale, ours.count, ours.zero_count) == (point.scale, point.count, point.zero_count)
    assert trimmed(ours.positive.offset, ours.positive.as_list()) == trimmed(
        point.positive.offset, point.positive.bucket_counts
    )
    assert ours.sum == pytest.approx(point.sum, rel=1e-9)


def test_negative_values_fill_the_negative_buckets_as_positive_ones_fill_theirs() -> None:
    values = np.random.default_rng(5).exponential(1.0, 100)
    positive, negative = ExponentialHistogram(), ExponentialHistogram()
    positive.record(values)
    negative.record(-values)
    mirrored = (positive.positive.offset, positive.positive.as_list())
    assert (negative.negative.offset, negative.negative.as_list()) == mirrored
    assert (negative.sum, negative.count) == (-positive.sum, 100)


@pytest.mark.slow
def test_each_worker_exports_its_own_stream(receiver: Receiver) -> None:
    """`--workers 2`: two resources with distinct service.instance.id, whose counts add up."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    env["PYTHONPATH"] = str(ROOT)
    sent = 0
    with served("--workers", "2", env=env) as url, httpx.Client(base_url=url, timeout=HANG_GUARD) as client:
        for _ in range(40):
            with httpx.Client(base_url=url, timeout=HANG_GUARD) as fresh:  # new connections spread over the workers
                answer = fresh.post("/v1/loss", json={"loss": "mse", "predictions": [[1.0]] * 3, "labels": [[0.0]] * 3})
                assert answer.status_code == 200
                sent += 3
        client.get("/readyz")
    by_instance: dict[str, int] = defaultdict(int)
    for _, request in receiver.requests:
        for resource_metrics in request.resource_metrics:
            instance = attributes(resource_metrics.resource.attributes)["service.instance.id"]
            for _, point in points([ExportMetricsServiceRequest(resource_metrics=[resource_metrics])])[
                "loss_service_sample_loss"
            ]:
                by_instance[instance] += point.count
    assert sum(by_instance.values()) == sent
    assert len(by_instance) == len(receiver.requests) == 2  # one last export per worker, each its own id
