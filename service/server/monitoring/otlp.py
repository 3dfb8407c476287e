"""What the OTLP export reads: the counters and loss histograms of one worker, kept beside the
Prometheus ones by the same recording calls (`Monitor._count`, `Monitor._observe`).

Nothing here imports the OpenTelemetry SDK: `otlp_export` does, in the lifespan, and only where
`otlp_endpoint` finds an endpoint. Off, `Monitor.otlp` is None and recording costs one test of it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import numpy as np

from service.config import Settings
from service.server.monitoring.exponential import ExponentialHistogram

log = logging.getLogger("service.monitoring.otlp")

Labels = tuple[str, ...]


def otlp_endpoint(settings: Settings) -> str | None:
    """The OTLP/HTTP endpoint metrics go to, or None for no export: as the SDK reads the standard
    variables (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT; none while
    OTEL_SDK_DISABLED=true or OTEL_METRICS_EXPORTER names no `otlp`), unless LOSS_SERVICE_OTLP_METRICS=false."""
    if not settings.otlp_metrics or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = os.environ.get("OTEL_METRICS_EXPORTER", "otlp").lower().split(",")
    if "otlp" not in (name.strip() for name in exporters):
        return None
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    )


class OtlpTallies:
    """Counter totals and exponential histograms per metric and label values, since the worker
    started (or, for histograms under delta temporality, since the last export took them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[Any, dict[Labels, float]] = {}
        self._histograms: dict[Any, dict[Labels, ExponentialHistogram]] = {}
        self.started_ns = time.time_ns()
        self._taken_ns = self.started_ns

    def add(self, metric: Any, labels: Labels, amount: float) -> None:
        with self._lock:
            counts = self._counters.setdefault(metric, {})
            counts[labels] = counts.get(labels, 0) + amount

    def record(self, metric: Any, labels: Labels, values: np.ndarray[Any, Any]) -> None:
        with self._lock:
            series = self._histograms.setdefault(metric, {})
            histogram = series.get(labels)
            if histogram is None:
                histogram = series[labels] = ExponentialHistogram()
            histogram.record(values)

    def forget(self, model: str, metrics: set[int]) -> None:
        """Drop the series of a `model` label value taken by another model (as Prometheus's are)."""
        with self._lock:
            for table in (self._counters, self._histograms):
                for metric, series in table.items():
                    if id(metric) in metrics:
                        for labels in [labels for labels in series if labels[0] == model]:
                            del series[labels]

    def counts(self, metric: Any) -> list[tuple[Labels, float]]:
        with self._lock:
            return list(self._counters.get(metric, {}).items())

    def take_histograms(self, delta: bool) -> tuple[int, list[tuple[Any, Labels, ExponentialHistogram]]]:
        """(start time in ns, every series): copies since the start, or under `delta` the series
        since the last call, which start afresh."""
        with self._lock:
            start = self._taken_ns if delta else self.started_ns
            taken = [
                (metric, labels, histogram if delta else histogram.copy())
                for metric, series in self._histograms.items()
                for labels, histogram in series.items()
            ]
            if delta:
                self._histograms = {}
                self._taken_ns = time.time_ns()
        return start, taken
