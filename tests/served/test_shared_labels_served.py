"""Shared labels on real servers: a champion's labels and two models' predictions racing through
two workers, on SQLite and PostgreSQL; every (model, id) pair joins exactly once."""

from __future__ import annotations

import concurrent.futures
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import HANG, serving

pytestmark = pytest.mark.slow
CONFIG = {"losses": [{"loss": "scce", "options": {"from_logits": True}}], "convention": "torch"}
N, BATCH = 300, 25
MODELS = ("champion", "challenger")


def joined_in_metrics(url: str, model: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=HANG).text
    pattern = rf'^loss_service_joined_total\{{model="{model}"\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def race(url: str) -> None:
    """8 clients: two post the champion's labels, three each model's predictions, in their own
    orders and batches, all at once; the challenger takes its labels from the champion."""
    httpx.put(f"{url}/v1/models/champion", json=CONFIG, timeout=HANG).raise_for_status()
    follower = {**CONFIG, "labels_from": "champion", "compare_to": ["champion"]}
    httpx.put(f"{url}/v1/models/challenger", json=follower, timeout=HANG).raise_for_status()
    logits = {model: np.random.default_rng(seed).normal(size=(N, 3)).tolist() for seed, model in enumerate(MODELS)}

    def client(seed: int) -> dict[str, int]:
        rng = np.random.default_rng(seed)
        order = rng.permutation(N).tolist()
        joined = dict.fromkeys(MODELS, 0)
        role = ("labels", "labels", "champion", "champion", "champion", "challenger", "challenger", "challenger")[seed]
        with httpx.Client(timeout=HANG) as http:
            for start in range(0, N, BATCH):
                batch = order[start : start + BATCH]
                if role == "labels":
                    body = {"ids": batch, "labels": [i % 3 for i in batch]}
                    answer = http.post(f"{url}/v1/models/champion/labels", json=body)
                    answer.raise_for_status()
                    joined["champion"] += answer.json()["joined"]
                    for theirs in answer.json().get("followers", []):
                        joined[theirs["model"]] += theirs["joined"]
                else:
                    body = {"ids": batch, "predictions": [logits[role][i] for i in batch]}
                    answer = http.post(f"{url}/v1/models/{role}/predictions", json=body)
                    answer.raise_for_status()
                    joined[role] += answer.json()["joined"]
        return joined

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(client, range(8)))
    for model in MODELS:
        assert sum(a[model] for a in answers) == N, f"each {model} pair joined by exactly one answer"
        assert joined_in_metrics(url, model) == N, f"each {model} pair recorded once in /metrics"
        status = httpx.get(f"{url}/v1/models/{model}", timeout=HANG).json()
        assert (status["joined"], status["pending_predictions"], status["pending_labels"]) == (N, 0, 0)
    compared = httpx.get(f"{url}/v1/models/challenger/compare/champion", timeout=HANG).json()
    assert compared["n"] == N


def test_two_workers_on_one_sqlite_file_share_labels_exactly_once(tmp_path: Path) -> None:
    with serving("--workers", "2", env={"LOSS_SERVICE_STORE_URL": f"sqlite:///{tmp_path}/store.sqlite3"}) as (url, _):
        race(url)


def test_two_workers_on_postgresql_share_labels_exactly_once(postgres_url: str) -> None:
    with serving("--workers", "2", env={"LOSS_SERVICE_STORE_URL": postgres_url}) as (url, _):
        race(url)
