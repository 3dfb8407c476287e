"""service.client: error mapping and retries with httpx.MockTransport; the rest against a real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from service.client import (
    AsyncLossClient,
    InvalidInputError,
    LossClient,
    NotFoundError,
    OverloadedError,
    ServerError,
    UnauthorizedError,
    UnreachableError,
)
from service.engine import catalogue, compute
from tests.reference import naive
from tests.servers import served

OK = {
    "loss": "mean_squared_error",
    "per_sample": [1.0],
    "mean": 1.0,
    "sum": 1.0,
    "count": 1,
    "denominator": 1.0,
    "dtype": "float64",
    "convention": "keras",
}


def mock(*responses: httpx.Response | Exception) -> tuple[LossClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        outcome = queue.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    client = LossClient("http://mock", transport=httpx.MockTransport(handle), backoff=0.0)
    return client, seen


def problem(status: int, detail: str, **extra: object) -> httpx.Response:
    body = {"type": "about:blank", "title": "t", "status": status, "detail": detail, **extra}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, InvalidInputError),
        (415, InvalidInputError),
        (401, UnauthorizedError),
        (404, NotFoundError),
        (500, ServerError),
    ],
)
def test_errors_are_typed_and_carry_the_problem(status: int, kind: type[Exception]) -> None:
    client, seen = mock(problem(status, "nope"))
    with pytest.raises(kind) as caught:
        client.loss("mse", [[1.0]], [[0.0]])
    assert caught.value.status == status  # type: ignore[attr-defined]
    assert caught.value.problem["detail"] == "nope"  # type: ignore[attr-defined]
    assert len(seen) == 1


def test_validation_errors_name_field_and_index() -> None:
    errors = [{"loc": ["body", "labels", 1], "msg": "class label 3 is outside [0, 2]"}]
    client, _ = mock(problem(422, "labels.1: class label 3 is outside [0, 2]", errors=errors))
    with pytest.raises(InvalidInputError) as caught:
        client.loss("scce", [[0.5, 0.5]], [3])
    assert caught.value.errors == errors


def test_503_with_retry_after_is_retried_then_succeeds() -> None:
    busy = httpx.Response(503, json={"detail": "busy"}, headers={"retry-after": "0"})
    client, seen = mock(busy, busy, httpx.Response(200, json=OK))
    assert client.loss("mse", [[1.0]], [[0.0]]).mean == 1.0
    assert len(seen) == 3


def test_503_without_retry_after_is_not_retried() -> None:
    client, seen = mock(httpx.Response(503, json={"detail": "down"}))
    with pytest.raises(OverloadedError):
        client.loss("mse", [[1.0]], [[0.0]])
    assert len(seen) == 1


@pytest.mark.parametrize("value", ["inf", "1e999", "nan", "-inf"])
def test_a_retry_after_that_is_no_finite_number_is_not_waited_for(value: str) -> None:
    """`Retry-After: inf` (from a proxy, say) is refused like one that cannot be read: the client
    raises the service's error at once, not OverflowError from time.sleep nor a wait for ever."""
    client, seen = mock(httpx.Response(503, json={"detail": "busy"}, headers={"retry-after": value}))
    with pytest.raises(OverloadedError):
        client.loss("mse", [[1.0]], [[0.0]])
    assert len(seen) == 1


def test_retries_are_bounded() -> None:
    busy = httpx.Response(503, json={"detail": "busy"}, headers={"retry-after": "0"})
    client, seen = mock(busy, busy, busy, busy)
    with pytest.raises(OverloadedError):
        client.loss("mse", [[1.0]], [[0.0]])
    assert len(seen) == 4  # the first try and 3 retries


def test_connection_refused_is_retried_but_a_broken_post_is_not() -> None:
    client, seen = mock(httpx.ConnectError("refused"), httpx.Response(200, json=OK))
    assert client.loss("mse", [[1.0]], [[0.0]]).count == 1
    assert len(seen) == 2
    client, seen = mock(httpx.ReadError("reset"), httpx.Response(200, json=OK))
    with pytest.raises(UnreachableError):
        client.loss("mse", [[1.0]], [[0.0]])
    assert len(seen) == 1  # the server may have counted it; a retry could count it twice


def test_sends_bearer_key_and_json() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=OK)

    client = LossClient("http://mock", api_key="s3cret", transport=httpx.MockTransport(handle))
    client.loss("mse", np.array([[1.0]], dtype=np.float32), [[0.0]], model="m1", delta=2.0)
    assert seen[0].headers["authorization"] == "Bearer s3cret"
    assert seen[0].headers["content-type"] == "application/json"
    body = httpx.Response(200, content=seen[0].content).json()
    assert body["options"] == {"delta": 2.0}
    assert body["model"] == "m1"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with served() as base:
        yield base


RNG = np.random.default_rng(5)
LOGITS = RNG.normal(0, 2, (50, 4))
LABELS = RNG.integers(0, 4, 50)
LABELS[::7] = 2


@pytest.mark.slow
def test_chunked_requests_reassemble_to_the_single_request_answer(url: str) -> None:
    options = {"from_logits": True, "ignore_index": 2, "class_weight": [1.0, 0.5, 2.0, 3.0]}
    with LossClient(url, chunk_size=7) as chunked, LossClient(url) as whole:
        for convention in ("keras", "torch"):
            a = chunked.loss("scce", LOGITS, LABELS, convention=convention, **options)
            b = whole.loss("scce", LOGITS, LABELS, convention=convention, **options)
            np.testing.assert_array_equal(a.per_sample, b.per_sample)
            assert a.mean == pytest.approx(b.mean, rel=1e-14)
            assert (a.count, a.denominator) == (b.count, b.denominator)
            _, reference = naive.scce(
                LOGITS.tolist(), LABELS.tolist(), convention, True, ignore_index=2, class_weight=options["class_weight"]
            )
            assert b.mean == pytest.approx(reference, rel=1e-12)


