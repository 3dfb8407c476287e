"""Delayed labels, once a request is parsed: configure a model, keep logged rows in the store,
compute the configured losses over the pairs a request completes, and record them; the
retention sweep and a model's deletion.

The join reads ingest -> store -> engine -> store: the store decides which pairs a request
completes (once, in one transaction) and, still inside it, calls the plain function this module
hands it (`_pair_losses`, bound to the model's configuration and the request's ids), which asks
the engine for their losses; a pair the engine refuses leaves nothing stored. The metrics are
recorded only after the transaction committed. Errors are `UseCaseError`s, never HTTP.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np

from service.config import Settings
from service.engine import (
    LIBRARIES,
    LossInputError,
    LossResult,
    as_working_array,
    compute,
    libraries,
    loss_name,
    resolve,
)
from service.store import (
    Logged,
    Model,
    Pairs,
    Quota,
    QuotaExceededError,
    RowIdError,
    RowShapeError,
    SegmentKeysRemovedError,
    Side,
    Store,
    StoreFailureError,
    StoreFullError,
    TooManyPendingError,
    TooManyPendingEventsError,
    UnknownModelError,
)
from service.store.history import PairLosses, loss_variant
from service.usecases.errors import ConflictError, InvalidInputError, NotFoundError, QuotaError, StoreUnavailableError
from service.usecases.recorder import Recorder
from service.values.segments import segment_value
from service.values.text import shown

log = logging.getLogger("service.api")
SHOWN_DUPLICATES = 100
T = TypeVar("T")


class Principal(Protocol):
    """What a use case reads of the request's API key (`service.server.api.access.Principal`)."""

    name: str
    models: tuple[str, ...] | None
    max_models: int | None
    max_stored_bytes: int | None
    max_row_values: int | None


class Caller(Protocol):
    """The request a use case serves: its key (None without keys), and what it reports of the
    request (the model and batch size the access log shows)."""

    principal: Any
    model: str | None
    batch_size: int | None


class Keys(Protocol):
    """The keys in force (`service.server.api.access.KeyRing`), for every writing key's usage."""

    @property
    def enabled(self) -> bool: ...

    def principals(self) -> list[Any]: ...


# Checks that the caller's key may use a model, and takes that many values from its budget.
Authorize = Callable[[Any, str, int], None]


def unknown_model(name: str) -> NotFoundError:
    return NotFoundError(f"no model named {shown(name)} is configured; PUT /v1/models/{name} configures it")


def unavailable(exc: StoreFailureError) -> StoreUnavailableError:
    """A store failure in the use cases' words."""
    return StoreUnavailableError(exc.reason, exc.retry_after, isinstance(exc, StoreFullError))


# -- quotas ---------------------------------------------------------------------------------------


WRITING_SCOPES = frozenset({"ingest", "admin"})


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


def quota_error(exc: QuotaExceededError, setting: str, model: str) -> QuotaError:
    """The quota exceeded, named with the setting that holds its default."""
    message = f"{exc} (the key file's {exc.quota}, default {setting})"
    return QuotaError(message, exc.quota, ["quota", exc.quota], model)


def report_usage(store: Store, monitor: Recorder, keys: Keys | None, settings: Settings) -> None:
    """The usage of every key that may write (ingest or admin scope), or the service's without
    keys, into `loss_service_quota_usage`."""
    principals: list[Principal | None] = [None]
    if keys is not None and keys.enabled:
        principals = [p for p in keys.principals() if p.scopes & WRITING_SCOPES]
    quotas = [quota_of(principal, settings) for principal in principals]
    as_of = time.monotonic()  # before the read: every write committed by now is in it
    for principal, usage in zip(principals, store.usages(quotas), strict=True):
        monitor.set_quota_usage(principal.name if principal else "", usage.models, usage.stored_bytes, as_of)


def configure(store: Store, name: str, request: Any, now: float, quota: Quota | None = None) -> dict[str, Any]:
    """Configure a model from a validated `ModelConfigRequest`: the losses are checked as
    /v1/evaluate checks them, then stored; creating a model is checked against `quota`'s
    `max_models`."""
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
            raise InvalidInputError(f"losses.{position}.{exc.field}", exc.reason, exc.index) from None
        losses.append({"loss": loss, "options": options})
    config: dict[str, Any] = {
        "losses": losses,
        "convention": request.convention,
        "dtype": request.dtype,
        "segments": list(request.segments),
        "keep_pairs": request.keep_pairs,
    }
    if getattr(request, "events", None) is not None:
        config["events"] = request.events.model_dump()
        undeclared = [key for key in config["events"]["segments"] if key not in config["segments"]]
        if undeclared:
            declared = ", ".join(config["segments"]) or "none"
            raise InvalidInputError(
                f"events.segments.{undeclared[0]}",
                f"is not a segment key of this model (its `segments`: {declared}); declare it in `segments`",
            )
    try:
        return model_config(store.configure_model(name, config, request.retention_seconds, now, quota))
    except QuotaExceededError as exc:
        raise quota_error(exc, "LOSS_SERVICE_QUOTA_MODELS", name) from None
    except SegmentKeysRemovedError as exc:
        raise ConflictError(
            f"model {name} keeps its history by segment keys {exc.removed}: a re-PUT may add segment keys, "
            "never remove one (DELETE the model to start over)"
        ) from None
    except StoreFailureError as exc:
        raise unavailable(exc) from None


