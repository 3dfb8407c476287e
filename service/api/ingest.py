"""What the delayed-labels routes do once a body has arrived: validate it, keep the rows in the
store, compute the configured losses over the pairs a request completes, and record them.

The store decides which pairs a request completes (once, in one transaction); the engine
computes their losses inside that transaction, so a pair the engine refuses leaves nothing
stored; the metrics are recorded only after the transaction committed.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from service.api.access import PRINCIPAL, KeyRing, Principal, audit, authorize
from service.api.body import validate_json
from service.api.errors import engine_problem
from service.api.problems import ProblemError, shown
from service.api.schemas import LabelsLog, PredictionsLog, model_config_request_model
from service.config import Settings
from service.engine import LIBRARIES, LossInputError, Reduced, as_working_array, compute, libraries, loss_name, resolve
from service.monitoring import Monitor
from service.store import (
    DELETE_BATCH_ROWS,
    SWEEP_BATCH_ROWS,
    Model,
    Pairs,
    Quota,
    QuotaExceededError,
    RowIdError,
    RowShapeError,
    Side,
    Store,
    StoreFailureError,
    Swept,
    TooManyPendingError,
    UnknownModelError,
)

log = logging.getLogger("service.api")
SHOWN_DUPLICATES = 100
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


def unknown_model(name: str) -> ProblemError:
    return ProblemError(404, f"no model named {shown(name)} is configured; PUT /v1/models/{name} configures it")


# -- quotas ---------------------------------------------------------------------------------------


WRITING_SCOPES = frozenset({"ingest", "admin"})


def principal_of(state: dict[str, Any] | None) -> Principal | None:
    """The request's API key; None on the service without keys."""
    principal: Principal | None = (state or {}).get(PRINCIPAL)
    return principal


def quota_of(principal: Principal | None, settings: Settings) -> Quota:
    """The quota a key's writes are checked against: its limits (or the settings'), over the models
    its patterns match. Without keys, the service's own, over every model."""
    if principal is None:
        return Quota("the service", None, settings.quota_models, settings.quota_stored_bytes)
    return Quota(
        f"the API key {principal.name!r}",
        principal.models,
        principal.max_models or settings.quota_models,
        principal.max_stored_bytes or settings.quota_stored_bytes,
    )


def row_values_limit(principal: Principal | None, settings: Settings) -> int:
    return (principal.max_row_values if principal else None) or settings.quota_row_values


def quota_problem(exc: QuotaExceededError, setting: str, state: dict[str, Any], route: str, model: str) -> ProblemError:
    """429 naming the quota, counted as a `quota` refusal and audited as the keys' refusals are.
    No Retry-After: usage falls only when rows expire or a model is deleted, which waiting a few
    seconds does not bring about."""
    state["refusal"] = "quota"
    audit(429, state.get("key", "unknown"), route, model, exc.quota)
    message = f"{exc} (the key file's {exc.quota}, default {setting})"
    return ProblemError(429, message, errors=[{"loc": ["quota", exc.quota], "msg": message}])


def report_usage(store: Store, monitor: Monitor, keys: KeyRing | None, settings: Settings) -> None:
    """The usage of every key that may write (ingest or admin scope), or the service's without
    keys, into `loss_service_quota_usage`."""
    principals: list[Principal | None] = [None]
    if keys is not None and keys.enabled:
        principals = [p for p in keys.principals() if p.scopes & WRITING_SCOPES]
    quotas = [quota_of(principal, settings) for principal in principals]
    as_of = time.monotonic()  # before the read: every write committed by now is in it
    for principal, usage in zip(principals, store.usages(quotas), strict=True):
        monitor.set_quota_usage(principal.name if principal else "", usage.models, usage.stored_bytes, as_of)