@pytest.mark.slow
def test_accepts_pandas_and_pyarrow_columns(url: str) -> None:
    frame = pd.DataFrame(LOGITS, columns=list("abcd"))
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(LOGITS.ravel()), 4)
    with LossClient(url) as client:
        expected = client.loss("scce", LOGITS, LABELS, from_logits=True).per_sample
        from_pandas = client.loss("scce", frame, pd.Series(LABELS), from_logits=True).per_sample
        from_arrow = client.loss("scce", fixed, pa.chunked_array([pa.array(LABELS)]), from_logits=True).per_sample
    np.testing.assert_array_equal(from_pandas, expected)
    np.testing.assert_array_equal(from_arrow, expected)


@pytest.mark.slow
def test_evaluate_losses_health_and_progress(url: str) -> None:
    with LossClient(url, chunk_size=20, progress=True) as client:
        smoothed = {"loss": "scce", "options": {"from_logits": True, "label_smoothing": 0.1}}
        results = client.evaluate(LOGITS, LABELS, [smoothed, {"loss": "scce", "options": {"from_logits": True}}])
        assert [r.count for r in results] == [50, 50]
        per_sample, mean = naive.scce(LOGITS.tolist(), LABELS.tolist(), "keras", True)
        np.testing.assert_allclose(results[1].per_sample, per_sample, rtol=1e-12)
        assert results[1].mean == pytest.approx(mean, rel=1e-12)
        assert len(client.losses()) == len(catalogue())
        assert client.health() == {"live": True, "ready": True, "status": "ready"}
        with pytest.raises(InvalidInputError) as caught:
            client.loss("scce", LOGITS, LABELS + 10, from_logits=True)
        assert caught.value.errors[0]["loc"] == ["body", "labels", 0]


@pytest.mark.slow
@pytest.mark.anyio
async def test_async_client_matches_the_sync_client(url: str) -> None:
    async with AsyncLossClient(url, chunk_size=9) as client:
        result = await client.loss("scce", LOGITS, LABELS, from_logits=True, convention="torch")
        assert result.mean == pytest.approx(naive.scce(LOGITS.tolist(), LABELS.tolist(), "torch", True)[1], rel=1e-12)
        assert (await client.health())["ready"] is True
        evaluated = await client.evaluate(LOGITS, LABELS, [{"loss": "scce", "options": {"from_logits": True}}])
        assert evaluated[0].count == 50
        assert len(await client.losses()) == len(catalogue())
        with pytest.raises(InvalidInputError, match="unknown loss 'nothing'"):
            await client.loss("nothing", LOGITS, LABELS)


def test_unreachable_server_is_reported_after_retries() -> None:
    with LossClient("http://127.0.0.1:1", retries=1, backoff=0.0) as client, pytest.raises(UnreachableError):
        client.loss("mse", [[1.0]], [[0.0]])


def test_large_batches_go_as_arrow_or_npz_and_small_ones_as_json() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=OK)

    with LossClient("http://mock", transport=httpx.MockTransport(handle)) as client:
        client.loss("mse", np.zeros((10, 1)), np.zeros((10, 1)))
        client.loss("mse", np.zeros((5000, 1)), np.zeros((5000, 1)), delta=1.0, model="m")
        client.loss("mse", np.zeros((500, 3, 4)), np.zeros((500, 3, 4)))  # three axes: Arrow cannot say it
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[1].headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert seen[1].headers["accept"] == "application/x-npz"
    assert seen[1].url.params["loss"] == "mse"
    assert seen[1].url.params["model"] == "m"
    assert seen[2].headers["content-type"] == "application/x-npz"


def test_arrow_asked_for_arrays_of_three_axes_is_refused_before_sending() -> None:
    with (
        LossClient(
            "http://mock", body_format="arrow", transport=httpx.MockTransport(lambda r: httpx.Response(500))
        ) as c,
        pytest.raises(ValueError, match=r"one or two axes, got shapes \[2, 3, 4\], \[2, 3, 4\]; use 'npz'"),
    ):
        c.loss("mse", np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))


@pytest.mark.slow
@pytest.mark.parametrize("body_format", ["json", "npz", "arrow"])
def test_every_body_format_gives_the_same_answer(url: str, body_format: str) -> None:
    big = np.random.default_rng(1).normal(size=(3000, 4))
    labels = np.random.default_rng(2).integers(0, 4, 3000)
    weights = np.random.default_rng(3).random(3000)
    with LossClient(url, body_format=body_format, chunk_size=1000) as client:
        result = client.loss(
            "scce", big, labels, sample_weight=weights, from_logits=True, dtype="float32", convention="torch"
        )
    expected = compute(
        "scce",
        big,
        labels,
        options={"from_logits": True},
        sample_weight=weights,
        dtype="float32",
        convention="torch",
    )
    np.testing.assert_array_equal(result.per_sample, expected.per_sample.astype(np.float64))
    assert result.mean == pytest.approx(expected.mean, rel=1e-6)
