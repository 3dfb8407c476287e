"""/metrics through the ASGI app: request health, per-model loss distributions, bounded labels."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.config import DEFAULT_LOSS_BUCKETS, Settings
from service.monitoring import BatchedStderr, Monitor
from service.monitoring.monitor import _observe_many

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


async def make_client(settings: Settings | None = None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        yield client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async for c in make_client():
        yield c


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


async def test_model_label_cardinality_is_bounded() -> None:
    async for client in make_client(Settings(max_models=2)):
        for model in ("a", "b", "c", "d", "a"):
            await client.post("/v1/loss", json={**MSE, "model": model})
        scrape = samples((await client.get("/metrics")).text)
        assert value(scrape, "loss_service_batches_total", model="a", loss="mean_squared_error") == 2
        assert value(scrape, "loss_service_batches_total", model="other", loss="mean_squared_error") == 2
        assert value(scrape, "loss_service_model_label_overflow_total") == 2
        assert ("loss_service_batches_total", (("loss", "mean_squared_error"), ("model", "c"))) not in scrape


def test_a_burst_of_names_keeps_real_models_out_only_until_it_goes_idle() -> None:
    now = [0.0]
    monitor = Monitor(Settings(max_models=3, model_label_idle=600), clock=lambda: now[0])
    batch = np.array([0.5, 1.5])

    def observe(model: str) -> None:
        monitor.observe_batch(model, "mean_squared_error", batch, 1.0)

    observe("real-1")
    for junk in ("junk-1", "junk-2", "junk-3", "junk-4"):
        observe(junk)
    observe("real-2")  # every label is taken and none is idle yet
    assert monitor.model_label("real-2") == "other"
    now[0] = 300.0
    observe("real-1")  # in use: it must never be pushed out
    now[0] = 600.0
    observe("real-2")  # junk-1 has been idle for exactly 600 s: real-2 takes its label
    observe("junk-5")  # junk-2 likewise
    now[0] = 700.0
    for junk in ("junk-6", "junk-7", "junk-8"):
        observe(junk)  # the idlest label, real-1's, was used 400 s ago: all three are 'other'
    scrape = samples(generate_latest(monitor.registry).decode())
    labelled = {dict(labels)["model"] for name, labels in scrape if name == "loss_service_batches_total"}
    assert labelled == {"real-1", "real-2", "junk-5", "other"}
    assert value(scrape, "loss_service_batches_total", model="real-1", loss="mean_squared_error") == 2
    assert value(scrape, "loss_service_samples_total", model="real-2", loss="mean_squared_error") == 2
    assert value(scrape, "loss_service_batches_total", model="other", loss="mean_squared_error") == 6


async def test_refused_batches_claim_no_model_label() -> None:
    async for client in make_client(Settings(max_models=1)):
        refused = await client.post("/v1/loss", json={**MSE, "model": "junk", "labels": [[1.0]]})
        assert refused.status_code == 422
        await client.post("/v1/loss", json={**MSE, "model": "real"})
        scrape = samples((await client.get("/metrics")).text)
        assert value(scrape, "loss_service_batches_total", model="real", loss="mean_squared_error") == 1


async def test_model_allowlist() -> None:
    async for client in make_client(Settings(model_allowlist=["kept"])):
        await client.post("/v1/loss", json={**MSE, "model": "kept"})
        await client.post("/v1/loss", json={**MSE, "model": "dropped"})
        await client.post("/v1/loss", json=MSE)
        scrape = samples((await client.get("/metrics")).text)
        assert value(scrape, "loss_service_batches_total", model="kept", loss="mean_squared_error") == 1
        assert value(scrape, "loss_service_batches_total", model="other", loss="mean_squared_error") == 1
        assert value(scrape, "loss_service_batches_total", model="unlabelled", loss="mean_squared_error") == 1


def test_bulk_observe_equals_observe_one_by_one() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([10 ** rng.uniform(-6, 3, 5000), np.array(DEFAULT_LOSS_BUCKETS), [0.0, 1e9]])
    one, bulk = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("h", "h", buckets=DEFAULT_LOSS_BUCKETS, registry=one)
    by_bulk = Histogram("h", "h", buckets=DEFAULT_LOSS_BUCKETS, registry=bulk)
    for v in values:
        by_one.observe(float(v))
    _observe_many(by_bulk, values)
    expected = {
        s.name + str(s.labels): s.value for s in next(iter(one.collect())).samples if not s.name.endswith("_created")
    }
    actual = {
        s.name + str(s.labels): s.value for s in next(iter(bulk.collect())).samples if not s.name.endswith("_created")
    }
    assert actual.keys() == expected.keys()
    for key, v in expected.items():
        assert actual[key] == pytest.approx(v, rel=1e-12), key


def test_settings_read_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSS_SERVICE_LOSS_BUCKETS", "0.1, 1, 10")
    monkeypatch.setenv("LOSS_SERVICE_MODEL_ALLOWLIST", "fraud-v3,churn")
    settings = Settings()
    assert settings.loss_buckets == [0.1, 1.0, 10.0]
    assert settings.model_allowlist == ["fraud-v3", "churn"]
    monkeypatch.setenv("LOSS_SERVICE_LOSS_BUCKETS", "1, 0.5")
    with pytest.raises(ValueError, match="strictly increasing"):
        Settings()


def test_a_killed_workers_live_gauges_are_forgotten_by_its_replacement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.monitoring import forget_killed_workers

    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid no longer names a process
    dead = child.pid
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in (f"gauge_livesum_{dead}.db", f"gauge_livesum_{os.getpid()}.db", f"counter_{dead}.db"):
        (tmp_path / name).write_bytes(b"")
    assert forget_killed_workers() == [dead]
    # Its counts are history and stay; only its in-flight gauge, stuck where it died, goes.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"counter_{dead}.db", f"gauge_livesum_{os.getpid()}.db"]


def test_the_docs_metrics_table_is_what_the_registry_exposes() -> None:
    """Name, type and labels of every metric, as docs/monitoring.md lists them (the dashboard and
    alerts are written against those names; a renamed metric or label fails here)."""
    import re
    from pathlib import Path

    from prometheus_client.metrics import MetricWrapperBase

    table = (Path(__file__).resolve().parent.parent / "docs" / "monitoring.md").read_text()
    rows = re.findall(r"^\| `(loss_service_\w+)` \| (\w+) \|([^|]*)\|", table, re.MULTILINE)
    documented = {name.removesuffix("_total"): (kind, re.findall(r"`(\w+)`", labels)) for name, kind, labels in rows}
    monitor = Monitor(Settings())
    metrics = [value for value in vars(monitor).values() if isinstance(value, MetricWrapperBase)]
    exposed = {metric._name: (metric._type, list(metric._labelnames)) for metric in metrics}
    assert len(exposed) == len(rows) >= 20
    for name, (kind, labels) in documented.items():
        assert exposed.get(name) is not None, f"{name} is documented but not exposed"
        assert exposed[name][0] == kind, name
        # The table also names label values (reason: too_large, ...): the label names come first.
        assert labels[: len(exposed[name][1])] == exposed[name][1], name


class _Writes(io.StringIO):
    """A stream that counts the writes it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _eventually(condition: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_access_lines_are_written_a_batch_at_a_time_and_none_is_lost() -> None:
    stream = _Writes()
    handler = BatchedStderr(stream, flush_after=0.2, batch_bytes=122)
    handler.write_line("only")
    assert stream.getvalue() == ""  # waiting for the batch to fill or the time to pass
    assert _eventually(lambda: stream.getvalue() == "only\n")
    for number in range(3):
        handler.write_line(f"line {number}")
    assert _eventually(lambda: stream.getvalue().endswith("line 0\nline 1\nline 2\n"))
    assert stream.writes == 2
    handler.write_line("x" * 60)  # 61 bytes with its newline
    assert stream.writes == 2
    handler.write_line("y" * 60)  # 122 bytes waiting: the batch is full, written at once
    assert stream.writes == 3
    assert stream.getvalue().endswith("x" * 60 + "\n" + "y" * 60 + "\n")
    handler.write_line("z" * 120)  # 121 bytes: one short of a batch
    assert stream.writes == 3
    handler.flush()  # as logging.shutdown does at exit
    assert stream.getvalue().endswith("z" * 120 + "\n")
    assert stream.writes == 4
    assert (BatchedStderr().flush_after, BatchedStderr().batch_bytes) == (0.1, 64 * 1024)  # as documented


def test_without_a_stream_the_access_log_follows_stderr_and_a_stream_set_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process may replace sys.stderr and close the old one (a test runner's capture does, run
    after run): lines go to the stderr of the moment, never to a closed stream."""
    first, second, chosen = io.StringIO(), io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    handler = BatchedStderr(flush_after=60)
    handler.write_line("one")
    handler.flush()
    first.close()
    monkeypatch.setattr("sys.stderr", second)
    handler.write_line("two")
    handler.flush()
    assert second.getvalue() == "two\n"
    handler.setStream(chosen)
    handler.write_line("three")
    handler.flush()
    assert (second.getvalue(), chosen.getvalue()) == ("two\n", "three\n")


def test_requests_write_their_access_line_without_a_log_record_only_when_nothing_else_listens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.monitoring import accesslog as monitoring

    handler = BatchedStderr(io.StringIO())
    monkeypatch.setattr(monitoring.access_log, "handlers", [handler])
    monkeypatch.setattr(monitoring.access_log, "propagate", False)
    assert monitoring._direct_access_handler() is handler
    monkeypatch.setattr(monitoring.access_log, "propagate", True)  # an ancestor's handlers (caplog) listen too
    assert monitoring._direct_access_handler() is None
    monkeypatch.setattr(monitoring.access_log, "propagate", False)
    monkeypatch.setattr(monitoring.access_log, "handlers", [handler, logging.NullHandler()])
    assert monitoring._direct_access_handler() is None
    monkeypatch.setattr(monitoring.access_log, "handlers", [logging.StreamHandler(io.StringIO())])
    assert monitoring._direct_access_handler() is None
    monkeypatch.setattr(monitoring.access_log, "handlers", [handler])
    handler.addFilter(lambda record: False)
    assert monitoring._direct_access_handler() is None


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
