"""The OTLP/HTTP export of one worker's metrics with the OpenTelemetry SDK; imported only where
`otlp_endpoint` finds an endpoint, at the lifespan's start.

The SDK does what the standard variables ask (endpoint, headers, compression, timeout, TLS files,
OTEL_METRIC_EXPORT_INTERVAL and _TIMEOUT, temporality preference, OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES, a `service.instance.id` per process): its periodic reader collects and
exports in a thread of its own, so requests never wait on the endpoint. Counters are the SDK's
observable counters over `OtlpTallies`; the loss histograms, filled a batch at a time by
`ExponentialHistogram` (the SDK records one value per call), join each collection as exponential
histograms.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from time import time_ns
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Buckets,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from service import __version__
from service.server.monitoring import exponential
from service.server.monitoring.metrics import Metrics
from service.server.monitoring.otlp import OtlpTallies

log = logging.getLogger("service.monitoring.otlp")

SCOPE = "loss-service"
# Prometheus counter family -> the same name (prometheus-client's family name has no `_total`;
# the OTLP-to-Prometheus translation adds it back to a monotonic sum).
COUNTERS = (
    "requests",
    "key_requests",
    "rejected",
    "samples",
    "batches",
    "nonfinite",
    "overflowed",
    "logged",
    "duplicates",
    "joined",
    "expired",
)
# Prometheus histogram -> OTLP name and unit (the translation appends `_seconds` for "s").
HISTOGRAMS = {"sample_loss": ("loss_service_sample_loss", ""), "label_delay": ("loss_service_label_delay", "s")}
# The SDK's loggers of a failed export: one line per export, retry and failure.
_SDK_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.common.http",
)


class OtlpExport:
    """One worker's meter provider, reader and exporter."""

    def __init__(self, metrics: Metrics, tallies: OtlpTallies, endpoint: str) -> None:
        self.resource = _resource()
        self.exporter = EpisodeLogged(OTLPMetricExporter(), endpoint)
        self.reader = _Reader(self.exporter, metrics, tallies)
        self.provider = MeterProvider(resource=self.resource, metric_readers=[self.reader], shutdown_on_exit=False)
        meter = self.provider.get_meter(SCOPE, __version__)
        for attribute in COUNTERS:
            metric = getattr(metrics, attribute)
            family = metric.describe()[0]
            meter.create_observable_counter(
                family.name, [_observe_counter(tallies, metric)], unit="", description=family.documentation
            )

    def force_flush(self, timeout_seconds: float = 10.0) -> bool:
        return self.provider.force_flush(timeout_millis=timeout_seconds * 1e3)

    def shutdown(self, timeout_seconds: float) -> None:
        """A last export of everything recorded, then stop; at most `timeout_seconds`."""
        self.provider.shutdown(timeout_millis=timeout_seconds * 1e3)


def _resource() -> Resource:
    """The SDK's resource (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME, a `service.instance.id`
    per process), named loss-service where the environment names no service."""
    resource = Resource.create()
    defaults: dict[str, str] = {SERVICE_VERSION: __version__}
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        defaults[SERVICE_NAME] = "loss-service"
    return Resource(defaults).merge(Resource({k: v for k, v in resource.attributes.items() if k not in defaults}))


def _observe_counter(tallies: OtlpTallies, metric: Any) -> Any:
    names = metric._labelnames

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(zip(names, labels, strict=True))) for labels, value in tallies.counts(metric)]

    return observe


