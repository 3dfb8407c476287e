"""A real `loss-service serve` process on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("server did not become ready")


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    port = free_port()
    executable = shutil.which("loss-service", path=str(Path(sys.executable).parent)) or "loss-service"
    process = subprocess.Popen(
        [executable, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "LOSS_SERVICE_LOG_LEVEL": "warning"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


def test_served_loss_matches_the_contract(served: str) -> None:
    body = {"loss": "scce", "predictions": [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], "labels": [1, 2], "dtype": "float32"}
    response = httpx.post(f"{served}/v1/loss", json=body)
    assert response.status_code == 200
    assert response.json()["mean"] == 1.1769392490386963


def test_served_large_batch_runs_off_the_event_loop(served: str) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5000, 20))
    labels = rng.integers(0, 20, 5000)
    body = {"loss": "scce", "predictions": logits.tolist(), "labels": labels.tolist(), "options": {"from_logits": True}}
    response = httpx.post(f"{served}/v1/loss", json=body, timeout=30)
    assert response.status_code == 200
    assert response.json()["count"] == 5000


def test_served_errors_are_problem_json(served: str) -> None:
    response = httpx.post(f"{served}/v1/loss", content=b"{", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
