"""The metric declarations: every family's name, help text, type, labels and buckets."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from service.server.monitoring.labels import OTHER_MODEL, OTHER_MODEL_OF_KEY
from service.values.compared import Compared
from service.values.watched import Watched

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


class Metrics:
    """The metric families of one registry, declared; `Monitor` records into them."""

    def __init__(self, registry: CollectorRegistry, loss_buckets: list[float]) -> None:
        self.registry = registry
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
            buckets=tuple(loss_buckets),
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
        self.segment_loss = Histogram(
            "loss_service_segment_loss",
            "Per-sample loss values of joined pairs by model, loss, declared segment key and the pair's value of it "
            "('null': none; 'other': past the model's first LOSS_SERVICE_MAX_SEGMENT_VALUES values).",
            ["model", "loss", "segment_key", "segment_value"],
            buckets=tuple(loss_buckets),
            registry=r,
        )
        self.segment_overflow = Counter(
            "loss_service_segment_value_overflow",
            "Joined pairs whose value of a segment key was counted as segment_value='other', by model and key.",
            ["model", "segment_key"],
            registry=r,
        )
        self.comparisons = ComparisonGauges()
        r.register(self.comparisons)
        self.estimates = EstimateGauges()
        r.register(self.estimates)
        # pragma: no mutate end
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
                self.segment_loss,
                self.segment_overflow,
            )
        }
        self.overflowed = Counter(
            "loss_service_model_label_overflow_total",
            f"Batches counted under model={OTHER_MODEL!r} or {OTHER_MODEL_OF_KEY!r} + the key's name: past the "
            "label limit (in all or the key's share) or outside the allow-list.",
            registry=r,
        )


COMPARISON_LABELS = ("model", "champion", "loss")
# Each family's name, help text and the field of `Compared` it shows.
COMPARISON_FAMILIES = (
    (
        "loss_service_comparison_difference",
        "The challenger's (model) mean loss minus the champion's over the ids both joined in the last 24 h, paired "
        "id by id.",
        "mean",
    ),
    (
        "loss_service_comparison_low",
        "Lower bound of the difference's 95% anytime-valid confidence sequence; absent while undefined.",
        "low",
    ),
    ("loss_service_comparison_high", "Upper bound of the same; absent while undefined.", "high"),
    (
        "loss_service_comparison_verdict",
        "-1: the challenger's loss is lower (better), 1: higher (worse), 0: undecided.",
        "verdict",
    ),
    ("loss_service_comparison_pairs", "Ids both models joined in the last 24 h that count.", "n"),
)


class ComparisonGauges:
    """The comparison gauges: every pair of the last comparison run (`set`), keyed by its
    (model, champion, loss) labels.

    A collector of this worker's own run rather than gauges in the multiprocess files: every worker
    runs the same comparisons over the same store, so whichever worker answers a scrape shows
    them, and a pair no longer compared leaves /metrics at the next run, which values written to
    the multiprocess files (prometheus-client cannot remove them) would not. The rows are
    replaced whole, so a scrape sees one run's."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], Compared] = {}

    def set(self, rows: dict[tuple[str, str, str], Compared]) -> None:
        self._rows = dict(rows)

    def forget(self, label: str) -> None:
        """Drop the pairs of a model label given to another model."""
        self._rows = {labels: row for labels, row in self._rows.items() if label not in labels[:2]}

    def rows(self) -> dict[tuple[str, str, str], Compared]:
        return self._rows

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, text, labels=COMPARISON_LABELS) for name, text, _ in COMPARISON_FAMILIES]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = self._rows
        for name, text, field in COMPARISON_FAMILIES:
            family = GaugeMetricFamily(name, text, labels=COMPARISON_LABELS)
            for labels, row in rows.items():
                value = getattr(row, field)
                if value is not None and math.isfinite(value):  # an undefined band is left unset, never NaN
                    family.add_metric(list(labels), float(value))
            yield family


ESTIMATE_LABELS = ("model", "loss")
# Each family's name, help text and the field of `Watched` it shows.
ESTIMATE_FAMILIES = (
    (
        "loss_service_expected_loss",
        "The expected loss of the model's predictions of the last hour, joined and pending, under its belief "
        "(estimate in its configuration).",
        "expected",
    ),
    ("loss_service_expected_loss_low", "Lower bound of the same's 3-sigma band.", "low"),
    ("loss_service_expected_loss_high", "Upper bound of the same's 3-sigma band.", "high"),
    ("loss_service_expected_loss_predictions", "The predictions of the last hour estimated.", "predictions"),
    (
        "loss_service_estimate_cohort_realized",
        "The realized mean loss of the cohort's joined pairs (predictions of the last LOSS_SERVICE_ESTIMATE_COHORT "
        "seconds); absent unless every one of them has an estimate.",
        "realized",
    ),
    (
        "loss_service_estimate_cohort_expected",
        "The expected loss of the same joined pairs, each under the belief its model held when it joined.",
        "joined_expected",
    ),
    ("loss_service_estimate_cohort_low", "Lower bound of the same's 3-sigma band.", "joined_low"),
    ("loss_service_estimate_cohort_high", "Upper bound of the same's 3-sigma band.", "joined_high"),
    ("loss_service_estimate_cohort_pairs", "The cohort's joined pairs with an estimate.", "pairs"),
)


class EstimateGauges:
    """The estimate gauges: every estimated loss of the last estimate run (`set`), keyed by its
    (model, loss) labels; a collector of this worker's own run, as `ComparisonGauges` is, for the
    same reasons. An undefined value is left unset, never NaN."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], Watched] = {}

    def set(self, rows: dict[tuple[str, str], Watched]) -> None:
        self._rows = dict(rows)

    def forget(self, label: str) -> None:
        """Drop the losses of a model label given to another model."""
        self._rows = {labels: row for labels, row in self._rows.items() if labels[0] != label}

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, text, labels=ESTIMATE_LABELS) for name, text, _ in ESTIMATE_FAMILIES]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = self._rows
        for name, text, field in ESTIMATE_FAMILIES:
            family = GaugeMetricFamily(name, text, labels=ESTIMATE_LABELS)
            for labels, row in rows.items():
                value = getattr(row, field)
                if value is not None and math.isfinite(value):
                    family.add_metric(list(labels), float(value))
            yield family