class _Reader(PeriodicExportingMetricReader):
    """The SDK's periodic reader; each collection also carries the exponential histograms."""

    def __init__(self, exporter: MetricExporter, metrics: Metrics, tallies: OtlpTallies) -> None:
        super().__init__(exporter)
        self._tallies = tallies
        self._histograms = {
            id(getattr(metrics, attribute)): (getattr(metrics, attribute), *named)
            for attribute, named in HISTOGRAMS.items()
        }

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        super()._receive_metrics(self._with_histograms(metrics_data), timeout_millis, **kwargs)

    def _with_histograms(self, metrics_data: MetricsData) -> MetricsData:
        temporality = getattr(self, "_instrument_class_temporality", {}).get(
            Histogram, AggregationTemporality.CUMULATIVE
        )
        start, taken = self._tallies.take_histograms(delta=temporality == AggregationTemporality.DELTA)
        now = time_ns()
        points: dict[int, list[ExponentialHistogramDataPoint]] = {}
        for metric, labels, histogram in taken:
            if id(metric) in self._histograms and histogram.count:
                attributes = dict(zip(metric._labelnames, labels, strict=True))
                points.setdefault(id(metric), []).append(_point(histogram, attributes, start, now))
        added = [
            Metric(name, metric.describe()[0].documentation, unit, ExponentialHistogram(points[key], temporality))
            for key, (metric, name, unit) in self._histograms.items()
            if key in points
        ]
        if not added:
            return metrics_data
        resources = []
        for resource_metrics in metrics_data.resource_metrics:
            scopes = list(resource_metrics.scope_metrics)
            ours = next((i for i, scope in enumerate(scopes) if scope.scope.name == SCOPE), None)
            if ours is None:
                scopes.append(ScopeMetrics(InstrumentationScope(SCOPE, __version__), added, ""))
            else:
                scopes[ours] = ScopeMetrics(
                    scopes[ours].scope, [*scopes[ours].metrics, *added], scopes[ours].schema_url
                )
            resources.append(ResourceMetrics(resource_metrics.resource, scopes, resource_metrics.schema_url))
            added = []  # one resource: this worker's
        return MetricsData(resources)


def _point(
    histogram: exponential.ExponentialHistogram, attributes: dict[str, str], start: int, now: int
) -> ExponentialHistogramDataPoint:
    return ExponentialHistogramDataPoint(
        attributes=attributes,
        start_time_unix_nano=start,
        time_unix_nano=now,
        count=histogram.count,
        sum=histogram.sum,
        scale=histogram.scale,
        zero_count=histogram.zero_count,
        positive=Buckets(histogram.positive.offset, histogram.positive.as_list()),
        negative=Buckets(histogram.negative.offset, histogram.negative.as_list()),
        flags=0,
        min=histogram.min,
        max=histogram.max,
    )


class EpisodeLogged(MetricExporter):
    """The SDK's exporter, whose failures are logged once per episode: the first failed export
    says why (the SDK's own message), the first that succeeds after says how many failed. The
    SDK logs every failed export and retry; those lines are held back."""

    def __init__(self, exporter: OTLPMetricExporter, endpoint: str) -> None:
        super().__init__(exporter._preferred_temporality, exporter._preferred_aggregation)
        self.inner = exporter
        self.endpoint = endpoint
        self.failed = 0  # exports failed in the current episode
        self.exports = 0
        self._reasons: list[str] = []
        self._thread: int | None = None
        self._shut = False
        for name in _SDK_EXPORT_LOGGERS:
            logging.getLogger(name).addFilter(self._hold_back)

    def _hold_back(self, record: logging.LogRecord) -> bool:
        if record.thread != self._thread:
            return True
        self._reasons.append(record.getMessage())
        return False

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if self._shut:  # the reader's last collection, after a shutdown that stopped waiting for it
            return MetricExportResult.FAILURE
        self._thread, self._reasons = threading.get_ident(), []
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:  # the reader would log it on every export
            self._reasons.append(repr(exc))
            result = MetricExportResult.FAILURE
        finally:
            self._thread = None
        self.exports += 1
        if result is MetricExportResult.SUCCESS:
            if self.failed:
                log.warning(
                    "OTLP metrics export to %s works again, after %d failed exports", self.endpoint, self.failed
                )
            self.failed = 0
        else:
            if not self.failed:
                log.warning(
                    "OTLP metrics export to %s failed (%s); further failures are not logged until one succeeds",
                    self.endpoint,
                    "; ".join(self._reasons[-1:]) or "no reason given",
                )
            self.failed += 1
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._shut = True
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
        if self._thread is None:  # else an export still under way logs its failure, held back too
            for name in _SDK_EXPORT_LOGGERS:
                logging.getLogger(name).removeFilter(self._hold_back)


def start(metrics: Metrics, tallies: OtlpTallies, endpoint: str) -> OtlpExport:
    return OtlpExport(metrics, tallies, endpoint)
