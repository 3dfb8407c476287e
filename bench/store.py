"""Delayed labels: what storing and joining cost, as ratios to /v1/loss on the same batch.

    make bench-store      (PostgreSQL from Debian's postgresql package; SQLite always)

One `loss-service serve` per database, side by side, measured in turns over HTTP on loopback:
- /v1/loss on a batch of 1,000 x 10 float32 logits (JSON), the baseline;
- logging those 1,000 predictions under fresh ids (stored, nothing to join);
- logging their 1,000 labels (each joins its prediction; the loss is computed and returned).
Then 10^6 pending rows of 10 float32 are stored and the database's size is read, against the
40 MB their values take. Medians over the rounds; ratios from numbers of this same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
# The servers started here run this checkout's code, whatever the interpreter has installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(ROOT))

from tests import postgres  # noqa: E402
from tests.servers import free_port, wait_for  # noqa: E402

CONFIG = {"losses": [{"loss": "scce", "options": {"from_logits": True}}], "dtype": "float32", "convention": "torch"}
ROWS, CLASSES = 1_000, 10


@contextmanager
def server(store_url: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "loss-service"), "serve", "--port", str(port)],
        env={**os.environ, "LOSS_SERVICE_LOG_LEVEL": "warning", "LOSS_SERVICE_STORE_URL": store_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/readyz", process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def timed(http: httpx.Client, url: str, body: bytes) -> float:
    started = time.perf_counter()
    response = http.post(url, content=body, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def measure(urls: dict[str, str], rounds: int) -> dict[str, dict[str, list[float]]]:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(ROWS, CLASSES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, ROWS)
    loss = orjson.dumps(
        {"loss": "scce", "predictions": logits, "labels": labels, "options": {"from_logits": True}, "dtype": "float32"},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    times: dict[str, dict[str, list[float]]] = {name: {"loss": [], "log": [], "join": []} for name in urls}
    with httpx.Client(timeout=60) as http:
        for url in urls.values():
            http.put(f"{url}/v1/models/bench", json=CONFIG).raise_for_status()
        for round_ in range(rounds + 2):  # two rounds of warm-up
            ids = [f"r{round_}-{i}" for i in range(ROWS)]
            predictions = orjson.dumps({"ids": ids, "predictions": logits}, option=orjson.OPT_SERIALIZE_NUMPY)
            answers = orjson.dumps({"ids": ids, "labels": labels}, option=orjson.OPT_SERIALIZE_NUMPY)
            for name, url in urls.items():
                sample = {
                    "loss": timed(http, f"{url}/v1/loss", loss),
                    "log": timed(http, f"{url}/v1/models/bench/predictions", predictions),
                    "join": timed(http, f"{url}/v1/models/bench/labels", answers),
                }
                if round_ >= 2:
                    for key, value in sample.items():
                        times[name][key].append(value)
    return times


def stored_bytes(store: str, url: str, directory: Path | None) -> int:
    """Fill a fresh model with 10^6 pending rows of 10 float32 through the store, then measure."""
    from service.store import Store

    opened = Store.open(url)
    opened.configure_model("disk", CONFIG, 86400.0, now=0.0)
    rows = np.random.default_rng(1).random((100_000, CLASSES), dtype=np.float32)
    for start in range(0, 1_000_000, 100_000):
        ids = [str(i) for i in range(start, start + 100_000)]
        opened.log("predictions", "disk", ids, rows, now=1.0, max_pending=10**7, on_join=lambda *_: None)
    opened.close()
    if store == "sqlite":
        assert directory is not None
        return sum(path.stat().st_size for path in directory.iterdir())
    import psycopg

    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT sum(pg_total_relation_size(c)) FROM unnest(ARRAY['loss_predictions', 'loss_labels', "
            "'loss_models']::regclass[]) AS c"
        ).fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    import tempfile

    with contextlib.ExitStack() as stack:
        directory = Path(tempfile.mkdtemp(prefix="loss-service-bench-"))
        stores = {"sqlite": f"sqlite:///{directory}/http.sqlite3"}
        if postgres.binaries() is not None:
            cluster = stack.enter_context(postgres.cluster(fsync=True))
            stores["postgresql"] = postgres.fresh_database(cluster)
        else:
            print(f"PostgreSQL skipped: {postgres.MISSING}")
        urls = {name: stack.enter_context(server(url)) for name, url in stores.items()}
        times = measure(urls, args.rounds)
        print(f"# {ROWS:,} x {CLASSES} float32, one worker per server, median of {args.rounds} rounds, loopback")
        print("| store | /v1/loss | log predictions | ratio | log labels (join) | ratio |")
        print("|---|---|---|---|---|---|")
        for name, measured in times.items():
            loss, log, join = (statistics.median(measured[k]) * 1e3 for k in ("loss", "log", "join"))
            print(f"| {name} | {loss:.2f} ms | {log:.2f} ms | {log / loss:.2f}x | {join:.2f} ms | {join / loss:.2f}x |")
        print()
        print("| store | 10^6 pending rows of 10 float32 on disk | ratio to their 40 MB |")
        print("|---|---|---|")
        disk_dir = Path(tempfile.mkdtemp(prefix="loss-service-bench-disk-"))
        disk = {"sqlite": (f"sqlite:///{disk_dir}/disk.sqlite3", disk_dir)}
        if "postgresql" in stores:
            disk["postgresql"] = (postgres.fresh_database(cluster), None)
        for name, (url, where) in disk.items():
            size = stored_bytes(name, url, where)
            print(f"| {name} | {size / 1e6:.1f} MB | {size / 40e6:.2f}x |")


if __name__ == "__main__":
    main()
