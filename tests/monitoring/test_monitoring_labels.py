"""The `model` label's cardinality (service/server/monitoring/labels.py): a bound, an idle time before a
label is taken over, no label for a refused batch, an allow-list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from service.config import Settings
from service.server.monitoring import Monitor
from tests.apps import app_client
from tests.monitoring.test_monitoring import MSE, only_otel_endpoint, samples, value

pytestmark = pytest.mark.anyio


def own_store(tmp_path: Path) -> str:
    """A store of the test's own. The run's shared store holds other tests' models, and the jobs an
    app starts (the estimate and comparison runs, the sweep) claim their labels too, as they should:
    against a bound of one or two labels, which of those runs first before a request decides it."""
    return f"sqlite:///{tmp_path}/store.sqlite3"


async def test_model_label_cardinality_is_bounded(tmp_path: Path) -> None:
    async with app_client(Settings(max_models=2, store_url=own_store(tmp_path))) as client:
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


def test_a_model_whose_label_was_taken_over_comes_back_with_fresh_series() -> None:
    now = [0.0]
    monitor = Monitor(Settings(max_models=1, model_label_idle=600), clock=lambda: now[0])
    batch = np.array([0.5, 1.5])
    for at, model in ((0.0, "a"), (0.0, "a"), (600.0, "b"), (1200.0, "a")):
        now[0] = at
        monitor.observe_batch(model, "mean_squared_error", batch, 1.0)
    scrape = samples(generate_latest(monitor.registry).decode())
    labelled = {dict(labels)["model"] for name, labels in scrape if name == "loss_service_batches_total"}
    assert labelled == {"a"}
    assert value(scrape, "loss_service_batches_total", model="a", loss="mean_squared_error") == 1
    assert value(scrape, "loss_service_samples_total", model="a", loss="mean_squared_error") == 2
    assert value(scrape, "loss_service_last_batch_mean_loss", model="a", loss="mean_squared_error") == 1.0


async def test_refused_batches_claim_no_model_label(tmp_path: Path) -> None:
    async with app_client(Settings(max_models=1, store_url=own_store(tmp_path))) as client:
        refused = await client.post("/v1/loss", json={**MSE, "model": "junk", "labels": [[1.0]]})
        assert refused.status_code == 422
        await client.post("/v1/loss", json={**MSE, "model": "real"})
        scrape = samples((await client.get("/metrics")).text)
        assert value(scrape, "loss_service_batches_total", model="real", loss="mean_squared_error") == 1


async def test_model_allowlist(tmp_path: Path) -> None:
    async with app_client(Settings(model_allowlist=["kept"], store_url=own_store(tmp_path))) as client:
        await client.post("/v1/loss", json={**MSE, "model": "kept"})
        await client.post("/v1/loss", json={**MSE, "model": "dropped"})
        await client.post("/v1/loss", json=MSE)
        scrape = samples((await client.get("/metrics")).text)
        assert value(scrape, "loss_service_batches_total", model="kept", loss="mean_squared_error") == 1
        assert value(scrape, "loss_service_batches_total", model="other", loss="mean_squared_error") == 1
        assert value(scrape, "loss_service_batches_total", model="unlabelled", loss="mean_squared_error") == 1


def test_a_label_taken_over_takes_the_models_comparisons_and_estimates_with_it() -> None:
    """When another model takes an idle model's label, the idle model's comparison pairs (as
    challenger or as champion) and its estimates leave /metrics with its other series; the
    other models' stay."""
    from service.values.compared import Compared
    from service.values.watched import Watched

    now = [0.0]
    monitor = Monitor(Settings(max_models=3, model_label_idle=600), clock=lambda: now[0])
    batch = np.array([0.5, 1.5])
    for model in ("a", "b", "c"):
        monitor.observe_batch(model, "mean_squared_error", batch, 1.0)
    monitor.set_comparisons(
        [
            Compared("a", "b", "mean_squared_error", 10, 0.1, 0.0, 0.2, 0),
            Compared("b", "a", "mean_squared_error", 10, -0.1, -0.2, 0.0, 0),
            Compared("c", "b", "mean_squared_error", 10, 0.3, 0.1, 0.5, 1),
        ]
    )
    monitor.set_estimates(
        [Watched(m, "mean_squared_error", 5, 0.5, 0.4, 0.6, 5, 0.5, 0.5, 0.4, 0.6) for m in ("a", "b", "c")]
    )
    now[0] = 600.0
    for model in ("b", "c"):
        monitor.observe_batch(model, "mean_squared_error", batch, 1.0)  # in use: a is the idlest
    monitor.observe_batch("d", "mean_squared_error", batch, 1.0)  # takes a's label
    scrape = samples(generate_latest(monitor.registry).decode())
    compared = {
        (dict(labels)["model"], dict(labels)["champion"])
        for name, labels in scrape
        if name == "loss_service_comparison_pairs"
    }
    estimated = {dict(labels)["model"] for name, labels in scrape if name == "loss_service_expected_loss"}
    batches = {dict(labels)["model"] for name, labels in scrape if name == "loss_service_batches_total"}
    assert compared == {("c", "b")}  # a's pairs, as challenger and as champion, are gone
    assert estimated == {"b", "c"}
    assert batches == {"b", "c", "d"}


