"""Prometheus metrics: service health and model quality. The only module that knows Prometheus.

Single process: metrics live in the app's own registry. Under `loss-service serve`, the CLI points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before workers start, so every worker writes its
values there and /metrics merges them (prometheus-client multiprocess mode).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import Settings

OTHER_MODEL = "other"
OTHER_MODEL_OF_KEY = "other:"  # + the key's name: the label of a key's models past its share
UNLABELLED_MODEL = "unlabelled"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BODY_BUCKETS = tuple(float(10**e) for e in range(2, 10))  # 100 B .. 1 GB
# Label delay: a second to 90 days (clicks arrive in minutes, fraud verdicts in weeks).
_HOUR, _DAY = 3600.0, 86400.0
DELAY_BUCKETS = (
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    _HOUR,
    4 * _HOUR,
    12 * _HOUR,
    _DAY,
    3 * _DAY,
    7 * _DAY,
    14 * _DAY,
    30 * _DAY,
    90 * _DAY,
)
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


access_log = logging.getLogger("loss_service.access")
# The scope state of the request being served (set by RequestMonitor), where the API key guard
# writes the key's name: the model labels a request claims are charged to its key.
_request_state: ContextVar[dict[str, Any] | None] = ContextVar("request_state", default=None)


class BatchedStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's handler: lines go to stderr a batch at a time, once `batch_bytes` are
    waiting or `flush_after` seconds after the first of a batch, and when the app stops (its
    lifespan flushes the access log's handlers; `logging.shutdown` does too, at exit). A write
    and flush per line cost ~20 us of a ~200 us small request; a crash loses at most the last
    `flush_after` seconds of lines.
    """

    def __init__(self, stream: Any = None, flush_after: float = 0.1, batch_bytes: int = 64 * 1024) -> None:
        super().__init__(stream)
        # Given no stream, lines go to whatever sys.stderr is when they are written, as logging's
        # last-resort handler does: a process that replaces it (a test runner capturing output,
        # an application embedding the service) is followed, never written to once it closed it.
        self.follows_stderr = stream is None
        self.flush_after, self.batch_bytes = flush_after, batch_bytes
        self._lines: list[str] = []
        self._size = 0
        self._due = threading.Event()
        threading.Thread(target=self._flush_when_due, name="access-log", daemon=True).start()

    def setStream(self, stream: Any) -> Any:  # noqa: N802 - logging's name
        self.follows_stderr = False  # a stream chosen is kept
        return super().setStream(stream)

    def write_line(self, line: str) -> None:
        """Queue one line; no LogRecord is made (what `RequestMonitor` calls when this handler is
        the access log's only destination)."""
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            self._size += len(line) + 1
            if self._size >= self.batch_bytes:
                self._write()
            elif len(self._lines) == 1:
                self._due.set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _write(self) -> None:
        if self.follows_stderr:
            self.stream = sys.stderr
        if self._lines:
            self.stream.write("\n".join(self._lines) + "\n")
            self._lines.clear()
            self._size = 0
        super().flush()

    def _flush_when_due(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.flush_after)
            self._due.clear()
            self.flush()


