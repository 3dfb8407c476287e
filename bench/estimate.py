"""What estimating a model's losses before their labels costs its logging, and what the estimate
job costs a run, in-process (the ASGI app called directly) over a SQLite store.

    PYTHONPATH=. python bench/estimate.py [--rounds 30] [--store-dir DIR]

1. Logging: a batch of 1,000 x 10 float32 predictions (logits, sparse categorical cross-entropy
   from_logits under PyTorch's convention; and probabilities, Keras's sparse categorical
   cross-entropy) logged under fresh ids, then the 1,000 labels that join them, in turns to a
   model without `estimate` (the baseline) and to the same model with `"estimate": {}` (its
   own probabilities as the belief). The join computes the pairs' losses and, with `estimate`,
   their expected moments (`estimates.pair_moments`). Medians over the rounds, the ratio of the
   estimated model's time to the baseline's, per request and for the pair of requests, and the
   median of the rounds' own ratios (each round logs to both models, in alternating order, so
   that a slow moment of a shared machine weighs on both); /v1/loss on the same batch for scale;
   and the time the join spends in `pair_moments` (the expected moments), timed around it.
2. The estimate job: one run (`upkeep.estimate_configured`) over the estimated models, each
   holding the rounds' joined pairs and one batch of 1,000 pending predictions in the last hour.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import Settings  # noqa: E402
from service.usecases import ingest  # noqa: E402
from service.usecases.estimates import estimated  # noqa: E402
from service.usecases.upkeep import estimate_configured, store_threads  # noqa: E402
from tests.apps import AppClient, app_client  # noqa: E402

ROWS, CLASSES = 1_000, 10
CASES = {
    "logits": {
        "losses": [{"loss": "sparse_categorical_crossentropy", "options": {"from_logits": True}}],
        "convention": "torch",
        "dtype": "float32",
    },
    "probabilities": {
        "losses": [{"loss": "sparse_categorical_crossentropy"}],
        "convention": "keras",
        "dtype": "float32",
    },
}


def batch(case: str, rng: np.random.Generator) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    z = rng.normal(size=(ROWS, CLASSES)).astype(np.float32) * 2
    if case == "probabilities":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        z = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return z, rng.integers(0, CLASSES, ROWS)


async def timed(api: AppClient, url: str, body: bytes) -> float:
    started = time.perf_counter()
    response = await api.post(url, content=body, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{url}: {response.status_code} {response.text[:300]}")
    return elapsed


MOMENTS_SECONDS: list[float] = []


def timed_pair_moments() -> None:
    """Time each call of `pair_moments` the join of an estimated model makes (into MOMENTS_SECONDS)."""
    real = ingest.pair_moments

    def timed(model: Any, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return real(model, *args)
        finally:
            if estimated(model):
                MOMENTS_SECONDS.append(time.perf_counter() - started)

    ingest.pair_moments = timed  # type: ignore[assignment]


async def run(rounds: int, store_dir: str) -> None:
    timed_pair_moments()
    settings = Settings(store_url=f"sqlite:///{store_dir}/store.sqlite3", estimate_interval=86400.0)
    rng = np.random.default_rng(1)
    async with app_client(settings) as api:
        for case, config in CASES.items():
            for estimated in (False, True):
                body = config | ({"estimate": {}} if estimated else {})
                response = await api.put(f"/v1/models/{case}-{int(estimated)}", json=body)
                if response.status_code not in (200, 201):
                    raise SystemExit(response.text)
        print(f"{ROWS:,} x {CLASSES} float32 per batch, {rounds} rounds, medians in ms (in-process, SQLite)")
        print(f"{'case':<14} {'request':<12} {'plain':>8} {'estimate':>9} {'ratio':>6} {'per round':>9}")
        for case, config in CASES.items():
            times: dict[tuple[bool, str], list[float]] = {}
            loss = {"loss": config["losses"][0]["loss"], "options": config["losses"][0].get("options", {})}
            baseline = []
            MOMENTS_SECONDS.clear()
            for r in range(rounds + 1):  # the first round warms up
                z, labels = batch(case, rng)
                ids = [f"r{r}-{i}" for i in range(ROWS)]
                predictions = orjson.dumps({"ids": ids, "predictions": z.tolist()})
                joined = orjson.dumps({"ids": ids, "labels": labels.tolist()})
                plain_loss = orjson.dumps(
                    loss | {"convention": config["convention"], "predictions": z.tolist(), "labels": labels.tolist()}
                )
                order = (False, True) if r % 2 else (True, False)
                for estimated in order:
                    name = f"/v1/models/{case}-{int(estimated)}"
                    first = await timed(api, f"{name}/predictions", predictions)
                    second = await timed(api, f"{name}/labels", joined)
                    if r:
                        for kind, value in (("predictions", first), ("labels", second), ("both", first + second)):
                            times.setdefault((estimated, kind), []).append(value)
                spent = await timed(api, "/v1/loss", plain_loss)
                if r:
                    baseline.append(spent)
            for kind in ("predictions", "labels", "both"):
                plain = statistics.median(times[(False, kind)]) * 1e3
                mine = statistics.median(times[(True, kind)]) * 1e3
                rounds_ratios = zip(times[(True, kind)], times[(False, kind)], strict=True)
                paired = statistics.median(a / b for a, b in rounds_ratios)
                print(f"{case:<14} {kind:<12} {plain:>8.2f} {mine:>9.2f} {mine / plain:>6.2f} {paired:>9.2f}")
            print(f"{case:<14} {'/v1/loss':<12} {statistics.median(baseline) * 1e3:>8.2f}")
            moments = statistics.median(MOMENTS_SECONDS[1:]) * 1e3  # the warm-up round's first
            print(f"{case:<14} {'pair_moments':<12} {'':>8} {moments:>9.2f}")
        # One more batch per estimated model, left pending: the job estimates it from its rows.
        for case in CASES:
            z, _ = batch(case, rng)
            ids = [f"pending-{i}" for i in range(ROWS)]
            await timed(api, f"/v1/models/{case}-1/predictions", orjson.dumps({"ids": ids, "predictions": z.tolist()}))
        state = api.app.state
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            found = await estimate_configured(state.store, store_threads(state), time.time(), 86400.0)
            runs.append(time.perf_counter() - started)
        pairs = sum(row.pairs for row in found)
        print(
            f"\nestimate job, one run over {len(found)} models ({pairs:,} joined pairs, {len(CASES) * ROWS:,} pending "
            f"in the last hour): median {statistics.median(runs) * 1e3:.1f} ms of 5"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--store-dir", default=None, help="the SQLite store's directory (default: a temporary one)")
    args = parser.parse_args()
    if args.store_dir is not None:
        asyncio.run(run(args.rounds, args.store_dir))
        return
    with tempfile.TemporaryDirectory() as store_dir:
        asyncio.run(run(args.rounds, store_dir))


if __name__ == "__main__":
    main()
