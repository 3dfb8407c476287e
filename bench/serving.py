"""HTTP benchmarks: loss-service against a bare FastAPI app and in-process floors, in one run.

    make bench        (needs wrk: apt-get install wrk)

Both servers run as one uvicorn worker with httptools and uvloop on loopback, side by side for the
whole run, and are measured in turns. Reported figures are medians of repeated runs; ratios compare
numbers measured in this same run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa

from service.server.boot import MALLOC_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(command: list[str], env: dict[str, str] | None = None, stderr: Any = None) -> Iterator[tuple[str, int]]:
    """`stderr`: where the server's logs go (a file, as a log collector would read them), else nowhere."""
    port = free_port()
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        env={**os.environ, "LOSS_SERVICE_LOG_LEVEL": "warning", **(env or {})},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.post(f"{url}/v1/loss", content=b"{}", headers={"content-type": "application/json"}, timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{command[0]} did not start") from None
            time.sleep(0.1)
    try:
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


LOGGED = {"LOSS_SERVICE_LOG_LEVEL": "info"}  # loss-service's default level: an access line per request


def loss_service() -> list[str]:
    return [str(BIN / "loss-service"), "serve", "--host", "127.0.0.1", "--workers", "1"]


# The bare app gets the glibc malloc settings `loss-service serve` gives itself: with glibc's
# defaults it page-faults a large body's buffers in on every request (4 MB: 7.3 against 3.6 ms),
# and a ceiling that slow would flatter the ratios.
BARE_MALLOC = {variable: str(value) for variable, _, value in MALLOC_SETTINGS}


def bare_app(module: str = "bench.bare_app", http: str = "httptools") -> list[str]:
    """`http`: uvicorn's protocol, or loss-service's (`service.server.protocol:HeaderDeadlineProtocol`)."""
    return [
        str(BIN / "uvicorn"),
        f"{module}:app",
        "--http",
        http,
        "--loop",
        "uvloop",
        "--log-level",
        "warning",
    ]


def wrk(url: str, body: bytes, seconds: int, connections: int) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 latency in ms, from wrk with one thread (the other core serves)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{body.decode()}]==]\n"
        )
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, f"{url}/v1/loss"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")

    def latency(percent: str) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\b", out, re.MULTILINE).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rate, latency("50"), latency("99")


LARGE_ROUNDS, LARGE_BLOCK = 5, 5


def post(client: httpx.Client, path: str, body: bytes, headers: dict[str, str], query: dict[str, str]) -> None:
    client.post(path, content=body, headers=headers, params=query).raise_for_status()


def alternating_medians(works: dict[str, Callable[[], Any]], rounds: int, block: int) -> dict[str, float]:
    """Median seconds of each work, measured in blocks taken in turns (a a a, b b b, a a a, ...).

    Turns spread a slow spell of the machine over both sides; blocks, each after one unmeasured
    warm-up call, keep one server's cache misses after the other's request out of the measurement
    (timed per request in strict turns, the bare app's 4 MB receive took 3.8 ms instead of 2.2)."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(rounds):
        for name, work in works.items():
            work()
            for _ in range(block):
                started = time.perf_counter()
                work()
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def median_seconds(work: Callable[[], Any], repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bodies(n: int, c: int, dtype: str = "float64") -> dict[str, tuple[str, bytes, dict[str, str], dict[str, str]]]:
    """(path, body, headers, query) per format for one n x c cross-entropy batch.

    float32: the logits are sent as float32 and the loss is computed in float32 (`dtype`)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, c)).astype(dtype)
    labels = rng.integers(0, c, n)
    json_body = orjson.dumps(
        {"loss": "scce", "predictions": logits, "labels": labels, "options": {"from_logits": True}, "dtype": dtype},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    npz = io.BytesIO()
    np.savez(npz, predictions=logits, labels=labels)
    table = pa.table({"predictions": pa.FixedSizeListArray.from_arrays(pa.array(logits.ravel()), c), "labels": labels})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "predictions",
                    "shape": [n, c],
                    "datatype": "FP64" if dtype == "float64" else "FP32",
                    "parameters": {"binary_data_size": logits.nbytes},
                },
                {
                    "name": "labels",
                    "shape": [n],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": labels.nbytes},
                },
            ],
            "parameters": {"from_logits": True, "binary_data_output": True, "dtype": dtype},
        }
    )
    query = {"loss": "scce", "options": '{"from_logits": true}', "dtype": dtype}
    return {
        "JSON": ("/v1/loss", json_body, {"content-type": "application/json"}, {}),
        "npz": ("/v1/loss", npz.getvalue(), {"content-type": "application/x-npz"}, query),
        "Arrow": (
            "/v1/loss",
            sink.getvalue().to_pybytes(),
            {"content-type": "application/vnd.apache.arrow.stream"},
            query,
        ),
        "OIP binary": (
            "/v2/models/scce/infer",
            header + logits.tobytes() + labels.tobytes(),
            {"inference-header-content-length": str(len(header))},
            {},
        ),
    }


def peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs per server (medians reported)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/serving.py needs wrk as its load generator: apt-get install wrk")
    print(f"# {os.cpu_count()} cores, {sys.platform}; medians; loopback; one uvicorn worker each\n")

    small = orjson.dumps(
        {
            "loss": "scce",
            "predictions": np.random.default_rng(1).normal(size=(32, 10)),
            "labels": np.random.default_rng(2).integers(0, 10, 32),
            "options": {"from_logits": True},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    # Both servers run throughout and are measured in turns, so a slow spell of this shared machine
    # (its loopback speed varies up to 3x over minutes) hits both sides of each ratio alike.
    with contextlib.ExitStack() as stack:
        urls = {
            "bare FastAPI": stack.enter_context(server(bare_app(), env=BARE_MALLOC))[0],
            # loss-service's protocol writes each response in one piece: what that alone is worth.
            "bare FastAPI, loss-service's HTTP protocol": stack.enter_context(
                server(bare_app(http="service.server.protocol:HeaderDeadlineProtocol"), env=BARE_MALLOC)
            )[0],
            "unvalidated NumPy endpoint": stack.enter_context(server(bare_app("bench.minimal_app"), env=BARE_MALLOC))[
                0
            ],
            "loss-service": stack.enter_context(server(loss_service()))[0],
            # Its default: one JSON access line per request, here written to a file.
            "loss-service, access log on": stack.enter_context(
                server(loss_service(), LOGGED, stack.enter_context(tempfile.TemporaryFile()))
            )[0],
        }
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in urls}
        for _ in range(args.repeats):
            for name, url in urls.items():
                runs[name].append(wrk(url, small, args.seconds, 8))
    rows = {name: tuple(statistics.median(r[i] for r in results) for i in range(3)) for name, results in runs.items()}
    bare_rate = rows["bare FastAPI"][0]
    print("Small requests: 32 x 10 cross-entropy from logits, JSON, concurrency 8 (wrk, 1 thread)\n")
    print("| server | requests/s | p50 ms | p99 ms | throughput vs bare | vs bare, each round |")
    print("|---|---|---|---|---|---|")
    for name, (rate, p50, p99) in rows.items():
        rounds = [run[0] / bare[0] for run, bare in zip(runs[name], runs["bare FastAPI"], strict=True)]
        print(
            f"| {name} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {rate / bare_rate:.0%} "
            f"| {min(rounds):.0%}–{max(rounds):.0%} |"
        )
    logged = rows["loss-service, access log on"][0] / rows["loss-service"][0]
    print(f"\nWith its access log on, loss-service serves {logged:.1%} of the requests it serves with it off.")

    n, c = 10_000, 100
    formats = bodies(n, c)
    # What a client sending a model's float32 logits gets: half the bytes, float32 arithmetic.
    formats.update({f"{fmt}, float32": body for fmt, body in bodies(n, c, "float32").items() if fmt != "JSON"})
    print(
        f"\nLarge requests: {n:,} x {c} cross-entropy from logits "
        f"(median of {LARGE_ROUNDS} x {LARGE_BLOCK}, one client, servers in turns)\n"
    )
    print("| format | body MB | loss-service ms | bare app receives ms | ratio to bare | ratio to parse floor |")
    print("|---|---|---|---|---|---|")
    json_body = formats["JSON"][1]

    def parse_floor() -> None:
        parsed = orjson.loads(json_body)
        np.asarray(parsed["predictions"])
        np.asarray(parsed["labels"])

    floor = median_seconds(parse_floor, 7)
    timings: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        clients = {
            name: stack.enter_context(httpx.Client(base_url=stack.enter_context(server(command, env))[0], timeout=120))
            for name, command, env in (("bare", bare_app(), BARE_MALLOC), ("service", loss_service(), None))
        }
        for fmt, (path, body, headers, query) in formats.items():
            for name, seconds in alternating_medians(
                {name: functools.partial(post, client, path, body, headers, query) for name, client in clients.items()},
                LARGE_ROUNDS,
                LARGE_BLOCK,
            ).items():
                timings.setdefault(fmt, {})[name] = seconds
    for fmt, (_, body, _, _) in formats.items():
        service_s, bare_s = timings[fmt]["service"], timings[fmt]["bare"]
        floor_ratio = f"{service_s / floor:.2f}x (floor {floor * 1e3:.1f} ms)" if fmt == "JSON" else "-"
        cells = [
            f"{len(body) / 1e6:.1f}",
            f"{service_s * 1e3:.1f}",
            f"{bare_s * 1e3:.1f}",
            f"{service_s / bare_s:.2f}x",
        ]
        print(f"| {fmt} | {' | '.join(cells)} | {floor_ratio} |")

    rows_100mb = 500_000  # two (rows, 5) float64 arrays: ~100 MB of JSON
    big = orjson.dumps(
        {
            "loss": "mse",
            "predictions": np.random.default_rng(3).normal(size=(rows_100mb, 5)),
            "labels": np.random.default_rng(4).normal(size=(rows_100mb, 5)),
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    # 100 MB is past the default 64 MiB body limit, which this measurement raises.
    with server(loss_service(), env={"LOSS_SERVICE_MAX_BODY_BYTES": str(2 * len(big))}) as (url, pid):
        before = peak_rss_bytes(pid)
        httpx.post(
            f"{url}/v1/loss", content=big, headers={"content-type": "application/json"}, timeout=300
        ).raise_for_status()
        peak = peak_rss_bytes(pid)
    print(f"\nPeak RSS for one {len(big) / 1e6:.0f} MB JSON request (MSE, {rows_100mb:,} x 5 twice)\n")
    print("| RSS before MB | peak RSS MB | peak / body size |")
    print("|---|---|---|")
    print(f"| {before / 1e6:.0f} | {peak / 1e6:.0f} | {peak / len(big):.1f}x |")


if __name__ == "__main__":
    main()