def model_config(model: Model) -> dict[str, Any]:
    # Models configured before segments and keep_pairs existed have neither: their defaults.
    config = {**model.config, "segments": model.config.get("segments", [])}
    config["keep_pairs"] = model.config.get("keep_pairs", False)
    return {
        "model": model.name,
        **config,
        "retention_seconds": model.retention_seconds,
        "created_at": model.created_at,
        "updated_at": model.updated_at,
    }


def model_status(
    store: Store, name: str, now: float, principal: Principal | None, settings: Settings
) -> dict[str, Any]:
    """A model's configuration, its counts of rows, and the caller's quota."""
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


def _problem(field: str, message: str, index: list[int] | None = None) -> InvalidInputError:
    return InvalidInputError(field, message, index or ())


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
        # The engine's own conversion and overflow check; the rows were searched for NaN as the
        # request was parsed (the API's NumericArray), so not again.
        return as_working_array(rows, field, np.dtype(dtype), finite=True)
    except LossInputError as exc:
        raise InvalidInputError(exc.field, exc.reason, exc.index) from None


def log_rows(
    store: Store,
    monitor: Recorder,
    settings: Settings,
    name: str,
    side: Side,
    request: Any,
    caller: Caller,
    authorize: Authorize,
) -> dict[str, Any]:
    """Log a validated `PredictionsLog` or `LabelsLog` for model `name`; the pairs it completes
    are joined and their losses computed and recorded, exactly once."""
    ids: list[str] = request.ids
    rows = request.predictions if side == "predictions" else request.labels
    if rows.shape[0] != len(ids):
        raise _problem(side, f"has {rows.shape[0]} rows and ids has {len(ids)}: one row per id")
    timestamps = _per_row(getattr(request, "timestamps", None), "timestamps", len(ids))
    weights = _per_row(getattr(request, "sample_weight", None), "sample_weight", len(ids))
    caller.model, caller.batch_size = name, len(ids)
    principal = caller.principal
    _check_width(rows, side, principal, settings)
    authorize(principal, name, rows.size)
    current = store.model(name)
    if current is None:
        raise unknown_model(name)
    segments = _segments(getattr(request, "segments", None), current.config.get("segments", []), len(ids))
    stored = _stored_rows(rows, side, current.config["dtype"])
    with store_errors(name, side):
        logged = store.log(
            side,
            name,
            ids,
            stored,
            now=time.time(),
            max_pending=settings.max_pending,
            timestamps=timestamps,
            weights=weights,
            on_join=pair_losses(side, ids),
            quota=quota_of(principal, settings),
            segments=segments,
            history_of=history_of,
        )
    return recorded(monitor, name, side, logged, principal)


def checked_rows(
    rows: np.ndarray[Any, Any],
    side: Side,
    model: Model,
    principal: Principal | None,
    settings: Settings,
    authorize: Authorize,
) -> np.ndarray[Any, Any]:
    """Rows about to be logged for `model`: within the key's row width and value budget, in the
    precision the store keeps them in."""
    _check_width(rows, side, principal, settings)
    authorize(principal, model.name, rows.size)
    return _stored_rows(rows, side, model.config["dtype"])


def pair_losses(side: Side, ids: list[str]) -> Callable[[Model, Pairs], list[JoinedLoss]]:
    """The store's `on_join` for a request logging `ids` on `side`: each configured loss over the
    pairs it completes, a refusal naming the id's index in `ids`."""
    position = {row_id: index for index, row_id in enumerate(ids)}
    return functools.partial(_pair_losses, side=side, position=position)


@contextmanager
def store_errors(name: str, side: Side) -> Iterator[None]:
    """The store's refusals of a log, in the use cases' words."""
    try:
        yield
    except QuotaExceededError as exc:
        raise quota_error(exc, "LOSS_SERVICE_QUOTA_STORED_BYTES", name) from None
    except UnknownModelError:
        raise unknown_model(name) from None
    except RowShapeError as exc:
        raise _problem(side, str(exc)) from None
    except RowIdError as exc:  # the schema refuses these first; the store's own check stays a 422
        raise _problem("ids", exc.reason, [exc.index]) from None
    except TooManyPendingError as exc:  # a bound on the model's storage: audited as the quotas are
        raise QuotaError(str(exc), "max_pending", ["body", "ids"], name) from None
    except TooManyPendingEventsError as exc:
        raise QuotaError(str(exc), exc.setting.removeprefix("LOSS_SERVICE_").lower(), ["body"], name) from None
    except StoreFailureError as exc:
        raise unavailable(exc) from None