def _direct_access_handler() -> BatchedStderr | None:
    """The access log's handler if it is the only place lines go: then a line needs no LogRecord."""
    handlers = access_log.handlers
    if len(handlers) != 1 or access_log.propagate or access_log.filters:
        return None
    handler = handlers[0]
    return handler if isinstance(handler, BatchedStderr) and not handler.filters else None


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Monitor:
    """The metrics of one app, and the bounded set of `model` label values it has seen."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._max_models = settings.max_models
        self._max_models_per_key = settings.max_models_per_key
        self._keys = 0  # API keys in force (set_keys); 0: no keys, one tenant holds every label
        self._model_idle = settings.model_label_idle
        self._allowlist = frozenset(settings.model_allowlist) if settings.model_allowlist else None
        self._models: dict[str, float] = {}  # label -> when a batch last used it, least recent first
        self._owners: dict[str, str | None] = {}  # label -> the key whose request claimed it
        self._owned: dict[str | None, dict[str, float]] = {}  # key -> its labels, as _models
        self._models_lock = threading.Lock()
        self._clock = clock
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._flight_lock = threading.Lock()
        self._flights: dict[Hashable, concurrent.futures.Future[tuple[bytes, str]]] = {}
        self._quota_lock = threading.Lock()
        self._quota_as_of: dict[str, float] = {}
        r = self.registry
        # Not mutation-tested (make mutation): the declarations' names, types and labels are pinned
        # by the docs' metrics table test and the live dashboard and alert tests; their help texts
        # and bucket bounds are documentation and configuration.
        # pragma: no mutate start
        self.requests = Counter(
            "loss_service_http_requests_total",
            "HTTP requests by route template, method and status class.",
            ["route", "method", "status_class"],
            registry=r,
        )
        self.latency = Histogram(
            "loss_service_http_request_duration_seconds",
            "Time from request start to the last response byte.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.body_size = Histogram(
            "loss_service_http_request_body_bytes",
            "Size of request bodies as received.",
            ["route"],
            buckets=BODY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "loss_service_http_requests_in_flight", "Requests being served.", registry=r, multiprocess_mode="livesum"
        )
        self.rejected = Counter(
            "loss_service_http_requests_rejected_total",
            "Requests refused, by reason: too_large, invalid, unauthorised, overloaded, rate_limited, quota.",
            ["reason"],
            registry=r,
        )
        for reason in ("too_large", "invalid", "unauthorised", "overloaded", "rate_limited", "quota"):
            self.rejected.labels(reason)
        self.sample_loss = Histogram(
            "loss_service_sample_loss",
            "Per-sample loss values by model and loss; _sum / _count is the mean over any window.",
            ["model", "loss"],
            buckets=tuple(settings.loss_buckets),
            registry=r,
        )
        self.samples = Counter(
            "loss_service_samples_total", "Per-sample loss values computed.", ["model", "loss"], registry=r
        )
        self.batches = Counter("loss_service_batches_total", "Batches computed.", ["model", "loss"], registry=r)
        self.last_mean = Gauge(
            "loss_service_last_batch_mean_loss",
            "The mean loss of the most recent batch.",
            ["model", "loss"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.nonfinite = Counter(
            "loss_service_nonfinite_inputs_total",
            "Requests refused because an input held NaN or an infinity, by field.",
            ["field"],
            registry=r,
        )
        for field in ("predictions", "labels", "sample_weight"):
            self.nonfinite.labels(field)
        self.logged = Counter(
            "loss_service_logged_total",
            "Rows stored to wait for their other half, by model and kind (predictions, labels).",
            ["model", "kind"],
            registry=r,
        )
        self.duplicates = Counter(
            "loss_service_duplicates_total",
            "Rows not stored because their id was already stored on the same side, by model and kind.",
            ["model", "kind"],
            registry=r,
        )
        self.joined = Counter(
            "loss_service_joined_total", "Prediction-label pairs joined and recorded, by model.", ["model"], registry=r
        )
        self.label_delay = Histogram(
            "loss_service_label_delay_seconds",
            "Per joined pair: label arrival minus prediction time (0 when the label came first).",
            ["model"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "loss_service_pending",
            "Rows waiting for their other half, by model and kind, as the store counted at its last write or sweep.",
            ["model", "kind"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.expired = Counter(
            "loss_service_expired_total",
            "Rows removed by retention before their other half came, by model and kind.",
            ["model", "kind"],
            registry=r,
        )
        self.key_requests = Counter(
            "loss_service_api_key_requests_total",
            "Requests by the name of the API key that made them (never the key), and status class.",
            ["key", "status_class"],
            registry=r,
        )
        self.keys_in_force = Gauge(
            "loss_service_api_keys", "API keys in force.", registry=r, multiprocess_mode="mostrecent"
        )
        self.keys_reload_failed = Gauge(
            "loss_service_api_keys_reload_failed",
            "1 while the keys file could not be reloaded (the previous keys stay in force), else 0.",
            registry=r,
            multiprocess_mode="max",
        )
        self.store_status = Gauge(
            "loss_service_store_status",
            "1 for the store's status as this worker last found it (ok; full: its disk is full, answers 507; "
            "unavailable: the database cannot be reached, answers 503), 0 for the others.",
            ["status"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.quota_usage = Gauge(
            "loss_service_quota_usage",
            "What the models an API key's patterns match hold against its quotas, by the key's name (never the key; "
            "empty without keys) and quota (models, stored_bytes), as the store counted at the last write or sweep.",
            ["key", "quota"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        # pragma: no mutate end
        self.set_store_status("ok")
        self._by_model = {
            id(metric)
            for metric in (
                self.sample_loss,
                self.samples,
                self.batches,
                self.last_mean,
                self.logged,
                self.duplicates,
                self.joined,
                self.label_delay,
                self.pending,
                self.expired,
            )
        }
        self.overflowed = Counter(
            "loss_service_model_label_overflow_total",
            f"Batches counted under model={OTHER_MODEL!r} or {OTHER_MODEL_OF_KEY!r} + the key's name: past the "
            "label limit (in all or the key's share) or outside the allow-list.",
            registry=r,
        )

    def model_label(self, model: str | None) -> str:
        """Bound the `model` label's cardinality: an allow-list if set, else at most `max_models`
        names, each kept while it is in use, and with API keys at most a share of them per key.

        Only batches that were computed (or rows that were stored) reach here, so refused requests
        claim no label. A new name is charged to the key of the request that brings it (read from
        the request's scope state); with keys in force, a caller without one (the retention sweep)
        only uses the labels there are, and counts a new name as 'other'. Each key may
        hold `max_models_per_key` labels, by default `max_models` split evenly among the keys, so
        one tenant cannot take every label. When the key's share, or every label, is taken, the
        new name takes the place of the label unused for longest (the key's own, or any when all
        are taken), if that one has been idle for `model_label_idle` seconds, and that model's
        series are removed; otherwise the new name counts as 'other:<key name>' ('other' without
        a key). A burst of junk names thus keeps real models out for at most that long, never
        pushes out a model in use, and never reaches another key's share.
        """
        if model is None:
            return UNLABELLED_MODEL
        state = _request_state.get()
        key: str | None = state.get("key") if state is not None else None
        if self._allowlist is not None:
            if model in self._allowlist:
                return model
            self.overflowed.inc()
            return _other(key)
        now = self._clock()
        with self._models_lock:
            owner = self._owners.get(model, key)
            owned = self._owned.setdefault(owner, {})
            if model in self._models:
                # Re-inserted last: the dicts stay ordered by last use.
                del self._models[model], owned[model]
                self._models[model] = owned[model] = now
                return model
            if key is None and self._keys:
                self.overflowed.inc()  # the retention sweep, acting for no key, claims no label of a key's
                return OTHER_MODEL
            pool = None
            if len(owned) >= self._share():
                pool = owned  # the key's share is taken: only its own idlest label may make room
            elif len(self._models) >= self._max_models:
                pool = self._models
            if pool is not None:
                idlest, last_used = next(iter(pool.items()))
                if now - last_used < self._model_idle:
                    self.overflowed.inc()
                    return _other(key)
                del self._models[idlest], self._owned[self._owners.pop(idlest)][idlest]
                self._remove_series(idlest)
            self._models[model] = owned[model] = now
            self._owners[model] = owner
            return model

    def _share(self) -> int:
        """The labels one key may hold: all of them without keys."""
        if not self._keys:
            return self._max_models
        return self._max_models_per_key or max(1, self._max_models // self._keys)

    def _remove_series(self, model: str) -> None:
        """Drop every series labelled with `model` (with several workers, its files keep them in
        /metrics until the workers restart: prometheus-client cannot remove multiprocess values)."""
        for key in [key for key in self._children if key[1] and key[1][0] == model and id(key[0]) in self._by_model]:
            metric, labels = key
            del self._children[key]
            metric.remove(*labels)  # made by _child, so it is there

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: prometheus-client validates and locks on every
        call (7 per loss request, ~30 us in all). The label sets are bounded (route templates,
        HTTP methods, statuses, bounded model names), so the cache is too."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_batch(self, model: str | None, loss: str, per_sample: np.ndarray[Any, Any], mean: float) -> None:
        label = self.model_label(model)
        values = per_sample.ravel()
        _observe_many(self._child(self.sample_loss, label, loss), values)
        self._child(self.samples, label, loss).inc(values.size)
        self._child(self.batches, label, loss).inc()
        self._child(self.last_mean, label, loss).set(mean)

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
        self._child(self.logged, label, kind).inc(accepted)
        if duplicates:
            self._child(self.duplicates, label, kind).inc(duplicates)
        if delays.size:
            self._child(self.joined, label).inc(delays.size)
            _observe_many(self._child(self.label_delay, label), np.maximum(delays, 0.0))
        self.set_pending(model, pending)

    def observe_expired(self, model: str, expired: tuple[int, int], pending: tuple[int, int]) -> None:
        label = self.model_label(model)
        for kind, count in zip(ROW_KINDS, expired, strict=True):
            if count:
                self._child(self.expired, label, kind).inc(count)
        self.set_pending(model, pending)

    def set_pending(self, model: str, pending: tuple[int, int]) -> None:
        label = self.model_label(model)
        for kind, count in zip(ROW_KINDS, pending, strict=True):
            self._child(self.pending, label, kind).set(count)

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
        self._keys = count
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
        gave for refusing it, which overrides the one read from the status."""
        self._child(self.requests, route, method, STATUS_CLASSES[status // 100]).inc()
        if key is not None:
            self._child(self.key_requests, key, STATUS_CLASSES[status // 100]).inc()
        self._child(self.latency, route, method).observe(seconds)
        self._child(self.body_size, route).observe(body_bytes)
        reason = refusal or (
            "overloaded" if status in OVERLOAD_STATUSES and route != "/readyz" else REJECTION_REASONS.get(status)
        )
        if reason:
            self._child(self.rejected, reason).inc()

    def record_nonfinite(self, fields: Iterable[str]) -> None:
        for field in fields:
            self.nonfinite.labels(field).inc()

    def exposition_shared(
        self, visible: Callable[[str], bool] | None = None, scope: Hashable = None
    ) -> tuple[bytes, str]:
        """`exposition(visible)`, rendered once for every scrape of the same `scope` (None: every
        series; else, e.g., the name of the API key whose models `visible` accepts) that arrives
        while it renders.

        Rendering is Python holding the GIL (~1 s for 10 MB of series); four scrapers rendering at
        once left the event loop a fifth of the interpreter. Scrapes one after another each get a
        fresh rendering, so a scrape never sees values older than the scrapes before it."""
        with self._flight_lock:
            flight = self._flights.get(scope)
            leader = flight is None
            if flight is None:
                flight = self._flights[scope] = concurrent.futures.Future()
        if not leader:
            return flight.result()
        try:
            rendered = self.exposition(visible)
            flight.set_result(rendered)
            return rendered
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            with self._flight_lock:
                del self._flights[scope]

    def exposition(self, visible: Callable[[str], bool] | None = None) -> tuple[bytes, str]:
        """Every series, or with `visible` only those whose `model` label it accepts (and every
        series without a `model` label). With several workers, the merged values of all."""
        registry = self.registry
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if visible is not None:
            scoped = CollectorRegistry(auto_describe=False)
            scoped.register(_Scoped(registry, visible))
            registry = scoped
        return generate_latest(registry), CONTENT_TYPE_LATEST


def _other(key: str | None) -> str:
    """The label of the models a key brings past its share: 'other:<key name>', or 'other'."""
    return OTHER_MODEL if key is None else OTHER_MODEL_OF_KEY + key


# Families labelled by an API key's name whose values come from the models the key's patterns
# match: a scoped scrape shows a key's series as it shows the key's overflow label, `other:<key>`.
_KEY_SCOPED = frozenset({"loss_service_quota_usage"})


class _Scoped:
    """A collector of another registry's metrics, keeping the samples whose `model` label
    `visible` accepts and every sample without one, except that a family of `_KEY_SCOPED` keeps
    a key's samples only where `visible` accepts `other:<key name>` (every model the key counts
    is one the scraper may use). `visible` is asked once per label value."""

    def __init__(self, source: CollectorRegistry, visible: Callable[[str], bool]) -> None:
        self.source, self.visible = source, visible

    def collect(self) -> Iterable[Metric]:
        answers: dict[str, bool] = {}
        for family in self.source.collect():
            by = "key" if family.name in _KEY_SCOPED else "model"
            if not any(by in sample.labels for sample in family.samples[:1]):
                yield family  # a family's samples all have the same label names
                continue
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                label = sample.labels[by] if by == "model" else _other(sample.labels[by])
                shown = answers.get(label)
                if shown is None:
                    shown = answers[label] = self.visible(label)
                if shown:
                    kept.samples.append(sample)
            yield kept


def _observe_many(histogram: Histogram, values: np.ndarray[Any, Any]) -> None:
    """Histogram.observe for a whole array at once.

    prometheus-client has no batch observe, and a Python call per value costs ~1 s per million
    samples. Its per-bucket counters (`_buckets`, non-cumulative: observe() bumps the first bucket
    whose bound >= value) and `_sum` are incremented here directly; test_monitoring checks this
    equals calling observe() value by value.
    """
    bounds = _bounds(tuple(histogram._upper_bounds))
    # As Python ints: iterating NumPy's counts built a scalar per bucket (32 values: 11.4 -> 9.4 us).
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=bounds.size).tolist()
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum(dtype=np.float64)))


@functools.cache
def _bounds(upper_bounds: tuple[float, ...]) -> np.ndarray[Any, Any]:
    return np.asarray(upper_bounds)


class RequestMonitor:
    """Observes every HTTP request once: metrics (route template, not the raw path; status,
    latency, body size, in flight), one JSON access line, and an X-Request-ID accepted or
    generated and echoed.

    The line holds id, method, route template, status, duration, body size, and the `model`,
    `loss` and batch size the route recorded in `scope["state"]`; never payload data or credentials.
    """

    def __init__(self, app: ASGIApp, monitor: Monitor) -> None:
        self.app = app
        self.monitor = monitor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"").decode("latin-1")
        # A generated id needs to be unique, not unpredictable: `random` (reseeded in each forked
        # worker) costs ~0.3 us where uuid4's read of the system's entropy took ~2.
        request_id = given if given and len(given) <= 128 and given.isprintable() else f"{random.getrandbits(128):032x}"
        started, status, received = time.perf_counter(), 500, 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        self.monitor.in_flight.inc()
        watched = _request_state.set(scope.setdefault("state", {}))
        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            _request_state.reset(watched)
            self.monitor.in_flight.dec()
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            state = scope.get("state", {})
            self.monitor.record_request(
                route, scope["method"], status, seconds, received, state.get("key"), state.get("refusal")
            )
            if access_log.isEnabledFor(logging.INFO):  # the line is not built for a level that drops it
                state = scope.get("state", {})
                line = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1e3, 3),
                    "body_bytes": received,
                    "model": state.get("model"),
                    "loss": state.get("loss"),
                    "batch_size": state.get("batch_size"),
                }
                text = orjson.dumps(line).decode()
                direct = _direct_access_handler()
                if direct is not None:
                    direct.write_line(text)
                else:
                    access_log.info(text)


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
