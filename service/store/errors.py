"""The store's own exceptions: what went wrong in terms of models and rows, never SQL or HTTP."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the store's errors."""


class UnknownModelError(StoreError):
    def __init__(self, model: str) -> None:
        super().__init__(f"no model named {model!r} is configured")
        self.model = model


class RowIdError(StoreError):
    """An id the store cannot keep exactly as given (or one given twice): nothing was stored."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"ids[{index}]: {reason}; nothing was stored")
        self.index, self.reason = index, reason


class RowShapeError(StoreError):
    """Rows of a shape other than the one the model's first rows of that side fixed (`follower`:
    the model that takes its labels from the one logged to, whose rows they are)."""

    def __init__(self, side: str, expected: tuple[int, ...], got: tuple[int, ...], follower: str | None = None) -> None:
        whose = "the model's" if follower is None else f"model {follower!r}'s (it takes these labels: labels_from)"
        super().__init__(
            f"each row of {side} must have shape {list(expected)}, as {whose} first {side} had; got {list(got)}"
        )
        self.side, self.expected, self.got, self.follower = side, expected, got, follower


class TooManyPendingError(StoreError):
    """Storing the rows would leave more unjoined rows for the model than allowed."""

    def __init__(self, model: str, pending: int, limit: int) -> None:
        super().__init__(
            f"model {model!r} would hold {pending:,} rows waiting for their other half; the limit is {limit:,} "
            "(LOSS_SERVICE_MAX_PENDING); nothing of this request was stored"
        )
        self.model, self.pending, self.limit = model, pending, limit


class SegmentKeysRemovedError(StoreError):
    """A re-configuration would drop segment keys the model's history is kept by."""

    def __init__(self, model: str, removed: list[str]) -> None:
        super().__init__(f"model {model!r} keeps history by segment keys {removed}, which cannot be removed")
        self.model, self.removed = model, removed


class LabelSourceError(StoreError):
    """A configuration whose `labels_from` the store cannot follow: `reason` says why."""

    def __init__(self, model: str, source: str, reason: str) -> None:
        super().__init__(f"model {model!r} cannot take its labels from {source!r}: {reason}")
        self.model, self.source, self.reason = model, source, reason


class FollowedModelError(StoreError):
    """A model others take their labels from cannot be removed while they do."""

    def __init__(self, model: str, followers: list[str]) -> None:
        super().__init__(f"models {followers} take their labels from model {model!r} (labels_from)")
        self.model, self.followers = model, followers


class TooManyPendingEventsError(StoreError):
    """Keeping one more event half would leave the model with more waiting halves, or more bytes
    of them, than allowed (`setting` names the bound)."""

    def __init__(self, model: str, what: str, value: int, limit: int, setting: str) -> None:
        super().__init__(
            f"model {model!r} would hold {value:,} {what} of inference events waiting for their other half; the "
            f"limit is {limit:,} ({setting}); nothing of this event was stored"
        )
        self.model, self.value, self.limit, self.setting = model, value, limit, setting


class QuotaExceededError(StoreError):
    """The write would take its quota holder's usage past one of its limits; nothing was stored.

    `quota`: `max_models` or `max_stored_bytes`; `used`: the holder's usage before the write;
    `adding`: what the write would add; `limit`: the holder's limit."""

    def __init__(self, quota: str, holder: str, used: int, adding: int, limit: int) -> None:
        what = "models" if quota == "max_models" else "stored bytes"
        super().__init__(
            f"quota {quota} exceeded: {holder} holds {used:,} {what} and this request would add {adding:,}, "
            f"past its limit of {limit:,}; nothing of this request was stored"
        )
        self.quota, self.holder, self.used, self.adding, self.limit = quota, holder, used, adding, limit


class SchemaVersionError(StoreError):
    """The database was written by a newer loss-service than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the store's schema version is {found}, newer than the {known} this loss-service knows; "
            "upgrade loss-service (downgrading a store is not supported)"
        )
        self.found, self.known = found, known


class StoreFailureError(StoreError):
    """The database could not do its part; nothing of the operation was stored. `retry_after`:
    seconds after which a retry may succeed (the HTTP layer's `Retry-After`)."""

    retry_after = 5

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreUnavailableError(StoreFailureError):
    """The database cannot be reached or did not answer within LOSS_SERVICE_STORE_TIMEOUT."""

    retry_after = 5


class StoreFullError(StoreFailureError):
    """The database's disk is full: rows cannot be added until space is freed."""

    retry_after = 30
