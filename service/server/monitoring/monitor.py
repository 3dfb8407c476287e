"""Recording into the metrics: requests, batches, the delayed-labels store, API keys and quotas."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.server.monitoring.exposition import SharedRenderings, render
from service.server.monitoring.labels import UNLABELLED_MODEL, ModelLabels
from service.server.monitoring.metrics import Metrics
from service.server.monitoring.otlp import OtlpTallies, otlp_endpoint
from service.server.monitoring.segments import SegmentValues
from service.server.monitoring.series import BatchSeries, RequestSeries, bounds_array, observe_grouped, observe_many
from service.values.compared import Compared
from service.values.watched import Watched

ROW_KINDS = ("predictions", "labels")
REJECTION_REASONS = {
    413: "too_large",
    400: "invalid",
    415: "invalid",
    422: "invalid",
    401: "unauthorised",
    403: "unauthorised",
}
OVERLOAD_STATUSES = {429, 503, 504}
STATUS_CLASSES = [f"{first}xx" for first in range(10)]


class Monitor(Metrics):
    """The metrics of one app, and the bounded set of `model` label values it has seen."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(CollectorRegistry(auto_describe=True), settings.loss_buckets)
        # Where an OTLP endpoint is set, the counters and loss histograms are also kept for the
        # OTLP export (otlp_export.py, started by the app's lifespan); None: no export.
        self.otlp_endpoint = otlp_endpoint(settings)
        self.otlp = OtlpTallies() if self.otlp_endpoint else None
        self.model_labels = ModelLabels(settings, _Counted(self, self.overflowed), self._remove_series, clock)
        self.segment_values = SegmentValues(settings.max_segment_values)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        # Each (route, method, status)'s request series, found once: a request is recorded into all.
        self._request_series: dict[tuple[str, str, int], RequestSeries] = {}
        # Each (model label, loss)'s loss series, found once: a batch is recorded into all four.
        self._batch_series: dict[tuple[str, str], BatchSeries] = {}
        self._renderings = SharedRenderings()
        self._quota_lock = threading.Lock()
        self._quota_as_of: dict[str, float] = {}
        self.set_store_status("ok")

    def model_label(self, model: str | None) -> str:
        """The label value `model` is counted under (`ModelLabels.label`)."""
        return self.model_labels.label(model)

    def _remove_series(self, model: str) -> None:
        """Drop every series labelled with `model` (with several workers, its files keep them in
        /metrics until the workers restart: prometheus-client cannot remove multiprocess values)."""
        for key in [key for key in self._children if key[1] and key[1][0] == model and id(key[0]) in self._by_model]:
            metric, labels = key
            del self._children[key]
            metric.remove(*labels)  # made by _child, so it is there
        self.segment_values.forget(model)
        self.comparisons.forget(model)
        self.estimates.forget(model)
        for labels in [labels for labels in self._batch_series if labels[0] == model]:
            del self._batch_series[labels]
        if self.otlp is not None:
            self.otlp.forget(model, self._by_model)

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: prometheus-client validates and locks on every
        call, 7 times per loss request (its cost: docs/performance.md). The label sets are bounded (route templates,
        HTTP methods, statuses, bounded model names), so the cache is too."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _count(self, metric: Any, labels: tuple[str, ...], amount: float = 1) -> None:
        """Count into a counter: Prometheus's, and the OTLP export's where there is one."""
        (self._child(metric, *labels) if labels else metric).inc(amount)
        if self.otlp is not None:
            self.otlp.add(metric, labels, amount)

    def _observe(self, metric: Any, labels: tuple[str, ...], values: np.ndarray[Any, Any]) -> None:
        """Every value into a histogram: Prometheus's, and the OTLP export's where there is one."""
        observe_many(self._child(metric, *labels), values)
        if self.otlp is not None:
            self.otlp.record(metric, labels, values)

    def observe_batch(self, model: str | None, loss: str, per_sample: np.ndarray[Any, Any], mean: float) -> None:
        labels = (UNLABELLED_MODEL if model is None else self.model_label(model), loss)
        series = self._batch_series.get(labels)
        if series is None:
            series = self._batch_series[labels] = BatchSeries(*(self._child(m, *labels) for m in self._batch_metrics))
        values = per_sample.ravel()
        series.observe(values, mean)
        if self.otlp is not None:
            self.otlp.record(self.sample_loss, labels, values)
            self.otlp.add(self.samples, labels, values.size)
            self.otlp.add(self.batches, labels, 1)

    @property
    def _batch_metrics(self) -> tuple[Any, ...]:
        return self.sample_loss, self.samples, self.batches, self.last_mean

    def observe_segments(
        self,
        model: str,
        keys: Sequence[str],
        segments: Sequence[Mapping[str, str]],
        losses: Sequence[tuple[str, np.ndarray[Any, Any]]],
    ) -> None:
        """The per-sample losses of joined pairs by each declared segment key's value (`segments`:
        each pair's non-null values; `losses`: each configured loss's name and per-sample values,
        a row per pair), after their transaction committed. Prometheus only: the OTLP export
        carries the model-level series."""
        if not keys or not segments:
            return
        label = self.model_label(model)
        bounds = bounds_array(tuple(self.segment_loss._upper_bounds))  # with +Inf, as each child's
        # Each loss's values, a row per pair, and the bucket of each value: found once for every key.
        found = []
        for loss, per_sample in losses:
            values = per_sample.reshape(len(segments), -1)
            found.append((loss, values, np.searchsorted(bounds, values, side="left")))
        for key in keys:
            named, overflowed = self.segment_values.labels(label, key, [values.get(key) for values in segments])
            index: dict[str, int] = {}
            rows = np.fromiter((index.setdefault(name, len(index)) for name in named), np.int64, len(named))
            for loss, values, buckets in found:
                children = [self._child(self.segment_loss, label, loss, key, name) for name in index]
                observe_grouped(children, rows, values, buckets, bounds.size)
            if overflowed:
                self._child(self.segment_overflow, label, key).inc(overflowed)

    def observe_log(
        self,
        model: str,
        kind: str,
        accepted: int,
        duplicates: int,
        delays: np.ndarray[Any, Any],
        pending: tuple[int, int],
    ) -> None:
        """One request's rows for the delayed-labels store, after its transaction committed."""
        label = self.model_label(model)
        self._count(self.logged, (label, kind), accepted)
        if duplicates:
            self._count(self.duplicates, (label, kind), duplicates)
        if delays.size:
            self._count(self.joined, (label,), delays.size)
            self._observe(self.label_delay, (label,), np.maximum(delays, 0.0))
        self.set_pending(model, pending)

    def observe_expired(self, model: str, expired: tuple[int, int], pending: tuple[int, int]) -> None:
        label = self.model_label(model)
        for kind, count in zip(ROW_KINDS, expired, strict=True):
            if count:
                self._count(self.expired, (label, kind), count)
        self.set_pending(model, pending)

    def set_pending(self, model: str, pending: tuple[int, int]) -> None:
        label = self.model_label(model)
        for kind, count in zip(ROW_KINDS, pending, strict=True):
            self._child(self.pending, label, kind).set(count)

    def set_comparisons(self, compared: Sequence[Compared]) -> None:
        """The pairs of one comparison run, replacing the last run's, under the models' labels.
        Pairs that share their labels (models counted as 'other', two losses of one name) show
        the one with the worst verdict, the most pairs breaking ties: an alert on `worse` misses
        none."""
        rows: dict[tuple[str, str, str], Compared] = {}
        for row in compared:
            labels = (self.model_label(row.model), self.model_label(row.champion), row.loss)
            shown = rows.get(labels)
            if shown is None or (row.verdict, row.n) > (shown.verdict, shown.n):
                rows[labels] = row
        self.comparisons.set(rows)

    def set_estimates(self, watched: Sequence[Watched]) -> None:
        """The estimated losses of one estimate run, replacing the last run's, under the models'
        labels. Losses that share their labels (models counted as 'other', two losses of one name)
        show one whose realized mean lies outside its band if any, the most pairs breaking ties:
        the drift alert misses none."""
        rows: dict[tuple[str, str], Watched] = {}
        for row in watched:
            labels = (self.model_label(row.model), row.loss)
            shown = rows.get(labels)
            if shown is None or (row.drifting, row.pairs) > (shown.drifting, shown.pairs):
                rows[labels] = row
        self.estimates.set(rows)

    def set_store_status(self, status: str) -> None:
        for each in ("ok", "full", "unavailable"):
            self.store_status.labels(each).set(1 if each == status else 0)

    def set_quota_usage(self, key: str, models: int, stored_bytes: int, as_of: float) -> None:
        """`key`: the API key's name ("" for the service without keys); `as_of`: the `time.monotonic()`
        at which the usage was read (a report: before its read) or known (a write: after its commit).
        A usage older than the one shown is dropped, so that a report read before a write committed
        but set after it does not hide the write (within this process)."""
        with self._quota_lock:
            if as_of < self._quota_as_of.get(key, -math.inf):
                return
            self._quota_as_of[key] = as_of
            self._child(self.quota_usage, key, "models").set(models)
            self._child(self.quota_usage, key, "stored_bytes").set(stored_bytes)

    def set_keys(self, count: int, reload_failed: bool) -> None:
        """The API keys in force (their number splits the model labels) and whether the last reload failed."""
        self.model_labels.set_keys(count)
        self.keys_in_force.set(count)
        self.keys_reload_failed.set(1 if reload_failed else 0)

    def record_request(
        self,
        route: str,
        method: str,
        status: int,
        seconds: float,
        body_bytes: int,
        key: str | None = None,
        refusal: str | None = None,
    ) -> None:
        """`key`: the name of the API key that made the request; `refusal`: a reason the route
        gave for refusing it, which overrides the one read from the status.

        Counted into the (route, method, status)'s series, found once (`RequestSeries`); where the
        OTLP export counts too, through `_count`."""
        if self.otlp is not None:  # the OTLP export counts the requests too, through `_count`
            self._record_request_counted(route, method, status, seconds, body_bytes, key, refusal)
            return
        series = self._request_series.get((route, method, status))
        if series is None:
            series = self._request_series[route, method, status] = RequestSeries(
                self._child(self.requests, route, method, STATUS_CLASSES[status // 100]),
                self._child(self.latency, route, method),
                self._child(self.body_size, route),
                self._child(self.rejected, reason) if (reason := _status_reason(route, status)) else None,
            )
        series.record(seconds, body_bytes)
        if key is not None:
            self._count(self.key_requests, (key, STATUS_CLASSES[status // 100]))
        if refusal:
            self._count(self.rejected, (refusal,))
        elif series.rejected is not None:
            series.rejected.inc(1)

    def _record_request_counted(
        self,
        route: str,
        method: str,
        status: int,
        seconds: float,
        body_bytes: int,
        key: str | None,
        refusal: str | None,
    ) -> None:
        self._count(self.requests, (route, method, STATUS_CLASSES[status // 100]))
        if key is not None:
            self._count(self.key_requests, (key, STATUS_CLASSES[status // 100]))
        self._child(self.latency, route, method).observe(seconds)
        self._child(self.body_size, route).observe(body_bytes)
        reason = refusal or _status_reason(route, status)
        if reason:
            self._count(self.rejected, (reason,))

    def record_nonfinite(self, fields: Iterable[str]) -> None:
        for field in fields:
            self._count(self.nonfinite, (field,))

    def exposition_shared(
        self, visible: Callable[[str], bool] | None = None, scope: Hashable = None
    ) -> tuple[bytes, str]:
        """`exposition(visible)`, rendered once for every scrape of the same `scope` (None: every
        series; else, e.g., the name of the API key whose models `visible` accepts) that arrives
        while it renders.

        Rendering is Python holding the GIL (~1 s for 10 MB of series); four scrapers rendering at
        once left the event loop a fifth of the interpreter. Scrapes one after another each get a
        fresh rendering, so a scrape never sees values older than the scrapes before it."""
        return self._renderings.shared(scope, lambda: self.exposition(visible))

    def exposition(self, visible: Callable[[str], bool] | None = None) -> tuple[bytes, str]:
        """Every series, or with `visible` only those whose `model` label it accepts (and every
        series without a `model` label). With several workers, the merged values of all."""
        return render(self.registry, visible, own=(self.comparisons, self.estimates))


class _Counted:
    """A label-less counter as `ModelLabels` counts into it: through `Monitor._count`."""

    def __init__(self, monitor: Monitor, metric: Any) -> None:
        self._monitor = monitor
        self._metric = metric

    def inc(self, amount: float = 1) -> None:
        self._monitor._count(self._metric, (), amount)


def _status_reason(route: str, status: int) -> str | None:
    """The rejection a refused request's status names (None: not a refusal)."""
    return "overloaded" if status in OVERLOAD_STATUSES and route != "/readyz" else REJECTION_REASONS.get(status)


def start_otlp_export(monitor: Monitor) -> Any:
    """The worker's OTLP export (`otlp_export.OtlpExport`), started; None where no endpoint is set.
    The SDK is imported here, only then."""
    if monitor.otlp is None or monitor.otlp_endpoint is None:
        return None
    from service.server.monitoring import otlp_export

    return otlp_export.start(monitor, monitor.otlp, monitor.otlp_endpoint)