def configure(
    store: Store, name: str, body: bytes, now: float, quota: Quota | None = None, state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """PUT /v1/models/{name}: the losses are checked as /v1/evaluate checks them, then stored;
    creating a model is checked against `quota`'s `max_models`."""
    request = validate_json(model_config_request_model(), body)
    losses = []
    for position, call in enumerate(request.losses):
        options = call.options.model_dump(exclude_unset=True)
        try:
            if request.convention in LIBRARIES:  # kept as written: error@0.7 stays error@0.7
                libraries.bind(request.convention, call.loss, options)
                loss = call.loss
            else:
                spec = resolve(call.loss)
                spec.bind(options, request.convention)
                loss = spec.name
        except LossInputError as exc:
            raise engine_problem(LossInputError(f"losses.{position}.{exc.field}", exc.reason, exc.index)) from None
        losses.append({"loss": loss, "options": options})
    config = {"losses": losses, "convention": request.convention, "dtype": request.dtype}
    try:
        return model_config(store.configure_model(name, config, request.retention_seconds, now, quota))
    except QuotaExceededError as exc:
        raise quota_problem(
            exc, "LOSS_SERVICE_QUOTA_MODELS", {} if state is None else state, f"/v1/models/{name}", name
        ) from None


def model_config(model: Model) -> dict[str, Any]:
    return {
        "model": model.name,
        **model.config,
        "retention_seconds": model.retention_seconds,
        "created_at": model.created_at,
        "updated_at": model.updated_at,
    }


def model_status(
    store: Store, name: str, now: float, principal: Principal | None, settings: Settings
) -> dict[str, Any]:
    model = store.model(name)
    if model is None:
        raise unknown_model(name)
    oldest = store.oldest_pending(name)
    quota = quota_of(principal, settings)
    usage = store.usage(quota)
    return {
        **model_config(model),
        "pending_predictions": model.pending_predictions,
        "pending_labels": model.pending_labels,
        "joined": model.joined,
        "expired_predictions": model.expired_predictions,
        "expired_labels": model.expired_labels,
        "oldest_pending_seconds": None if oldest is None else max(0.0, now - oldest),
        "prediction_shape": None if model.prediction_shape is None else list(model.prediction_shape),
        "label_shape": None if model.label_shape is None else list(model.label_shape),
        "stored_bytes": model.stored_bytes,
        "quota": {
            "key": None if principal is None else principal.name,
            "models": {"used": usage.models, "limit": quota.max_models},
            "stored_bytes": {"used": usage.stored_bytes, "limit": quota.max_stored_bytes},
            "row_values": {"limit": row_values_limit(principal, settings)},
        },
    }


def _problem(field: str, message: str, index: list[int] | None = None) -> ProblemError:
    return engine_problem(LossInputError(field, message, index or ()))


def _per_row(values: np.ndarray[Any, Any] | None, field: str, count: int) -> list[float] | None:
    """Timestamps or weights: one finite number >= 0 per id (finiteness is the array validator's)."""
    if values is None:
        return None
    if values.ndim != 1 or values.shape[0] != count:
        raise _problem(field, f"expected one number per id ({count}), got an array of shape {list(values.shape)}")
    negative = np.flatnonzero(values < 0)
    if negative.size:
        raise _problem(field, f"must be >= 0, got {values[negative[0]].item()!r}", [int(negative[0])])
    return [float(v) for v in values.astype(np.float64)]


def _stored_rows(rows: np.ndarray[Any, Any], field: str, dtype: str) -> np.ndarray[Any, Any]:
    """Rows in the precision the store keeps them in: the model's dtype, which is what the engine
    converts them to anyway, or int64 for integer labels (class indices stay exact)."""
    if field == "labels" and rows.dtype.kind in "iu":
        if rows.dtype.kind == "u" and rows.size and rows.max() > np.iinfo(np.int64).max:
            index = [int(i) for i in np.unravel_index(int(rows.argmax()), rows.shape)]
            raise _problem(field, "integer is too large (beyond 64 bits)", index)
        return rows.astype(np.int64)
    try:
        # The engine's own conversion and overflow check; NumericArray searched the rows for NaN already.
        return as_working_array(rows, field, np.dtype(dtype), finite=True)
    except LossInputError as exc:
        raise engine_problem(exc) from None


def log_rows(
    store: Store,
    monitor: Monitor,
    max_pending: int,
    name: str,
    side: Side,
    body: bytes,
    state: dict[str, Any],
    settings: Settings,
) -> dict[str, Any]:
    """POST /v1/models/{name}/predictions or /labels."""
    schema = PredictionsLog if side == "predictions" else LabelsLog
    request = validate_json(schema, body)
    ids: list[str] = request.ids
    rows = request.predictions if side == "predictions" else request.labels
    if rows.shape[0] != len(ids):
        raise _problem(side, f"has {rows.shape[0]} rows and ids has {len(ids)}: one row per id")
    timestamps = _per_row(getattr(request, "timestamps", None), "timestamps", len(ids))
    weights = _per_row(getattr(request, "sample_weight", None), "sample_weight", len(ids))
    state.update(model=name, batch_size=len(ids))
    principal = principal_of(state)
    width, limit = math.prod(rows.shape[1:]), row_values_limit(principal, settings)
    if width > limit:
        whose = "the service's" if principal is None else f"the API key {principal.name!r}'s"
        raise _problem(
            side,
            f"a row holds {width:,} values, more than {whose} quota max_row_values of {limit:,} "
            "(the key file's max_row_values, default LOSS_SERVICE_QUOTA_ROW_VALUES); "
            "nothing of this request was stored",
            [0],
        )
    authorize(state, name, rows.size)
    current = store.model(name)
    if current is None:
        raise unknown_model(name)
    stored = _stored_rows(rows, side, current.config["dtype"])
    position = {row_id: index for index, row_id in enumerate(ids)}

    def join(model: Model, pairs: Pairs) -> list[tuple[str, Reduced]]:
        return _compute_pairs(model, pairs, side, position)

    try:
        logged = store.log(
            side,
            name,
            ids,
            stored,
            now=time.time(),
            max_pending=max_pending,
            timestamps=timestamps,
            weights=weights,
            on_join=join,
            quota=quota_of(principal, settings),
        )
    except QuotaExceededError as exc:
        raise quota_problem(exc, "LOSS_SERVICE_QUOTA_STORED_BYTES", state, f"/v1/models/{name}/{side}", name) from None
    except UnknownModelError:
        raise unknown_model(name) from None
    except RowShapeError as exc:
        raise _problem(side, str(exc)) from None
    except RowIdError as exc:  # the schema refuses these first; the store's own check stays a 422
        raise _problem("ids", exc.reason, [exc.index]) from None
    except TooManyPendingError as exc:  # a bound on the model's storage: audited as the quotas are
        state["refusal"] = "quota"
        audit(429, state.get("key", "unknown"), f"/v1/models/{name}/{side}", name, "max_pending")
        raise ProblemError(429, str(exc), errors=[{"loc": ["body", "ids"], "msg": str(exc)}]) from None
    # Committed: from here on the pairs are joined for good, and recorded exactly once.
    model, results = logged.model, logged.joined_result or []
    for loss, reduced in results:
        monitor.observe_batch(name, loss, reduced.per_sample, reduced.mean)
    pending = (model.pending_predictions, model.pending_labels)
    monitor.observe_log(name, side, logged.accepted, len(logged.duplicate_ids), logged.pairs.delays, pending)
    if logged.usage is not None:
        key, usage = "" if principal is None else principal.name, logged.usage
        monitor.set_quota_usage(key, usage.models, usage.stored_bytes, time.monotonic())  # after the commit
    return {
        "accepted": logged.accepted,
        "duplicates": len(logged.duplicate_ids),
        "duplicate_ids": logged.duplicate_ids[:SHOWN_DUPLICATES],
        "joined": len(logged.pairs.ids),
        "joined_ids": logged.pairs.ids,
        "results": [reduced.answer() for _, reduced in results],
        "pending_predictions": model.pending_predictions,
        "pending_labels": model.pending_labels,
    }


def _compute_pairs(model: Model, pairs: Pairs, side: Side, position: dict[str, int]) -> list[tuple[str, Reduced]]:
    """Each configured loss over the completed pairs, by the engine, one call per loss."""
    config = model.config
    given = [w for w in pairs.weights if w is not None]
    weights = None if not given else np.array([1.0 if w is None else w for w in pairs.weights])
    results = []
    for call in config["losses"]:
        try:
            reduced = compute(
                call["loss"],
                pairs.predictions,
                pairs.labels,
                options=call["options"],
                sample_weight=weights,
                dtype=config["dtype"],
                convention=config["convention"],
                inputs_finite=True,  # every stored row was searched and converted as it was logged
            )
        except LossInputError as exc:
            raise _join_problem(exc, call["loss"], pairs, side, position) from None
        results.append((loss_name(call["loss"], config["convention"], call["options"]), reduced))
    return results


def _join_problem(exc: LossInputError, loss: str, pairs: Pairs, side: Side, position: dict[str, int]) -> ProblemError:
    other = "labels" if side == "predictions" else "predictions"
    where = f"{exc.field}{list(exc.index[1:]) if len(exc.index) > 1 else ''}"
    if not exc.index:
        message = f"the {len(pairs.ids)} pairs this request completes: {where}: {exc.reason} ({loss}); nothing stored"
        return ProblemError(422, message, errors=[{"loc": ["body", "ids"], "msg": message}])
    row_id = pairs.ids[exc.index[0]]
    message = f"id {shown(row_id)} does not fit its stored {other}: {where}: {exc.reason} ({loss}); nothing stored"
    loc: list[str | int] = ["body", "ids", position[row_id]]
    return ProblemError(422, f"ids.{position[row_id]}: {message}", errors=[{"loc": loc, "msg": message}])


async def sweep_forever(
    store: Store,
    monitor: Monitor,
    interval: float,
    threads: StoreThreads,
    keys: KeyRing | None = None,
    settings: Settings | None = None,
    batch_rows: int = SWEEP_BATCH_ROWS,
) -> None:
    """Remove rows past their model's retention every `interval` seconds, first at once (which
    also reports every model's pending rows and, given the keys, every key's quota usage after a
    restart). A failed sweep is logged and retried."""
    while True:
        try:
            swept = await sweep(store, time.time(), threads, batch_rows)
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


async def delete_model(store: Store, name: str, threads: StoreThreads, batch_rows: int = DELETE_BATCH_ROWS) -> bool:
    """DELETE /v1/models/{name}: the model's rows go `batch_rows` per transaction
    (`Store.delete_batch`), pausing after each batch as long as it took, as the sweep does; False
    if there was no such model."""
    found_once = False
    while True:
        started = time.monotonic()
        done = await threads.write(functools.partial(store.delete_batch, name, batch_rows))
        if done is None:
            return found_once  # deleted meanwhile, or never there
        if done:
            return True
        found_once = True
        await anyio.sleep(time.monotonic() - started)


async def sweep(store: Store, now: float, threads: StoreThreads, batch_rows: int = SWEEP_BATCH_ROWS) -> list[Swept]:
    """One retention sweep, `batch_rows` rows per transaction (`Store.sweep_batch`), each batch a
    call of its own in the store's write threads. After each batch the sweep pauses as long as
    the batch took, so that writers, in this process and in others, take the write lock at
    least half the time while it runs."""
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
    return swept
