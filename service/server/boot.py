"""Starting the server: uvicorn and its workers, glibc's malloc and gRPC core tuned, the workers'
metrics directory.

`loss-service serve` calls `serve`; the app itself is built by `service.server.app.create_app` in each
worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from service.config import Settings

log = logging.getLogger("service.server")
# prometheus-client's multiprocess files: counter_<pid>.db, gauge_livesum_<pid>.db, ...
METRICS_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


def prepare_metrics_dir(directory: Path) -> None:
    """Every worker writes its metrics here; a fresh start must not inherit a previous run's counts.

    Only prometheus-client's own files are removed, never the directory or anything else in it:
    LOSS_SERVICE_METRICS_DIR set by mistake to a directory that matters must not cost its contents."""
    directory.mkdir(parents=True, exist_ok=True)
    for pattern in METRICS_FILES:
        for stale in directory.glob(pattern):
            stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


# glibc malloc settings for the server: (environment variable, mallopt parameter number, value).
MALLOC_SETTINGS = (
    ("MALLOC_ARENA_MAX", -8, 2),
    ("MALLOC_MMAP_THRESHOLD_", -3, 32 << 20),
    ("MALLOC_TRIM_THRESHOLD_", -1, 64 << 20),
)


def tune_malloc() -> None:
    """Set glibc's malloc for this process (mallopt) and, by environment, for spawned workers.

    - At most 2 arenas: otherwise requests computed in worker threads each get an arena (up to 8
      per core) and freed memory stays in them, so workers grow without levelling off under load
      (docs/security.md has the load test's figures).
    - Buffers up to 32 MiB come from the heap, and up to 64 MiB freed at its top is kept: by
      default glibc gives a large body's buffers back to the kernel after each request and the
      next one faults them in again, thousands of page faults per request of a few MB
      (docs/performance.md has the figures). The cost: up to 64 MiB of freed heap stays resident
      per worker.

    A variable the operator set is left alone; on another C library this does nothing.
    """
    try:
        libc: Any = ctypes.CDLL("libc.so.6")
    except OSError:
        libc = None  # not glibc: its allocator has its own policy
    for variable, parameter, value in MALLOC_SETTINGS:
        if variable in os.environ:
            continue
        os.environ[variable] = str(value)
        if libc is not None:
            with contextlib.suppress(AttributeError):  # a libc without mallopt
                libc.mallopt(parameter, value)


# gRPC core's experiments for the server, in GRPC_EXPERIMENTS: its EventEngine listener, on by
# default in grpcio, passes each RPC between more threads than the listener it replaces, which
# doubles the context switches of a small RPC and costs CPU (docs/performance.md, "Over gRPC").
GRPC_EXPERIMENTS = "-event_engine_listener"


def tune_grpc() -> None:
    """Set gRPC core's experiments (GRPC_EXPERIMENTS) for this process and the workers it spawns,
    unless the environment sets them. grpcio reads them once, when it is imported: a process that
    imported it already keeps what it read, and a warning says so."""
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
    if "grpc" in sys.modules:
        log.warning("grpcio was imported before the server started: this process keeps its GRPC_EXPERIMENTS")


def serve(
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> int:
    """Run the service with uvicorn (httptools + uvloop) until it is stopped; what is not given
    comes from the `LOSS_SERVICE_*` settings. Returns the exit status: 0 after a clean drain."""
    import uvicorn

    from service.server.protocol import ConnectionLimits, HeaderDeadlineProtocol

    settings = Settings()
    workers = workers or settings.workers
    # Each worker reads its Settings anew: --workers must reach them (engine threads, gRPC's SO_REUSEPORT).
    os.environ["LOSS_SERVICE_WORKERS"] = str(workers)
    metrics_dir = _metrics_dir(settings, workers)
    tune_malloc()
    tune_grpc()
    # uvicorn drains, then re-raises the signal that stopped it; a clean drain should exit 0
    # (orchestrators read a signal exit as a crash), so these handlers absorb that re-raise.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    try:
        uvicorn.run(
            "service.server.app:create_app",
            factory=True,
            host=host or settings.host,
            port=port if port is not None else settings.port,
            workers=workers,
            log_level=settings.log_level,
            # The protocol gets its limits from these settings; the app reads its own in each worker.
            # uvicorn only calls what it is given, so a partial serves where its types say a class.
            http=functools.partial(HeaderDeadlineProtocol, limits=ConnectionLimits.from_settings(settings)),  # type: ignore[arg-type]
            loop="uvloop",
            timeout_graceful_shutdown=int(settings.shutdown_timeout) or None,
            access_log=False,  # the app logs one JSON line per request instead
            ssl_certfile=ssl_certfile or settings.ssl_certfile,
            ssl_keyfile=ssl_keyfile or settings.ssl_keyfile,
        )
    finally:
        if metrics_dir is not None and settings.metrics_dir is None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _metrics_dir(settings: Settings, workers: int) -> Path | None:
    """Where workers share their metrics, or None when one worker keeps them in memory.

    A single worker needs no shared files, and prometheus-client's in-memory values cost a small
    request less than its shared files do.
    Without a configured directory, each server gets its own, so two services on one host never
    wipe or merge each other's metrics; it is removed when the server stops.
    """
    if workers == 1:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # not inherited from a parent's setup either
        return None
    directory = Path(settings.metrics_dir or Path(tempfile.gettempdir()) / f"loss-service-metrics-{os.getpid()}")
    prepare_metrics_dir(directory)
    return directory
