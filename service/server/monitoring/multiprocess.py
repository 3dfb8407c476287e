"""Several workers, one view: where each writes its values, and forgetting workers that stopped."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import multiprocess


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def mark_worker_dead(pid: int) -> None:
    """Drop a stopped worker's live gauges (in-flight) from the merged view."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def forget_killed_workers() -> list[int]:
    """Drop the live gauges of workers that died without stopping (SIGKILL, OOM kill).

    Such a worker never runs `mark_worker_dead`, so the requests it had in flight would stay
    in the merged gauge forever; its replacement clears them as it starts. Returns their pids.
    """
    directory = multiprocess_dir()
    if not directory:
        return []
    killed = []
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            killed.append(pid)
        except PermissionError:
            pass  # alive, under another user
    for pid in sorted(set(killed)):
        mark_worker_dead(pid)
    return sorted(set(killed))