def _segments(given: dict[str, list[Any]] | None, declared: list[str], count: int) -> list[dict[str, str]] | None:
    """Each row's non-null segment values, checked against the model's declared keys: a value is
    a string of 1-64 printable characters or null (`segment_value`); a declared key left out is
    null for every row."""
    if not given:
        return None
    rows: list[dict[str, str]] = [{} for _ in range(count)]
    for key, values in given.items():
        field = f"segments.{key}"
        if key not in declared:
            shown_keys = ", ".join(declared) or "none"
            raise _problem(field, f"is not a segment key of this model (its keys: {shown_keys}; PUT adds keys)")
        if len(values) != count:
            raise _problem(field, f"has {len(values)} values and ids has {count}: one value (or null) per row")
        for index, given_value in enumerate(values):
            try:
                value = segment_value(given_value)
            except ValueError as exc:
                raise _problem(field, str(exc), [index]) from None
            if value is not None:
                rows[index][key] = value
    return rows


class JoinedLoss(NamedTuple):
    """One configured loss over the pairs a request completes: its name, the engine's result,
    and the variant its history is kept under (`loss_variant` of its configuration)."""

    name: str
    result: LossResult
    variant: int


def history_of(results: list[JoinedLoss]) -> list[PairLosses]:
    """What each joined pair keeps of its losses (the store's history): per configured loss, in
    order, its share of the loss's sum and denominator and its number of values."""
    kept = []
    for name, reduced, variant in results:
        if reduced.sample_sums is None or reduced.sample_denominators is None:
            raise ValueError(f"{name}: the engine gave no shares")
        pairs = len(reduced.sample_sums)
        counts = np.full(pairs, reduced.count // pairs if pairs else 0, dtype=np.int64)
        kept.append(
            PairLosses(variant, name, reduced.aggregate, reduced.sample_sums, reduced.sample_denominators, counts)
        )
    return kept


def _check_width(rows: np.ndarray[Any, Any], side: Side, principal: Principal | None, settings: Settings) -> None:
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


def recorded(
    monitor: Recorder, name: str, side: Side, logged: Logged[list[JoinedLoss]], principal: Principal | None
) -> dict[str, Any]:
    """The committed write's answer, its pairs' losses recorded (from here on they are joined for
    good, and recorded exactly once)."""
    model, results = logged.model, logged.joined_result or []
    for loss, reduced, _ in results:
        monitor.observe_batch(name, loss, reduced.per_sample, reduced.mean)
    if results:
        per_sample = [(loss, reduced.per_sample) for loss, reduced, _ in results]
        monitor.observe_segments(name, model.config.get("segments", []), logged.pairs.segments, per_sample)
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
        "results": [joined.result.answer() for joined in results],
        "pending_predictions": model.pending_predictions,
        "pending_labels": model.pending_labels,
    }


def _pair_losses(model: Model, pairs: Pairs, *, side: Side, position: dict[str, int]) -> list[JoinedLoss]:
    """Each configured loss over the completed pairs, by the engine, one call per loss; run by the
    store inside its transaction, so a pair the engine refuses leaves nothing stored."""
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
                shares=True,  # each pair's share of the sum and denominator: its history
            )
        except LossInputError as exc:
            raise _join_error(exc, call["loss"], pairs, side, position) from None
        variant = loss_variant(call["loss"], call["options"], config["convention"], config["dtype"])
        results.append(JoinedLoss(loss_name(call["loss"], config["convention"], call["options"]), reduced, variant))
    return results


def _join_error(
    exc: LossInputError, loss: str, pairs: Pairs, side: Side, position: dict[str, int]
) -> InvalidInputError:
    other = "labels" if side == "predictions" else "predictions"
    where = f"{exc.field}{list(exc.index[1:]) if len(exc.index) > 1 else ''}"
    if not exc.index:
        message = f"the {len(pairs.ids)} pairs this request completes: {where}: {exc.reason} ({loss}); nothing stored"
        return InvalidInputError("ids", message, detail=message)
    row_id = pairs.ids[exc.index[0]]
    message = f"id {shown(row_id)} does not fit its stored {other}: {where}: {exc.reason} ({loss}); nothing stored"
    return InvalidInputError("ids", message, [position[row_id]])
