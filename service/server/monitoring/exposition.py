"""What /metrics shows: every worker's values merged, scoped to what a key may see, rendered once
for the scrapes that arrive together."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Hashable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Metric, generate_latest, multiprocess
from prometheus_client.registry import Collector

from service.server.monitoring.labels import overflow_label
from service.server.monitoring.multiprocess import multiprocess_dir


def render(
    registry: CollectorRegistry, visible: Callable[[str], bool] | None = None, own: Iterable[Collector] = ()
) -> tuple[bytes, str]:
    """`registry`'s series, or with `visible` only those whose `model` label it accepts (and every
    series without a `model` label). With several workers, the merged values of all, and those of
    the collectors `own` (registered in `registry`) as this worker has them."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in own:
            registry.register(collector)
    if visible is not None:
        scoped = CollectorRegistry(auto_describe=False)
        scoped.register(_Scoped(registry, visible))
        registry = scoped
    return generate_latest(registry), CONTENT_TYPE_LATEST


class SharedRenderings:
    """One rendering at a time per scope, whose result every scrape of that scope arriving while
    it renders shares."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, concurrent.futures.Future[tuple[bytes, str]]] = {}

    def shared(self, scope: Hashable, render: Callable[[], tuple[bytes, str]]) -> tuple[bytes, str]:
        with self._lock:
            flight = self._flights.get(scope)
            leader = flight is None
            if flight is None:
                flight = self._flights[scope] = concurrent.futures.Future()
        if not leader:
            return flight.result()
        try:
            rendered = render()
            flight.set_result(rendered)
            return rendered
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._flights[scope]


# Families labelled by an API key's name whose values come from the models the key's patterns
# match: a scoped scrape shows a key's series as it shows the key's overflow label, `other:<key>`.
_KEY_SCOPED = frozenset({"loss_service_quota_usage"})


class _Scoped:
    """A collector of another registry's metrics, keeping the samples whose `model` label
    `visible` accepts and every sample without one, except that a family of `_KEY_SCOPED` keeps
    a key's samples only where `visible` accepts `other:<key name>` (every model the key counts
    is one the scraper may use), and a comparison's only where it accepts the `champion` label
    too. `visible` is asked once per label value."""

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
                label = sample.labels[by] if by == "model" else overflow_label(sample.labels[by])
                shown = self._visible(label, answers)
                if shown and "champion" in sample.labels:  # a comparison shows to who may read both models
                    shown = self._visible(sample.labels["champion"], answers)
                if shown:
                    kept.samples.append(sample)
            yield kept

    def _visible(self, label: str, answers: dict[str, bool]) -> bool:
        shown = answers.get(label)
        if shown is None:
            shown = answers[label] = self.visible(label)
        return shown
