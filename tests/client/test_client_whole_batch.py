"""Chunking never changes a number: losses whose samples read the whole batch (log_loss and brier
without `classes`, circle) go whole, and options with one value per sample are cut with their chunk.
Every number is checked against scikit-learn or a naive float64 reference on the whole batch."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from service.client import AsyncLossClient, InvalidInputError, LossClient, WholeBatchError
from service.engine import catalogue
from service.server.api.catalogue_schemas import loss_info
from tests.apps import AppClient, MakeApp
from tests.reference import naive

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(17)


class Counting(httpx.AsyncBaseTransport):
    """The app's ASGI transport, counting the loss requests it carries."""

    def __init__(self, app: AppClient) -> None:
        self.inner = httpx.ASGITransport(app=app.app)
        self.posts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.posts += request.method == "POST"
        return await self.inner.handle_async_request(request)


async def client_of(make_app: MakeApp, chunk_size: int, **settings: Any) -> tuple[AsyncLossClient, Counting]:
    transport = Counting(await make_app(**settings))
    client = AsyncLossClient("http://loss-service", chunk_size=chunk_size, transport=transport, retries=0)
    return client, transport


def binary_batch() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """40 samples whose first 10 are all of class 1: a chunk of 10 holds one class only."""
    labels = RNG.integers(0, 2, 40)
    labels[:10] = 1
    labels[10:12] = 0
    return RNG.uniform(0.02, 0.98, 40), labels


async def test_log_loss_goes_whole_unless_classes_make_its_samples_independent(make_app: MakeApp) -> None:
    probabilities, labels = binary_batch()
    expected = log_loss(labels, probabilities)
    client, transport = await client_of(make_app, chunk_size=10)
    async with client:
        whole = await client.loss("log_loss", probabilities, labels)
        assert transport.posts == 1  # each sample's classes come from the whole batch: never split
        assert whole.count == 40
        assert whole.mean == pytest.approx(expected, rel=1e-13)
        transport.posts = 0
        split = await client.loss("logistic_loss", probabilities, labels, classes=[0, 1])
        assert transport.posts == 4  # classes given: every sample stands alone, so chunks are exact
        assert split.mean == pytest.approx(expected, rel=1e-13)
        np.testing.assert_array_equal(split.per_sample, whole.per_sample)


async def test_brier_score_over_chunks_missing_a_class(make_app: MakeApp) -> None:
    labels = RNG.integers(0, 3, 30)
    labels[:8] = 2  # the first chunk of 8 holds class 2 alone
    probabilities = RNG.dirichlet(np.ones(3), 30)
    one_hot = np.eye(3)[labels]
    expected = float(np.mean(np.sum((one_hot - probabilities) ** 2, axis=1)))  # naive float64, unhalved
    assert expected == pytest.approx(brier_score_loss(labels, probabilities), rel=1e-13)
    client, transport = await client_of(make_app, chunk_size=8)
    async with client:
        result = await client.loss("brier", probabilities, labels)
    assert transport.posts == 1
    assert result.mean == pytest.approx(expected, rel=1e-13)


async def test_circle_is_computed_over_the_whole_batch(make_app: MakeApp) -> None:
    embeddings = RNG.normal(size=(48, 6))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    classes = RNG.integers(0, 4, 48)
    per_sample, mean = naive.circle(embeddings.tolist(), classes.tolist())
    client, transport = await client_of(make_app, chunk_size=16)
    async with client:
        result = await client.loss("circle", embeddings, classes)
    np.testing.assert_allclose(result.per_sample, per_sample, rtol=1e-10)
    assert result.mean == pytest.approx(mean, rel=1e-10)
    assert transport.posts == 1


async def test_evaluate_sends_the_batch_whole_when_one_of_its_losses_needs_it(make_app: MakeApp) -> None:
    probabilities, labels = binary_batch()
    client, transport = await client_of(make_app, chunk_size=10)
    async with client:
        results = await client.evaluate(probabilities, labels, ["mse", "log_loss"])
    assert transport.posts == 1
    assert results[1].mean == pytest.approx(log_loss(labels, probabilities), rel=1e-13)
    assert results[0].mean == pytest.approx(float(np.mean((probabilities - labels) ** 2)), rel=1e-13)


