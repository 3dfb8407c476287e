"""Several workers (service/server/monitoring/multiprocess.py): /metrics merges their values; a killed worker's
live gauges are forgotten."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

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


def test_the_exposition_merges_every_workers_values_and_scopes_the_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under PROMETHEUS_MULTIPROC_DIR /metrics shows the values every worker wrote to its files
    (here two workers' counters, written as prometheus-client writes them), summed per series;
    a scoped scrape only the models it may see."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.parser import text_string_to_metric_families

    from service.server.monitoring.exposition import render

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for pid, written in ((101, {"a": 3.0}), (102, {"a": 4.0, "b": 5.0})):
        values = MmapedDict(str(tmp_path / f"counter_{pid}.db"))
        for model, value in written.items():
            key = mmap_key("batches", "batches_total", ["model", "loss"], [model, "mse"], "Batches.")
            values.write_value(key, value, 0.0)
        values.close()

    def batches(visible: Any = None) -> dict[str, float]:
        text = render(CollectorRegistry(), visible)[0].decode()
        return {
            s.labels["model"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "batches_total"
        }

    assert batches() == {"a": 7.0, "b": 5.0}
    assert batches(lambda model: model == "b") == {"b": 5.0}


def test_finding_killed_workers_only_asks_whether_their_pids_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signal 0 checks that a process exists and delivers nothing: a live worker is left alone."""
    from service.server.monitoring import forget_killed_workers, multiprocess

    sent: list[tuple[int, int]] = []

    def kill(pid: int, signal: int) -> None:
        sent.append((pid, signal))
        if pid == 4242:
            raise ProcessLookupError

    monkeypatch.setattr(multiprocess.os, "kill", kill)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for pid in (4242, 4343):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
    assert forget_killed_workers() == [4242]
    assert sorted(sent) == [(4242, 0), (4343, 0)]
