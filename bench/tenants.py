"""One tenant against the others: another model's writes and a key revocation under a read storm
and a retention sweep, against a baseline measured in the same run.

    make bench-tenants    (or: .venv/bin/python bench/tenants.py [--seconds 20] [--stores sqlite])

Per database, one `loss-service serve` (one worker) over a store prepared beforehand with
- model `status`: 10^6 joined rows (and one pending);
- model `old`: 2*10^6 joined rows, kept until its retention is cut to 1 s (sweep interval 1 s);
- model `writes`: where one client logs single-row predictions, one request at a time.

1. Baseline: 200 status reads one at a time; the writer alone for `--seconds / 2`; a key is
   revoked (the keys file rewritten) and polled every 20 ms until it gets 401.
2. Readers: 64 clients (another process, raw keep-alive sockets) loop on GET
   /v1/models/status; the writer runs again for `--seconds / 2`.
3. Readers and sweep: the retention of `old` is cut so that the sweep of its 2*10^6 rows starts,
   the readers go on and the writer runs for `--seconds`; a second key is revoked mid-way and
   timed the same way.

Printed: the writer's p50/p99/max in each phase, the status reads served, the rows the sweep
removed meanwhile, and each revocation's delay (the keys file is checked once a second).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.server.api.access import digest  # noqa: E402
from service.store import Store  # noqa: E402
from service.store.schema import row_bytes_sql  # noqa: E402
from tests import postgres  # noqa: E402
from tests.raw_http import Connection  # noqa: E402
from tests.servers import free_port, wait_for  # noqa: E402

CONFIG = {"losses": [{"loss": "mse", "options": {}}], "convention": "keras", "dtype": "float64"}
READERS = 64
JOINED, SWEPT = 1_000_000, 2_000_000
KEYS = {
    "admin": ("admin-key-0123456789", ["compute", "ingest", "read", "admin"]),
    "readers": ("readers-key-01234567", ["read"]),
    "writer": ("writer-key-012345678", ["ingest"]),
    "victim-1": ("victim-key-1-0123456", ["compute", "read"]),
    "victim-2": ("victim-key-2-0123456", ["compute", "read"]),
}


def keys_toml(names: list[str]) -> str:
    return "\n".join(
        f'[[keys]]\nname = "{name}"\nkey_sha256 = "{digest(KEYS[name][0])}"\n'
        f"scopes = {orjson.dumps(KEYS[name][1]).decode()}\n"
        for name in names
    )


def bearer(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name][0]}"}


def prepare(url: str) -> None:
    """The three models and their rows, written straight into the tables (minutes saved): rows
    that arrived one a second up to now, within the models' retention of 10^9 s, and one pending
    row of `status`, the newest."""
    store = Store.open(url)
    now = time.time()
    try:
        for name in ("status", "old", "writes"):
            store.configure_model(name, CONFIG, 10.0**9, now=now)
        sqlite = store.database.dialect.name == "sqlite"
        for name, count in (("status", JOINED), ("old", SWEPT)):
            with store.database.transaction() as tx:
                found = tx.one("SELECT id FROM loss_models WHERE name = ?", [name])
                assert found is not None
                numbers = (
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) SELECT i FROM n"
                    if sqlite
                    else "SELECT i FROM generate_series(1, ?) AS i"
                )
                tx.execute(
                    "INSERT INTO loss_predictions (model_id, id, arrived, joined_at, dtype) "
                    f"SELECT ?, 'j' || i, ? - ? + i, ? - ? + i, 0 FROM ({numbers}) AS numbers",
                    [found[0], now, count, now, count, count],
                )
                tx.execute("UPDATE loss_models SET joined = ? WHERE id = ?", [count, found[0]])
                if name == "status":
                    tx.execute(
                        "INSERT INTO loss_predictions (model_id, id, arrived, dtype, payload) VALUES (?, ?, ?, 0, ?)",
                        [found[0], "pending", now + 1, bytes(8)],
                    )
                    tx.execute("UPDATE loss_models SET pending_predictions = 1 WHERE id = ?", [found[0]])
        with store.database.transaction() as tx:  # the quotas' count of the bytes stored, as the store keeps it
            size = row_bytes_sql(store.database.dialect.name)
            tx.execute(
                f"UPDATE loss_models SET stored_bytes = (SELECT coalesce(sum({size}), 0) FROM loss_predictions "
                "WHERE model_id = loss_models.id)"
            )
        if not sqlite:
            with store.database.transaction() as tx:
                tx.execute("ANALYZE")
    finally:
        store.close()


@contextlib.contextmanager
def server(store_url: str, keys_file: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        **os.environ,
        "LOSS_SERVICE_LOG_LEVEL": "warning",
        "LOSS_SERVICE_STORE_URL": store_url,
        "LOSS_SERVICE_API_KEYS_FILE": str(keys_file),
        "LOSS_SERVICE_SWEEP_INTERVAL": "1",
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "loss-service"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", process, timeout=120)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(timeout=60)


def readers(port: int, seconds: float, served: Any) -> None:
    """64 clients looping on the status of the model with 10^6 joined rows (another process)."""

    async def loop(deadline: float) -> int:
        connection, count = Connection("127.0.0.1", port), 0
        while time.monotonic() < deadline:
            answer = await connection.request("GET", "/v1/models/status", headers=bearer("readers"))
            assert answer.status == 200, answer
            count += 1
        connection.close()
        return count

    async def main() -> int:
        deadline = time.monotonic() + seconds
        return sum(await asyncio.gather(*(loop(deadline) for _ in range(READERS))))

    served.value = asyncio.run(main())


async def writes(port: int, seconds: float, start: int) -> list[float]:
    """Single-row predictions logged one at a time for `seconds`: each one's latency, in seconds."""
    connection, latencies = Connection("127.0.0.1", port), []
    deadline, i = time.monotonic() + seconds, start
    headers = {**bearer("writer"), "content-type": "application/json"}
    while time.monotonic() < deadline:
        body = orjson.dumps({"ids": [f"w{i}"], "predictions": [[0.5]]})
        started = time.perf_counter()
        answer = await connection.request("POST", "/v1/models/writes/predictions", body, headers)
        latencies.append(time.perf_counter() - started)
        assert answer.status == 200, answer
        i += 1
    connection.close()
    return latencies


