"""A small request's cost with the OTLP metrics export on and off, in-process (as bench/inprocess.py).

    python bench/otlp.py

Two apps, one with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a local receiver that answers 200 to
every export (every 60 s, the SDK's default interval) and one without, take the same requests in
turns: /v1/loss of 32 x 10 cross-entropy from logits, and of 1,000 x 10 (batches above 16 values
are recorded with NumPy, smaller ones value by value). The median of the rounds' per-request
means is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["LOSS_SERVICE_LOG_LEVEL"] = "info"

from bench.inprocess import caller, per_request_us
from service.config import Settings
from service.server.app import create_app
from service.server.monitoring import BatchedStderr, access_log


class Accept(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def body(rows: int) -> bytes:
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(rows, 10)), rng.integers(0, 10, rows)
    return orjson.dumps(
        {"loss": "scce", "predictions": logits.tolist(), "labels": labels.tolist(), "options": {"from_logits": True}}
    )


async def main() -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Accept)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with tempfile.TemporaryFile("w") as log_file, tempfile.TemporaryDirectory() as store:
        apps = {}
        for name, endpoint in (("off", None), ("on", f"http://127.0.0.1:{receiver.server_address[1]}")):
            os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            if endpoint:
                os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
            apps[name] = create_app(Settings(store_url=f"sqlite:///{store}/{name}.sqlite3"))
        handler = next(h for h in access_log.handlers if isinstance(h, BatchedStderr))
        handler.setStream(log_file)
        logging.getLogger("service.app").setLevel(logging.ERROR)
        async with contextlib.AsyncExitStack() as stack:
            for app in apps.values():
                await stack.enter_async_context(app.router.lifespan_context(app))
            assert apps["on"].state.otlp is not None
            assert apps["off"].state.otlp is None
            calls = {
                f"{rows} x 10, OTLP {name}": caller(app, "/v1/loss", body(rows))
                for rows in (32, 1000)
                for name, app in apps.items()
            }
            results = await per_request_us(calls)
    receiver.shutdown()
    print("| request | µs per request |")
    print("|---|---|")
    for name, us in results.items():
        print(f"| {name} | {us:.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
