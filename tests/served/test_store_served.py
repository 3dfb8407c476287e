"""Delayed labels on real servers: workers and replicas racing, and a kill right after an answer."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import HANG, free_port, loss_service_executable, serving, wait_for

pytestmark = pytest.mark.slow
CONFIG = {"losses": [{"loss": "scce", "options": {"from_logits": True}}], "convention": "torch"}
N = 300


def joined_in_metrics(urls: list[str]) -> tuple[float, float]:
    """Pairs joined and per-sample losses recorded, summed over every server's /metrics."""
    joined = samples = 0.0
    for url in urls:
        text = httpx.get(f"{url}/metrics", timeout=HANG).text
        joined += sum(float(v) for v in re.findall(r'^loss_service_joined_total\{model="race"\} (\S+)$', text, re.M))
        samples += sum(
            float(v) for v in re.findall(r'^loss_service_samples_total\{[^}]*model="race"[^}]*\} (\S+)$', text, re.M)
        )
    return joined, samples


def race(urls: list[str]) -> None:
    """8 clients post the same labels, in different orders and batches, to every server at once."""
    ids = list(range(N))
    httpx.put(f"{urls[0]}/v1/models/race", json=CONFIG, timeout=HANG).raise_for_status()
    logits = np.random.default_rng(0).normal(size=(N, 3)).tolist()
    httpx.post(
        f"{urls[0]}/v1/models/race/predictions", json={"ids": ids, "predictions": logits}, timeout=HANG
    ).raise_for_status()

    def client(seed: int) -> int:
        rng = np.random.default_rng(seed)
        order = rng.permutation(N).tolist()
        joined = 0
        with httpx.Client(timeout=HANG) as http:
            for start in range(0, N, 25):
                batch = order[start : start + 25]
                url = urls[(seed + start) % len(urls)]
                answer = http.post(
                    f"{url}/v1/models/race/labels", json={"ids": batch, "labels": [i % 3 for i in batch]}
                )
                answer.raise_for_status()
                joined += answer.json()["joined"]
        return joined

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answered = sum(pool.map(client, range(8)))
    assert answered == N, "each pair joined by exactly one answer"
    assert joined_in_metrics(urls) == (N, N), "each pair recorded exactly once in /metrics"
    status = httpx.get(f"{urls[0]}/v1/models/race", timeout=HANG).json()
    assert (status["joined"], status["pending_predictions"], status["pending_labels"]) == (N, 0, 0)


def test_two_workers_on_one_sqlite_file_record_every_pair_once(tmp_path: Path) -> None:
    env = {"LOSS_SERVICE_STORE_URL": f"sqlite:///{tmp_path}/store.sqlite3"}
    with serving("--workers", "2", env=env) as (url, _):
        race([url])


def test_two_servers_sharing_postgresql_record_every_pair_once(postgres_url: str) -> None:
    env = {"LOSS_SERVICE_STORE_URL": postgres_url}
    with serving(env=env) as (first, _), serving(env=env) as (second, _):
        race([first, second])


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_server_killed_right_after_answering_loses_nothing(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path}/store.sqlite3" if database == "sqlite" else request.getfixturevalue("postgres_url")
    env = {"LOSS_SERVICE_STORE_URL": url}
    port = free_port()
    process = subprocess.Popen(
        [loss_service_executable(), "serve", "--port", str(port)],
        env={**os.environ, "LOSS_SERVICE_LOG_LEVEL": "warning", **env},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/readyz", process)
        httpx.put(f"{base}/v1/models/m", json=CONFIG, timeout=HANG).raise_for_status()
        answer = httpx.post(
            f"{base}/v1/models/m/predictions",
            json={"ids": ["a", "b"], "predictions": [[1.0, 2.0, 3.0]] * 2},
            timeout=HANG,
        )
        answer.raise_for_status()
        answer = httpx.post(f"{base}/v1/models/m/labels", json={"ids": ["a"], "labels": [2]}, timeout=HANG)
        assert answer.json()["joined"] == 1
        process.send_signal(signal.SIGKILL)  # no shutdown, no chance to flush anything
    finally:
        process.kill()
        process.wait()
    with serving(env=env) as (base, _):
        status = httpx.get(f"{base}/v1/models/m", timeout=HANG).json()
        assert (status["pending_predictions"], status["joined"]) == (1, 1)
        answer = httpx.post(
            f"{base}/v1/models/m/labels", json={"ids": ["a", "b"], "labels": [2, 0]}, timeout=HANG
        ).json()
        assert (answer["duplicate_ids"], answer["joined_ids"]) == (["a"], ["b"])
