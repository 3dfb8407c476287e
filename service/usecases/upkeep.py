"""The store's upkeep: the threads its calls run in, the retention sweep, and a model's deletion,
each done in batches that let other writers in between; and the comparisons and estimates
/metrics reports."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from service.config import Settings
from service.store import DELETE_BATCH_ROWS, SWEEP_BATCH_ROWS, FollowedModelError, Store, StoreFailureError, Swept
from service.usecases import comparisons, estimate_watch
from service.usecases.errors import ConflictError, StoreUnavailableError
from service.usecases.models import Keys, report_usage
from service.usecases.recorder import Recorder
from service.values.compared import Compared
from service.values.watched import Watched

log = logging.getLogger("service.api")
T = TypeVar("T")


class StoreThreads:
    """The worker threads the store's calls run in: reads and writes each get a bounded share
    of their own, apart from anyio's default pool. Writes get as many threads as the database
    has writing connections; reads `read_threads` (LOSS_SERVICE_STORE_READ_THREADS), at most
    as many as it has reading connections.

    Requests waiting on the database therefore never hold the threads that computations, key
    reloads and everything else run in, and a read never waits for a thread behind writes.
    """

    def __init__(self, store: Store, read_threads: int = 2) -> None:
        self.store = store
        self.reads = anyio.CapacityLimiter(max(1, min(store.database.readers, read_threads)))
        self.writes = anyio.CapacityLimiter(store.database.writers)

    async def read(self, call: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(call, limiter=self.reads)

    async def write(self, call: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(call, limiter=self.writes)


def store_threads(state: Any) -> StoreThreads:
    """The app's `StoreThreads` for its store (`state`: the app's state), made at first use."""
    threads: StoreThreads | None = getattr(state, "store_threads", None)
    if threads is None or threads.store is not state.store:
        # No await in between: on the event loop, one request makes them.
        threads = state.store_threads = StoreThreads(state.store, state.settings.store_read_threads)
    return threads


async def sweep_forever(
    store: Store,
    monitor: Recorder,
    interval: float,
    threads: StoreThreads,
    keys: Keys | None = None,
    settings: Settings | None = None,
    batch_rows: int = SWEEP_BATCH_ROWS,
) -> None:
    """Remove rows past their model's retention every `interval` seconds, first at once (which
    also reports every model's pending rows and, given the keys, every key's quota usage after a
    restart). A failed sweep is logged and retried."""
    while True:
        try:
            event_ttl = settings.event_ttl if settings is not None else Settings.model_fields["event_ttl"].default
            swept = await sweep(store, time.time(), threads, batch_rows, event_ttl)
        except StoreFailureError:
            pass  # a full disk or an unreachable database: the store logs each episode once
        except Exception:
            log.exception("the retention sweep failed; retrying in %s s", interval)
        else:
            for result in swept:
                expired = (result.expired_predictions, result.expired_labels)
                monitor.observe_expired(result.model, expired, (result.pending_predictions, result.pending_labels))
            if settings is not None:
                try:
                    await threads.read(functools.partial(report_usage, store, monitor, keys, settings))
                except Exception:
                    log.exception("reading the quota usage failed; retrying after the next sweep")
        await anyio.sleep(interval)


async def compare_forever(store: Store, monitor: Recorder, interval: float, threads: StoreThreads) -> None:
    """Every `interval` seconds, first at once, compare every pair the models' `compare_to`
    declare, over the last 24 h, and hand the monitor the run's pairs (`compare_configured`)."""
    await _report_forever(
        "comparing the models",
        lambda: compare_configured(store, threads, time.time()),
        monitor.set_comparisons,
        interval,
    )


async def estimate_forever(
    store: Store, monitor: Recorder, interval: float, threads: StoreThreads, cohort: float
) -> None:
    """Every `interval` seconds, first at once, estimate every model configured with `estimate`
    (`estimate_watch.watched`, the cohort the last `cohort` seconds of predictions) and hand the
    monitor the run's losses."""
    await _report_forever(
        "estimating the models",
        lambda: estimate_configured(store, threads, time.time(), cohort),
        monitor.set_estimates,
        interval,
    )


