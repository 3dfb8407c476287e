"""A small request's cost inside the app: the ASGI app called directly, no server, no socket.

    python bench/inprocess.py        (also run by `make bench`)

Each app gets the same 32 x 10 cross-entropy-from-logits request, 1,000 times per round after a
warm-up; rounds go through the apps in turns, and the median of the rounds' per-request means is
printed. loss-service runs as it serves by default (access log on, written to a temporary file),
beside the bare FastAPI app and the unvalidated NumPy endpoint of `bench/serving.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["LOSS_SERVICE_LOG_LEVEL"] = "info"  # the default: one access line per request

from bench import bare_app, minimal_app
from service.config import Settings
from service.server.app import create_app
from service.server.monitoring import BatchedStderr, access_log

ROUNDS, PER_ROUND = 9, 1000
Call = Callable[[], Coroutine[Any, Any, None]]


def bodies() -> dict[str, tuple[str, bytes]]:
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(32, 10)), rng.integers(0, 10, 32)
    v1 = {"loss": "scce", "predictions": logits.tolist(), "labels": labels.tolist(), "options": {"from_logits": True}}
    oip = {
        "inputs": [
            {"name": "predictions", "shape": [32, 10], "datatype": "FP64", "data": logits.ravel().tolist()},
            {"name": "labels", "shape": [32], "datatype": "INT64", "data": labels.tolist()},
        ],
        "parameters": {"from_logits": True},
    }
    return {"v1": ("/v1/loss", orjson.dumps(v1)), "OIP": ("/v2/models/scce/infer", orjson.dumps(oip))}


def caller(app: Any, path: str, body: bytes) -> Call:
    """One POST through the ASGI app, as uvicorn would make it."""
    headers = [(b"host", b"bench"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def call() -> None:
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"{path} answered {sent[0]['status']}: {sent[-1].get('body', b'')[:300]!r}")

    return call


async def per_request_us(calls: dict[str, Call]) -> dict[str, float]:
    for call in calls.values():
        for _ in range(PER_ROUND):
            await call()
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(ROUNDS):
        for name, call in calls.items():
            started = time.perf_counter()
            for _ in range(PER_ROUND):
                await call()
            rounds[name].append((time.perf_counter() - started) / PER_ROUND * 1e6)
    return {name: statistics.median(values) for name, values in rounds.items()}


async def main() -> None:
    with tempfile.TemporaryFile("w") as log_file:
        app = create_app(Settings())
        handler = next(h for h in access_log.handlers if isinstance(h, BatchedStderr))
        handler.setStream(log_file)  # the lines are written, as a log collector would read them
        logging.getLogger("service.app").setLevel(logging.ERROR)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(app.router.lifespan_context(app))
            calls = {}
            for name, (path, body) in bodies().items():
                calls[f"loss-service, {name}"] = caller(app, path, body)
            v1_body = bodies()["v1"][1]
            calls["bare FastAPI"] = caller(bare_app.app, "/v1/loss", v1_body)
            calls["unvalidated NumPy endpoint"] = caller(minimal_app.app, "/v1/loss", v1_body)
            results = await per_request_us(calls)
    print(f"# In-process, 32 x 10 cross-entropy from logits: median of {ROUNDS} rounds of {PER_ROUND:,} requests\n")
    print("| app | µs per request |")
    print("|---|---|")
    for name, us in results.items():
        print(f"| {name} | {us:.0f} |")


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
