"""Memory pressure on one `loss-service serve` worker: bodies that arrive and are never finished.

    python bench/pressure.py [--budget-mib 256]

Two probes, each while a client keeps sending small /v1/loss requests on its own connection:

- gzip: 16 connections each send a ~58 KB gzip body that inflates to 60 MB, all but its last
  16 bytes, and hold it there;
- plain: 6 connections each send a 60 MB body (Content-Length declared), all but its last 16
  bytes, and hold it there.

Printed: the worker's peak RSS (VmHWM) against LOSS_SERVICE_MEMORY_BUDGET, what each held
connection was answered (a refusal, or nothing while it holds), and the small requests' answers
meanwhile. tests/api/test_body_budget.py runs the same probes and asserts peak RSS <= budget + 64 MiB
and that every small request was answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

GZIP_CONNECTIONS = 16
GZIP_INFLATED = 60_000_000
PLAIN_CONNECTIONS = 6
PLAIN_BYTES = 60_000_000
HELD_BACK = 16  # bytes each probe connection never sends
SLACK = 64 * 2**20  # what the worker may hold beyond its budget
SMALL = orjson.dumps({"loss": "mse", "predictions": [[0.5, 0.25]] * 8, "labels": [[1.0, 0.0]] * 8})


@dataclass
class Probe:
    """What one probe saw: the held connections' answers and the small requests' statuses."""

    name: str
    answers: Counter[str] = field(default_factory=Counter)  # "503", "413", ... or "held"
    small: Counter[int] = field(default_factory=Counter)


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def reset_peak_rss(pid: int) -> None:
    """Start the process's VmHWM again from its current RSS (`clear_refs`: the process's owner may)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def gzip_body() -> bytes:
    """JSON whitespace, 60 MB of it inflated; ~58 KB sent."""
    return gzip.compress(b" " * GZIP_INFLATED, compresslevel=9)


def _head(port: int, length: int, gzipped: bool) -> bytes:
    lines = [
        "POST /v1/loss HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
    ]
    if gzipped:
        lines.append("Content-Encoding: gzip")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def _small_requests(port: int, stop: asyncio.Event, statuses: Counter[int]) -> None:
    """Small /v1/loss requests one after another on one keep-alive connection until `stop`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = _head(port, len(SMALL), gzipped=False) + SMALL
    try:
        while not stop.is_set():
            try:
                status = await _small_request(reader, writer, request)
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                statuses[0] += 1  # no answer: the connection failed (0 in the counts)
                return
            statuses[status] += 1
            await asyncio.sleep(0.005)  # leave the worker to the probe most of the time
    finally:
        writer.close()


async def _small_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One small request on an open connection; its status."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def _hold(port: int, head: bytes, body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """Send `head` and all of `body` but its last HELD_BACK bytes; False if the server closed first."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    view = memoryview(body)[: len(body) - HELD_BACK]
    try:
        for start in range(0, len(view), 1 << 20):
            writer.write(view[start : start + (1 << 20)])
            await writer.drain()
    except (ConnectionError, OSError):
        return reader, writer, False
    return reader, writer, True


async def _answer(reader: asyncio.StreamReader) -> str:
    """The status the server answered a held connection, or "held" if it answers nothing yet."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.LimitOverrunError):
        return "closed" if reader.at_eof() else "held"
    return head.split(b" ", 2)[1].decode("ascii")


async def _settled(pid: int, statuses: Counter[int], quiet: float = 1.0, cap: float = 60.0) -> None:
    """Until the worker's peak RSS has grown by less than 1 MiB in `quiet` seconds while small
    requests were answered (so it has taken in all it will of the held bodies), or `cap` seconds."""
    deadline = time.monotonic() + cap
    last, since, answered = peak_rss(pid), time.monotonic(), sum(statuses.values())
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = peak_rss(pid)
        if now - last >= 2**20:
            last, since, answered = now, time.monotonic(), sum(statuses.values())
        elif time.monotonic() - since >= quiet and sum(statuses.values()) > answered:
            return


async def _probe(name: str, port: int, pid: int, head: bytes, body: bytes, connections: int) -> Probe:
    """The held connections of one probe, from a peak RSS started again at the current RSS."""
    probe = Probe(name)
    reset_peak_rss(pid)
    stop = asyncio.Event()
    small = asyncio.create_task(_small_requests(port, stop, probe.small))
    held = await asyncio.gather(*(_hold(port, head, body) for _ in range(connections)))
    await _settled(pid, probe.small)
    for reader, writer, sent in held:
        probe.answers[await _answer(reader) if sent else "closed while sending"] += 1
        writer.close()
    stop.set()
    await small
    return probe


async def gzip_probe(port: int, pid: int) -> Probe:
    body = gzip_body()
    return await _probe("gzip", port, pid, _head(port, len(body), gzipped=True), body, GZIP_CONNECTIONS)


async def plain_probe(port: int, pid: int) -> Probe:
    body = b" " * PLAIN_BYTES
    return await _probe("plain", port, pid, _head(port, len(body), gzipped=False), body, PLAIN_CONNECTIONS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("loss-service exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    raise RuntimeError("loss-service did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-mib", type=int, default=256, help="LOSS_SERVICE_MEMORY_BUDGET, in MiB")
    args = parser.parse_args()
    budget = args.budget_mib * 2**20
    port = _free_port()
    env = {**os.environ, "LOSS_SERVICE_MEMORY_BUDGET": str(budget), "LOSS_SERVICE_LOG_LEVEL": "warning"}
    env["LOSS_SERVICE_STORE_URL"] = "sqlite:///" + str(Path(os.environ.get("TMPDIR", "/tmp")) / f"pressure-{port}.db")
    command = [str(Path(sys.executable).parent / "loss-service"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port, process)
        print(f"# One worker under held bodies, LOSS_SERVICE_MEMORY_BUDGET = {args.budget_mib} MiB\n")
        print(f"idle peak RSS: {peak_rss(process.pid) / 2**20:,.0f} MiB\n")
        print("| probe | peak RSS (MiB) | budget + 64 MiB | held connections answered | small requests answered |")
        print("|---|---|---|---|---|")
        for run in (gzip_probe, plain_probe):
            probe = asyncio.run(run(port, process.pid))
            answers = ", ".join(f"{count} {status}" for status, count in sorted(probe.answers.items()))
            small = sum(probe.small.values())
            rate = f"{probe.small[200]}/{small} answered 200"
            peak = peak_rss(process.pid) / 2**20
            print(f"| {probe.name} | {peak:,.0f} | {(budget + SLACK) / 2**20:,.0f} | {answers} | {rate} |")
    finally:
        process.terminate()
        process.wait(timeout=60)
        with contextlib.suppress(OSError):
            os.unlink(env["LOSS_SERVICE_STORE_URL"].removeprefix("sqlite:///"))


if __name__ == "__main__":
    main()