async def _report_forever(
    what: str, run: Callable[[], Awaitable[T]], report: Callable[[T], None], interval: float
) -> None:
    """`report(await run())` every `interval` seconds, first at once. A failed run keeps the last
    run's report, is logged once (`what` failed) until a run succeeds again, and is retried."""
    failing = False
    while True:
        try:
            found = await run()
        except (StoreFailureError, StoreUnavailableError) as exc:
            if not failing:
                log.warning("%s for /metrics failed: %s; retrying every %s s", what, exc, interval)
            failing = True
        except Exception:
            if not failing:
                log.exception("%s for /metrics failed; retrying every %s s", what, interval)
            failing = True
        else:
            failing = False
            report(found)
        await anyio.sleep(interval)


async def estimate_configured(store: Store, threads: StoreThreads, now: float, cohort: float) -> list[Watched]:
    """Every estimated loss of every model configured with `estimate`, each model a call of its
    own in the store's read threads."""
    names = await threads.read(functools.partial(estimate_watch.estimated_models, store))
    found: list[Watched] = []
    for name in names:
        found.extend(await threads.read(functools.partial(estimate_watch.watched, store, name, now, cohort)))
    return found


async def compare_configured(store: Store, threads: StoreThreads, now: float) -> list[Compared]:
    """Every configured pair's comparison over the 24 h before `now`, each pair a call of its own
    in the store's read threads."""
    pairs = await threads.read(functools.partial(comparisons.configured_pairs, store))
    found = []
    for challenger, champion, loss in pairs:
        one = await threads.read(functools.partial(comparisons.compared, store, challenger, champion, loss, now))
        if one is not None:
            found.append(one)
    return found


async def delete_model(store: Store, name: str, threads: StoreThreads, batch_rows: int = DELETE_BATCH_ROWS) -> bool:
    """DELETE /v1/models/{name}: the model's rows go `batch_rows` per transaction
    (`Store.delete_batch`), pausing after each batch as long as it took, as the sweep does; False
    if there was no such model. A model others take their labels from is refused (ConflictError)."""
    found_once = False
    while True:
        started = time.monotonic()
        try:
            done = await threads.write(functools.partial(store.delete_batch, name, batch_rows))
        except FollowedModelError as exc:
            raise ConflictError(
                f"models {exc.followers} take their labels from model {name} (labels_from): reconfigure or delete "
                "them first; nothing was removed"
            ) from None
        if done is None:
            return found_once  # deleted meanwhile, or never there
        if done:
            return True
        found_once = True
        await anyio.sleep(time.monotonic() - started)


async def sweep(
    store: Store,
    now: float,
    threads: StoreThreads,
    batch_rows: int = SWEEP_BATCH_ROWS,
    event_ttl: float | None = None,
) -> list[Swept]:
    """One retention sweep, `batch_rows` rows per transaction (`Store.sweep_batch`), each batch a
    call of its own in the store's write threads. After each batch the sweep pauses as long as
    the batch took, so that writers, in this process and in others, take the write lock at
    least half the time while it runs. Given `event_ttl`, each model's inference-event halves
    waiting longer expire, and markers of completed events past retention go, in batches too
    (`Store.sweep_events`)."""
    names = await threads.read(store.model_names)
    swept = []
    for name in names:
        total: Swept | None = None
        while True:
            started = time.monotonic()
            batch = await threads.write(functools.partial(store.sweep_batch, name, now, batch_rows))
            if batch is None:
                break  # deleted meanwhile
            total = batch if total is None else total.then(batch)
            if batch.done:
                break
            await anyio.sleep(time.monotonic() - started)
        if total is not None:
            swept.append(total)
        if event_ttl is not None:
            await _sweep_events(store, name, now, threads, batch_rows, event_ttl)
    return swept


async def _sweep_events(
    store: Store, name: str, now: float, threads: StoreThreads, batch_rows: int, event_ttl: float
) -> None:
    while True:
        started = time.monotonic()
        done = await threads.write(functools.partial(store.sweep_events, name, now, event_ttl, batch_rows))
        if done is None or done:
            return
        await anyio.sleep(time.monotonic() - started)
