"""Delayed labels, once a request is parsed: keep logged rows in the store, compute the
configured losses over the pairs a request completes, and record them (models.py configures
the model and checks the key's quota).

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
from dataclasses import replace
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np

from service.config import Settings
from service.engine import (
    LossInputError,
    LossResult,
    as_working_array,
    compute,
    loss_name,
)
from service.store import (
    Logged,
    Model,
    Pairs,
    QuotaExceededError,
    RowIdError,
    RowShapeError,
    Side,
    Store,
    StoreFailureError,
    TooManyPendingError,
    TooManyPendingEventsError,
    UnknownModelError,
)
from service.store.history import PairLosses, loss_variant
from service.usecases import estimate_fit
from service.usecases.errors import ConflictError, InvalidInputError, QuotaError
from service.usecases.estimates import pair_moments
from service.usecases.models import Principal, quota_error, quota_of, row_values_limit, unavailable, unknown_model
from service.usecases.recorder import Recorder
from service.values.segments import segment_value
from service.values.text import shown

log = logging.getLogger("service.api")
SHOWN_DUPLICATES = 100
T = TypeVar("T")


class Caller(Protocol):
    """The request a use case serves: its key (None without keys), and what it reports of the
    request (the model and batch size the access log shows)."""

    principal: Any
    model: str | None
    batch_size: int | None


# Checks that the caller's key may use a model, and takes that many values from its budget.
Authorize = Callable[[Any, str, int], None]


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
    source = current.config.get("labels_from")
    if side == "labels" and source is not None:
        raise ConflictError(
            f"model {name} takes its labels from model {source} (labels_from): log them for {source}, once, "
            "and they serve both; nothing was stored"
        )
    segments = _segments(getattr(request, "segments", None), current.config.get("segments", []), len(ids))
    stored = _stored_rows(rows, side, current.config["dtype"])
    now = time.time()
    with store_errors(name, side):
        logged = store.log(
            side,
            name,
            ids,
            stored,
            now=now,
            max_pending=settings.max_pending,
            timestamps=timestamps,
            weights=weights,
            on_join=pair_losses(side, ids, name),
            quota=quota_of(principal, settings),
            segments=segments,
            history_of=history_of,
            rows_for=lambda follower: _stored_rows(rows, side, follower.config["dtype"]),
        )
    estimate_fit.after_log(store, logged, now)
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


def pair_losses(side: Side, ids: list[str], name: str | None = None) -> Callable[[Model, Pairs], list[JoinedLoss]]:
    """The store's `on_join` for a request logging `ids` on `side` for model `name`: each
    configured loss over the pairs it completes, a refusal naming the id's index in `ids` (and
    the model, where the pairs are a follower's: labels_from)."""
    return functools.partial(_pair_losses, side=side, ids=ids, logged_for=name)


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
    # Each pair's expected moments (estimates.moments) for an estimated loss, else None.
    expected: np.ndarray[Any, Any] | None = None


def history_of(results: list[JoinedLoss]) -> list[PairLosses]:
    """What each joined pair keeps of its losses (the store's history): per configured loss, in
    order, its share of the loss's sum and denominator and its number of values."""
    kept = []
    for name, reduced, variant, expected in results:
        if reduced.sample_sums is None or reduced.sample_denominators is None:
            raise ValueError(f"{name}: the engine gave no shares")
        pairs = len(reduced.sample_sums)
        counts = np.full(pairs, reduced.count // pairs if pairs else 0, dtype=np.int64)
        kept.append(
            PairLosses(
                variant, name, reduced.aggregate, reduced.sample_sums, reduced.sample_denominators, counts, expected
            )
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
    good, and recorded exactly once); a labels log's followers' (labels_from) too, in `followers`."""
    followers = logged.followers
    if followers:  # the holder's usage once the last follower's rows are in: the write's
        logged = replace(logged, usage=followers[-1].usage)
    answer = _recorded(monitor, name, side, logged, principal)
    if followers:
        shown_fields = ("accepted", "duplicates", "joined", "pending_predictions", "pending_labels")
        answer["followers"] = []
        for follower in followers:
            theirs = _recorded(monitor, follower.model.name, side, replace(follower, usage=None), principal)
            answer["followers"].append({"model": follower.model.name, **{f: theirs[f] for f in shown_fields}})
    return answer


def _recorded(
    monitor: Recorder, name: str, side: Side, logged: Logged[list[JoinedLoss]], principal: Principal | None
) -> dict[str, Any]:
    model, results = logged.model, logged.joined_result or []
    for loss, reduced, *_ in results:
        monitor.observe_batch(name, loss, reduced.per_sample, reduced.mean)
    if results:
        per_sample = [(loss, reduced.per_sample) for loss, reduced, *_ in results]
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


def _pair_losses(
    model: Model, pairs: Pairs, *, side: Side, ids: list[str], logged_for: str | None = None
) -> list[JoinedLoss]:
    """Each configured loss over the completed pairs, by the engine, one call per loss; run by the
    store inside its transaction, so a pair the engine refuses leaves nothing stored."""
    config = model.config
    given = [w for w in pairs.weights if w is not None]
    weights = None if not given else np.array([1.0 if w is None else w for w in pairs.weights])
    expected = pair_moments(model, pairs.predictions, weights)
    results = []
    for at, call in enumerate(config["losses"]):
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
            whose = "" if logged_for in (None, model.name) else f" of model {model.name} (labels_from)"
            raise _join_error(exc, call["loss"] + whose, pairs, side, ids) from None
        variant = loss_variant(call["loss"], call["options"], config["convention"], config["dtype"])
        name = loss_name(call["loss"], config["convention"], call["options"])
        results.append(JoinedLoss(name, reduced, variant, expected.get(at)))
    return results


def _join_error(exc: LossInputError, loss: str, pairs: Pairs, side: Side, ids: list[str]) -> InvalidInputError:
    other = "labels" if side == "predictions" else "predictions"
    where = f"{exc.field}{list(exc.index[1:]) if len(exc.index) > 1 else ''}"
    if not exc.index:
        message = f"the {len(pairs.ids)} pairs this request completes: {where}: {exc.reason} ({loss}); nothing stored"
        return InvalidInputError("ids", message, detail=message)
    row_id = pairs.ids[exc.index[0]]
    message = f"id {shown(row_id)} does not fit its stored {other}: {where}: {exc.reason} ({loss}); nothing stored"
    return InvalidInputError("ids", message, [ids.index(row_id)])  # searched once, when refused