async def statuses(port: int, count: int) -> list[float]:
    """`count` reads of the status of the model with 10^6 joined rows, one at a time."""
    connection, latencies = Connection("127.0.0.1", port), []
    for _ in range(count):
        started = time.perf_counter()
        answer = await connection.request("GET", "/v1/models/status", headers=bearer("readers"))
        latencies.append(time.perf_counter() - started)
        assert answer.status == 200, answer
    connection.close()
    return latencies


async def revoke(port: int, keys_file: Path, victim: str, after: float) -> float:
    """Rewrite the keys file without `victim` after `after` seconds; seconds until it gets 401."""
    await asyncio.sleep(after)
    remaining = [name for name in KEYS if name != victim and not (victim == "victim-2" and name == "victim-1")]
    connection = Connection("127.0.0.1", port)
    keys_file.write_text(keys_toml(remaining))
    revoked = time.perf_counter()
    while (await connection.request("GET", "/v1/losses", headers=bearer(victim))).status != 401:
        await asyncio.sleep(0.02)
    connection.close()
    return time.perf_counter() - revoked


def percentiles(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"n={len(ordered):,}  p50 {statistics.median(ordered) * 1e3:7.1f} ms  "
        f"p99 {p99 * 1e3:7.1f} ms  max {ordered[-1] * 1e3:7.1f} ms"
    )


async def run(host_port: tuple[str, int], keys_file: Path, seconds: float, url: str) -> dict[str, Any]:
    _, port = host_port
    status_alone = await statuses(port, 200)
    baseline, revoked_alone = await asyncio.gather(
        writes(port, seconds / 2, 0), revoke(port, keys_file, "victim-1", seconds / 4)
    )
    served = multiprocessing.Value("q", 0)
    reading = multiprocessing.Process(target=readers, args=(port, 1.5 * seconds + 2, served))
    reading.start()
    await asyncio.sleep(1.0)  # the readers connect
    read_only = await writes(port, seconds / 2, 10**8)
    admin = Connection("127.0.0.1", port)
    cut = orjson.dumps({**CONFIG, "retention_seconds": 1})
    answer = await admin.request("PUT", "/v1/models/old", cut, {**bearer("admin"), "content-type": "application/json"})
    assert answer.status == 200, answer
    admin.close()
    loaded, revoked_loaded = await asyncio.gather(
        writes(port, seconds, 10**9), revoke(port, keys_file, "victim-2", seconds / 2)
    )
    left = await asyncio.to_thread(remaining_rows, url)  # while the sweep goes on
    reading.join(120)
    return {
        "left": left,
        "baseline": baseline,
        "status_alone": status_alone,
        "read_only": read_only,
        "loaded": loaded,
        "revoked_alone": revoked_alone,
        "revoked_loaded": revoked_loaded,
        "reads": served.value,
    }


def remaining_rows(url: str) -> int:
    store = Store.open(url)
    try:
        with store.database.transaction(write=False) as tx:
            row = tx.one(
                "SELECT count(*) FROM loss_predictions WHERE model_id = (SELECT id FROM loss_models WHERE name = ?)",
                ["old"],
            )
        return int(row[0]) if row else -1
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the loaded phase")
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-tenants-")))
        urls = {}
        if "sqlite" in args.stores:
            urls["sqlite"] = f"sqlite:///{directory}/store.sqlite3"
        if "postgresql" in args.stores:
            if postgres.binaries() is None:
                print("# PostgreSQL: not installed, skipped")
            else:
                urls["postgresql"] = postgres.fresh_database(stack.enter_context(postgres.cluster()))
        print(
            f"# {READERS} clients on the status of a model with {JOINED:,} joined rows, a sweep of {SWEPT:,} "
            f"rows, one writer of single rows to another model; one worker; {os.cpu_count()} cores"
        )
        for name, url in urls.items():
            started = time.perf_counter()
            prepare(url)
            print(f"## {name}  (rows prepared in {time.perf_counter() - started:.0f} s)")
            keys_file = directory / f"keys-{name}.toml"
            keys_file.write_text(keys_toml(list(KEYS)))
            with server(url, keys_file) as host_port:
                result = asyncio.run(run(host_port, keys_file, args.seconds, url))
            left = result["left"]
            print(f"one status alone     {percentiles(result['status_alone'])}")
            print(f"writes alone         {percentiles(result['baseline'])}")
            print(f"writes, 64 readers   {percentiles(result['read_only'])}")
            print(f"writes, + the sweep  {percentiles(result['loaded'])}")
            print(f"status reads served  {result['reads']:,} in {1.5 * args.seconds + 2:g} s")
            print(f"rows swept meanwhile {SWEPT - left:,} of {SWEPT:,}")
            alone, loaded = result["revoked_alone"], result["revoked_loaded"]
            print(f"revoked key refused  {alone:.2f} s alone, {loaded:.2f} s under load")


if __name__ == "__main__":
    main()
