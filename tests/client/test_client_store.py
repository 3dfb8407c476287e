"""The client's delayed-labels methods and its buffered logger, against a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from service.client import InvalidInputError, LossClient, NotFoundError
from tests.servers import HANG, free_port, served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("store")
    with served(env={"LOSS_SERVICE_STORE_URL": f"sqlite:///{directory}/store.sqlite3"}) as base:
        yield base


def test_configure_log_and_read_back_in_chunks(url: str) -> None:
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(50, 4)), rng.integers(0, 4, 50)
    weights = rng.uniform(0.5, 2.0, 50)
    with LossClient(url, chunk_size=7) as client:
        config = client.configure_model(
            "chunked", [{"loss": "scce", "options": {"from_logits": True}}], convention="torch"
        )
        assert config["losses"][0]["loss"] == "sparse_categorical_crossentropy"
        first = client.log_predictions("chunked", np.arange(50), logits)
        assert (first.accepted, first.joined_ids, first.results) == (50, [], [])
        joined = client.log_labels("chunked", [str(i) for i in range(50)], labels, sample_weight=weights)
        assert joined.joined_ids == [str(i) for i in range(50)]
        (result,) = joined.results
        whole = client.loss("scce", logits, labels, sample_weight=weights, convention="torch", from_logits=True)
        np.testing.assert_array_equal(result.per_sample, whole.per_sample)
        assert result.mean == pytest.approx(whole.mean, rel=1e-15)  # chunks combine sum / denominator
        assert (result.denominator, result.count) == (whole.denominator, 50)
        again = client.log_labels("chunked", range(50), labels)
        assert (again.accepted, again.duplicates, len(again.duplicate_ids)) == (0, 50, 50)
        status = client.model_status("chunked")
        assert (status["joined"], status["pending_predictions"]) == (50, 0)
        assert "chunked" in [m["model"] for m in client.models()]
        client.delete_model("chunked")
        with pytest.raises(NotFoundError):
            client.model_status("chunked")
        with pytest.raises(InvalidInputError) as refused:
            client.configure_model("bad", [{"loss": "nope"}])
        assert refused.value.errors[0]["loc"][:3] == ["body", "losses", 0]


class AnswerLost(httpx.BaseTransport):
    """Delivers each request to the server, then loses the first answer to every path, as a
    dropped connection would after the server committed."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost: set[str] = set()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        if request.method == "POST" and request.url.path not in self.lost:
            self.lost.add(request.url.path)
            raise httpx.ReadError("connection reset after the server answered", request=request)
        return response


def test_a_log_whose_answer_was_lost_is_retried_and_recorded_once(url: str) -> None:
    with LossClient(url, transport=AnswerLost(), backoff=0.01) as client:
        client.configure_model("retried", ["mse"])
        client.log_predictions("retried", ["a", "b"], [[1.0], [2.0]])
        retried = client.log_labels("retried", ["a", "b"], [[1.5], [2.0]])
    # The first attempt joined both pairs; the retry finds them as duplicates.
    assert (retried.accepted, retried.duplicates, retried.joined_ids) == (0, 2, [])
    text = httpx.get(f"{url}/metrics", timeout=HANG).text
    assert 'loss_service_joined_total{model="retried"} 2.0' in text
    assert 'loss_service_samples_total{loss="mean_squared_error",model="retried"} 2.0' in text


def test_the_logger_batches_by_size_and_age_and_flushes_on_close(url: str) -> None:
    with LossClient(url) as client:
        client.configure_model("logged", [{"loss": "scce", "options": {"from_logits": True}}])
        with client.logger("logged", batch_size=100, max_delay=0.2, close_timeout=HANG) as log:
            for i in range(250):
                assert log.prediction(f"p{i}", [0.0, float(i % 3), 1.0])
            deadline = time.monotonic() + 10
            while client.model_status("logged")["pending_predictions"] < 250 and time.monotonic() < deadline:
                time.sleep(0.05)  # 200 go by size, the last 50 by age
            assert client.model_status("logged")["pending_predictions"] == 250
            for i in range(250):
                log.label(f"p{i}", i % 3)
            log.label("p0", 2)  # already buffered: the first is kept
        stats = log.stats
        assert (stats.sent_predictions, stats.sent_labels, stats.joined, stats.duplicates) == (250, 250, 250, 1)
        assert (stats.dropped_predictions, stats.dropped_labels, stats.rejected) == (0, 0, 0)
        assert client.model_status("logged")["joined"] == 250