def test_a_label_taken_over_leaves_the_otlp_export_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an OTLP export configured, the export's counters and histograms of a model whose label
    another model took go with its Prometheus series; the batches refused a label count as
    overflow in both."""
    only_otel_endpoint(monkeypatch, "http://127.0.0.1:9")  # never exported to here
    now = [0.0]
    monitor = Monitor(Settings(max_models=1, model_label_idle=600), clock=lambda: now[0])
    assert monitor.otlp is not None
    batch = np.array([0.5, 1.5])
    for at, model in ((0.0, "a"), (0.0, "a"), (600.0, "b"), (700.0, "c")):
        now[0] = at
        monitor.observe_batch(model, "mean_squared_error", batch, 1.0)  # b takes a's label; c is 'other'
    assert dict(monitor.otlp.counts(monitor.batches)) == {
        ("b", "mean_squared_error"): 1,
        ("other", "mean_squared_error"): 1,
    }
    assert dict(monitor.otlp.counts(monitor.samples)) == {
        ("b", "mean_squared_error"): 2,
        ("other", "mean_squared_error"): 2,
    }
    _, histograms = monitor.otlp.take_histograms(delta=False)
    assert {labels for _, labels, _ in histograms} == {("b", "mean_squared_error"), ("other", "mean_squared_error")}
    assert monitor.otlp.counts(monitor.overflowed) == [((), 1)]
    scrape = samples(generate_latest(monitor.registry).decode())
    assert value(scrape, "loss_service_model_label_overflow_total") == 1


def test_a_label_taken_over_keeps_the_pairs_of_a_loss_named_like_the_model() -> None:
    """Only a pair's model and champion labels name models: a pair whose loss has the name of the
    model whose label was taken stays."""
    from service.values.compared import Compared

    now = [0.0]
    monitor = Monitor(Settings(max_models=3, model_label_idle=600), clock=lambda: now[0])
    batch = np.array([0.5, 1.5])
    for model in ("huber", "b", "c"):
        monitor.observe_batch(model, "mean_squared_error", batch, 1.0)
    monitor.set_comparisons([Compared("b", "c", "huber", 10, 0.1, 0.0, 0.2, 0)])
    now[0] = 600.0
    for model in ("b", "c", "d"):
        monitor.observe_batch(model, "mean_squared_error", batch, 1.0)  # d takes the idle huber's label
    scrape = samples(generate_latest(monitor.registry).decode())
    assert value(scrape, "loss_service_comparison_pairs", model="b", champion="c", loss="huber") == 10
    batches = {dict(labels)["model"] for name, labels in scrape if name == "loss_service_batches_total"}
    assert batches == {"b", "c", "d"}
