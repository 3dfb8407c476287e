"""A real `loss-service serve` process on a free loopback port."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.servers import HANG, served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with served() as base:
        yield base


def test_served_loss_matches_the_contract(url: str) -> None:
    body = {"loss": "scce", "predictions": [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], "labels": [1, 2], "dtype": "float32"}
    response = httpx.post(f"{url}/v1/loss", json=body, timeout=HANG)
    assert response.status_code == 200
    assert response.json()["mean"] == 1.1769392490386963


def test_served_large_batch_runs_off_the_event_loop(url: str) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5000, 20))
    labels = rng.integers(0, 20, 5000)
    body = {"loss": "scce", "predictions": logits.tolist(), "labels": labels.tolist(), "options": {"from_logits": True}}
    response = httpx.post(f"{url}/v1/loss", json=body, timeout=HANG)
    assert response.status_code == 200
    assert response.json()["count"] == 5000


def test_served_errors_are_problem_json(url: str) -> None:
    response = httpx.post(f"{url}/v1/loss", content=b"{", headers={"content-type": "application/json"}, timeout=HANG)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


def test_a_client_that_stalls_mid_body_gets_408_and_the_connection_closes() -> None:
    with served(env={"LOSS_SERVICE_REQUEST_TIMEOUT": "0.5"}) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=HANG) as connection:
            connection.sendall(
                b"POST /v1/loss HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"loss": "mse", '
            )
            received = b""
            while chunk := connection.recv(65536):  # b"" once the server closes the connection
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert b"connection: close" in head.lower()
        assert b"did not arrive within 0.5 s" in body
        assert (
            httpx.post(
                f"{base}/v1/loss", json={"loss": "mse", "predictions": [1.0], "labels": [2.0]}, timeout=HANG
            ).json()["mean"]
            == 1.0
        )