async def test_a_whole_batch_beyond_the_servers_limit_is_refused_naming_the_loss(make_app: MakeApp) -> None:
    embeddings = RNG.normal(size=(48, 6))
    classes = RNG.integers(0, 4, 48)
    client, transport = await client_of(make_app, chunk_size=16, max_elements=200)
    async with client:
        with pytest.raises(InvalidInputError) as refused:
            await client.loss("circle_loss", embeddings, classes)
    assert refused.value.status == 413
    message = str(refused.value)
    assert "circle computes each sample's loss from the whole batch" in message
    assert "the batch of 48 samples is sent whole, not split into chunks of 16" in message
    probabilities, labels = binary_batch()
    client, transport = await client_of(make_app, chunk_size=10, max_elements=20)
    async with client:
        with pytest.raises(InvalidInputError, match=r"log_loss.*options\.classes") as refused:
            await client.evaluate(probabilities, labels, ["mse", "log_loss"])
        transport.posts = 0
        streamed = await client.loss("log_loss", probabilities, labels, classes=[0, 1])  # within limits in chunks
    assert transport.posts == 4
    assert streamed.mean == pytest.approx(log_loss(labels, probabilities), rel=1e-13)


async def test_per_sample_options_are_cut_with_their_chunk(make_app: MakeApp) -> None:
    """CTC's input and target lengths hold one value per sample: each chunk gets its own."""
    samples, steps, classes = 11, 4, 3
    logits = RNG.normal(0, 1.5, (samples, steps, classes))
    log_p = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
    labels = RNG.integers(1, classes, (samples, 2))
    targets = RNG.integers(1, 3, samples)
    inputs = RNG.integers(3, steps + 1, samples)
    expected = [naive.ctc(log_p[i, : inputs[i]].tolist(), labels[i, : targets[i]].tolist()) for i in range(samples)]
    assert all(math.isfinite(value) for value in expected)
    torch_mean = float(np.mean(np.asarray(expected) / targets))
    client, transport = await client_of(make_app, chunk_size=4)
    async with client:
        result = await client.loss(
            "ctc", log_p, labels, convention="torch", input_lengths=inputs.tolist(), target_length=targets.tolist()
        )
        assert transport.posts == 3
        np.testing.assert_allclose(result.per_sample, expected, rtol=1e-12)
        assert result.mean == pytest.approx(torch_mean, rel=1e-12)
        transport.posts = 0
        item = {"loss": "ctc", "options": {"output_length": inputs.tolist(), "target_lengths": targets.tolist()}}
        (evaluated,) = await client.evaluate(log_p, labels, [item], convention="torch")
        assert transport.posts == 3
        np.testing.assert_allclose(evaluated.per_sample, expected, rtol=1e-12)


def test_the_sync_client_names_the_loss_when_its_whole_batch_is_too_large() -> None:
    """The blocking client reads the same catalogue and turns the same 413 into the same error."""
    posted: list[int] = []

    def service(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/losses":
            return httpx.Response(200, json={"losses": [loss_info(spec).model_dump() for spec in catalogue()]})
        posted.append(len(json.loads(request.content)["labels"]))
        problem = {"title": "Content Too Large", "status": 413, "detail": "40 numbers; the limit is 20"}
        return httpx.Response(413, json=problem, headers={"retry-after": "7"})

    probabilities, labels = binary_batch()
    client = LossClient("http://mock", chunk_size=10, transport=httpx.MockTransport(service), retries=0)
    with client, pytest.raises(WholeBatchError, match=r"brier_score .*options\.classes.*the limit is 20") as refused:
        client.loss("brier_score_loss", probabilities, labels)
    assert posted == [40]
    assert refused.value.retry_after == 7.0
