"""Several workers (service/server/monitoring/multiprocess.py): a killed worker's live gauges are forgotten."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def test_a_killed_workers_live_gauges_are_forgotten_by_its_replacement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.server.monitoring import forget_killed_workers

    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid no longer names a process
    dead = child.pid
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in (f"gauge_livesum_{dead}.db", f"gauge_livesum_{os.getpid()}.db", f"counter_{dead}.db"):
        (tmp_path / name).write_bytes(b"")
    assert forget_killed_workers() == [dead]
    # Its counts are history and stay; only its in-flight gauge, stuck where it died, goes.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"counter_{dead}.db", f"gauge_livesum_{os.getpid()}.db"]