def test_the_logger_bounds_memory_and_counts_what_it_dropped() -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    with LossClient(unreachable, retries=0) as client:
        log = client.logger("m", batch_size=10, max_buffered=100, close_timeout=0.3, retry_interval=0.05)
        accepted = [log.prediction(i, [1.0]) for i in range(150)]
        stats = log.close()
    assert accepted.count(False) == 50
    assert (stats.dropped_predictions, stats.sent_predictions) == (150, 0)
    assert stats.failed_attempts > 0
    assert "Unreachable" in (stats.last_error or "")


def test_the_logger_counts_batches_the_service_refuses(url: str) -> None:
    with LossClient(url) as client:
        client.configure_model("refusing", ["mse"])
        with client.logger("refusing", batch_size=2, max_delay=0.05, close_timeout=HANG) as log:
            log.prediction("ok", [1.0])
            log.prediction("nan", [float("nan")])
            log.prediction("fine", [2.0])
        assert (log.stats.rejected, log.stats.sent_predictions) == (2, 1)
        with client.logger("no-such-model", max_delay=0.05, close_timeout=HANG) as log:
            log.label("a", 1)
        assert log.stats.rejected == 1


def test_segments_go_with_their_rows_in_chunks_and_the_history_reads_them_back(url: str) -> None:
    """Segment values cut with their chunk: each country's history mean is the naive float64 mean
    of its own rows' squared errors (a chunk that shifted its values would mix countries)."""
    rng = np.random.default_rng(11)
    predictions, labels = rng.normal(size=23), rng.normal(size=23)
    countries = [["BR", "US", None][i % 3] for i in range(23)]
    now = time.time()
    with LossClient(url, chunk_size=5) as client:
        config = client.configure_model("segmented", ["mse"], segments=["country"], keep_pairs=True)
        assert (config["segments"], config["keep_pairs"]) == (["country"], True)
        client.log_predictions("segmented", np.arange(23), predictions[:, None], segments={"country": countries})
        client.log_labels("segmented", np.arange(23), labels[:, None])
        history = client.history("segmented", start=now - 3600, end=now + 3600, step=7200, by="country")
        with pytest.raises(ValueError, match="one value per id"):
            client.log_predictions("segmented", [1, 2], [[0.0], [0.0]], segments={"country": ["BR"]})
    means = {bucket["segment"]: bucket["losses"][0]["mean"] for bucket in history["buckets"]}
    errors = (predictions - labels) ** 2
    expected = {c: float(np.mean([e for e, k in zip(errors, countries, strict=True) if k == c])) for c in means}
    assert set(means) == {"BR", "US", None}
    assert means == pytest.approx(expected, rel=1e-12)


def test_a_challenger_compared_through_the_client_gets_the_champions_labels(url: str) -> None:
    """Labels logged once for the champion join the challenger; the comparison's means are the
    naive float64 means of each model's squared errors over the ids both joined."""
    rng = np.random.default_rng(3)
    labels, champion, challenger = rng.normal(size=(3, 40))
    now = time.time()
    with LossClient(url, chunk_size=15) as client:
        client.configure_model("champion-c", ["mse"])
        config = client.configure_model("challenger-c", ["mse"], labels_from="champion-c", compare_to=["champion-c"])
        assert (config["labels_from"], config["compare_to"]) == ("champion-c", ["champion-c"])
        client.log_predictions("champion-c", np.arange(40), champion[:, None])
        client.log_predictions("challenger-c", np.arange(30), challenger[:30, None])
        logged = client.log_labels("champion-c", np.arange(40), labels[:, None])
        answer = client.compare("challenger-c", "champion-c", start=now - 60, end=now + 60, loss="mse", step=30)
    assert len(logged.joined_ids) == 40
    assert logged.followers == [
        {
            "model": "challenger-c",
            "accepted": 40,
            "duplicates": 0,
            "joined": 30,
            "pending_predictions": 0,
            "pending_labels": 10,
        }
    ]
    assert answer["n"] == 30
    mine, theirs = (challenger[:30] - labels[:30]) ** 2, (champion[:30] - labels[:30]) ** 2
    assert answer["challenger"]["mean"] == pytest.approx(float(np.mean(mine)), rel=1e-12)
    assert answer["champion"]["mean"] == pytest.approx(float(np.mean(theirs)), rel=1e-12)
    assert answer["sequence"][-1]["n"] == 30
