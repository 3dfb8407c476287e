"""Prometheus metrics: service health and model quality. The only package that knows Prometheus,
and OpenTelemetry's SDK (otlp_export.py, imported only where an OTLP endpoint is set).

Single process: metrics live in the app's own registry. Under `loss-service serve`, the CLI points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before workers start, so every worker writes its
values there and /metrics merges them (prometheus-client multiprocess mode).
"""

from service.server.monitoring.accesslog import BatchedStderr, access_log
from service.server.monitoring.labels import OTHER_MODEL, OTHER_MODEL_OF_KEY, UNLABELLED_MODEL
from service.server.monitoring.middleware import CONTEXT, Observation, Observed, RequestMonitor
from service.server.monitoring.monitor import Monitor, start_otlp_export
from service.server.monitoring.multiprocess import forget_killed_workers, mark_worker_dead

__all__ = [
    "CONTEXT",
    "OTHER_MODEL",
    "OTHER_MODEL_OF_KEY",
    "UNLABELLED_MODEL",
    "BatchedStderr",
    "Monitor",
    "Observation",
    "Observed",
    "RequestMonitor",
    "access_log",
    "forget_killed_workers",
    "mark_worker_dead",
    "start_otlp_export",
]
