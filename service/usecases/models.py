"""A model's configuration and status, and the quota a key's writes are checked against: the
use cases of PUT/GET /v1/models/{model} and what every stored-model use case shares (the unknown
model, the store failure in the use cases' words). Errors are `UseCaseError`s, never HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from service.config import Settings
from service.engine import (
    LIBRARIES,
    LossInputError,
    libraries,
    resolve,
)
from service.store import (
    LabelSourceError,
    Model,
    Quota,
    QuotaExceededError,
    SegmentKeysRemovedError,
    Store,
    StoreFailureError,
    StoreFullError,
)
from service.usecases.configured import Proposed, comparable_losses
from service.usecases.errors import ConflictError, InvalidInputError, NotFoundError, QuotaError, StoreUnavailableError
from service.usecases.estimates import checked_estimate
from service.usecases.recorder import Recorder
from service.values.text import shown


class Principal(Protocol):
    """What a use case reads of the request's API key (`service.server.api.access.Principal`)."""

    name: str
    models: tuple[str, ...] | None
    max_models: int | None
    max_stored_bytes: int | None
    max_row_values: int | None


class Keys(Protocol):
    """The keys in force (`service.server.api.access.KeyRing`), for every writing key's usage."""

    @property
    def enabled(self) -> bool: ...

    def principals(self) -> list[Any]: ...


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


def configure(
    store: Store,
    name: str,
    request: Any,
    now: float,
    quota: Quota | None = None,
    authorize: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Configure a model from a validated `ModelConfigRequest`: the losses are checked as
    /v1/evaluate checks them, then stored; creating a model is checked against `quota`'s
    `max_models`. `authorize(model)` refuses a model the caller's key may not use: the source
    of `labels_from` and each model of `compare_to` are read on the caller's behalf."""
    config: dict[str, Any] = {
        "losses": _checked_losses(request),
        "convention": request.convention,
        "dtype": request.dtype,
        "segments": list(request.segments),
        "keep_pairs": request.keep_pairs,
    }
    if getattr(request, "events", None) is not None:
        config["events"] = _checked_events(request.events.model_dump(), config["segments"])
    if authorize is not None:
        for other in ([request.labels_from] if request.labels_from else []) + list(request.compare_to):
            authorize(other)
    if request.labels_from:
        config["labels_from"] = request.labels_from
    estimate = checked_estimate(getattr(request, "estimate", None), config)
    if estimate is not None:
        config["estimate"] = estimate
    if request.compare_to:
        config["compare_to"] = list(request.compare_to)
        _check_champions(store, name, config, request.compare_to)
    return _stored(store, name, config, request.retention_seconds, now, quota)


def _checked_losses(request: Any) -> list[dict[str, Any]]:
    """The request's losses as stored, each bound as /v1/evaluate binds it: a model never keeps a
    loss its evaluations would refuse."""
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
    return losses


def _checked_events(events: dict[str, Any], segments: list[str]) -> dict[str, Any]:
    """The `events` configuration, each of its segment keys one of the model's `segments`: an
    event's segments are stored under the model's declared keys."""
    undeclared = [key for key in events["segments"] if key not in segments]
    if undeclared:
        declared = ", ".join(segments) or "none"
        raise InvalidInputError(
            f"events.segments.{undeclared[0]}",
            f"is not a segment key of this model (its `segments`: {declared}); declare it in `segments`",
        )
    return events


def _stored(
    store: Store, name: str, config: dict[str, Any], retention_seconds: float, now: float, quota: Quota | None
) -> dict[str, Any]:
    """The checked configuration stored, as GET answers it; the store's refusals in the use
    cases' words, so the HTTP layer renders them as every other use case's."""
    try:
        return model_config(store.configure_model(name, config, retention_seconds, now, quota))
    except LabelSourceError as exc:
        raise InvalidInputError("labels_from", exc.reason) from None
    except QuotaExceededError as exc:
        raise quota_error(exc, "LOSS_SERVICE_QUOTA_MODELS", name) from None
    except SegmentKeysRemovedError as exc:
        raise ConflictError(
            f"model {name} keeps its history by segment keys {exc.removed}: a re-PUT may add segment keys, "
            "never remove one (DELETE the model to start over)"
        ) from None
    except StoreFailureError as exc:
        raise unavailable(exc) from None


def _check_champions(store: Store, name: str, config: dict[str, Any], champions: list[str]) -> None:
    """Each model of `compare_to` is another configured model with a loss configured as one of
    this configuration's (comparisons.py reads which)."""
    challenger = Proposed(config)
    for index, champion in enumerate(champions):
        found = store.model(champion) if champion != name else None
        if found is None:
            reason = "is this model itself" if champion == name else f"names no configured model ({shown(champion)})"
            raise InvalidInputError("compare_to", reason, [index])
        if not comparable_losses(challenger, found):
            reason = f"model {champion} configures none of these losses identically (loss, options, convention, dtype)"
            raise InvalidInputError("compare_to", reason, [index])


def model_config(model: Model) -> dict[str, Any]:
    # Models configured before segments and keep_pairs existed have neither: their defaults.
    config = {**model.config, "segments": model.config.get("segments", [])}
    config["keep_pairs"] = model.config.get("keep_pairs", False)
    config["labels_from"] = model.config.get("labels_from")
    config["compare_to"] = model.config.get("compare_to", [])
    config["estimate"] = model.config.get("estimate")
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
        "estimate_fit": model.estimate_fit,
        "quota": {
            "key": None if principal is None else principal.name,
            "models": {"used": usage.models, "limit": quota.max_models},
            "stored_bytes": {"used": usage.stored_bytes, "limit": quota.max_stored_bytes},
            "row_values": {"limit": row_values_limit(principal, settings)},
        },
    }
