"""Start real processes on free loopback ports for tests: the service and Prometheus."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

# Seconds after which a wait that should take milliseconds fails instead of hanging. Only ever
# reached when something is stuck: never a bound on how fast anything is.
HANG = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=HANG).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


def loss_service_executable() -> str:
    return shutil.which("loss-service", path=str(Path(sys.executable).parent)) or "loss-service"


@contextmanager
def served(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`loss-service serve` on a free port; yields its base URL; SIGTERM on exit, which must exit 0."""
    with serving(*args, env=env) as (url, _):
        yield url


@contextmanager
def serving(
    *args: str, env: dict[str, str] | None = None, stderr: IO[bytes] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """As `served`, also yielding the process (for its pid and signals); `stderr`: a file for its logs."""
    port = free_port()
    process = subprocess.Popen(
        [loss_service_executable(), "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        env={**os.environ, "LOSS_SERVICE_LOG_LEVEL": "warning", **(env or {})},
        stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/readyz", process)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, f"loss-service exited with {code} after SIGTERM"


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (uvicorn's workers and any helpers), from /proc."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found += [int(child) for child in children]
        pending += [int(child) for child in children]
    return found


def rss_bytes(pids: list[int]) -> int:
    """Summed resident set size of the processes still alive among `pids`."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total
