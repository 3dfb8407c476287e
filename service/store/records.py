"""What the store answers with: a model's configuration and counts (`Model`), a key's quota and
usage, the pairs a write completed, what a write logged, and what a sweep removed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from service.store.events import EventCounts
from service.store.history import PairLosses

Side = Literal["predictions", "labels"]
T = TypeVar("T")


@dataclass(frozen=True)
class Model:
    """A configured model: its configuration, retention and counters.

    Of the configuration the store reads three fields: `losses` (how many `HISTORY_LOSS` entries
    each joined pair keeps), `segments` (the keys its rollups are kept by) and `keep_pairs`
    (joined rows keep their payloads)."""

    name: str
    config: dict[str, Any]
    retention_seconds: float
    created_at: float
    updated_at: float
    prediction_shape: tuple[int, ...] | None
    label_shape: tuple[int, ...] | None
    pending_predictions: int
    pending_labels: int
    joined: int
    expired_predictions: int
    expired_labels: int
    # What its rows count towards quotas: per row, ROW_BYTES + its id's and payload's bytes.
    stored_bytes: int = 0
    # The calibration fit its estimates use (usecases/estimates.py), as that module wrote it.
    estimate_fit: dict[str, Any] | None = None


@dataclass(frozen=True)
class Quota:
    """Limits a write is checked against, inside its transaction, and whose usage they bound.

    `holder` names it (in errors, and for the lock that serialises its writes); the models whose
    usage counts towards it are those whose names match one of `patterns` (glob patterns, as
    `fnmatch.fnmatchcase` reads them: an API key's), or every model if `patterns` is None."""

    holder: str
    patterns: tuple[str, ...] | None
    max_models: int
    max_stored_bytes: int


@dataclass(frozen=True)
class Usage:
    """A quota holder's usage: the models that count towards it and their stored bytes."""

    models: int
    stored_bytes: int


@dataclass(frozen=True)
class Pairs:
    """The pairs one request completed, in the order of its ids."""

    ids: list[str]
    predictions: np.ndarray[Any, Any]
    labels: np.ndarray[Any, Any]
    # One per pair; None where the label was logged without a weight.
    weights: list[float | None]
    # Label arrival minus prediction time, in seconds.
    delays: np.ndarray[Any, np.dtype[np.float64]]
    # Each prediction's time, its segment values (non-null ones), and whether its row is counted
    # in the model's rollups (rows logged before history was kept are not).
    times: np.ndarray[Any, np.dtype[np.float64]] = field(default_factory=lambda: np.zeros(0))
    segments: list[dict[str, str]] = field(default_factory=list)
    rolled_up: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class Logged(Generic[T]):
    """What logging one side's rows did."""

    accepted: int
    duplicate_ids: list[str]
    pairs: Pairs
    # What the caller's `on_join` returned for the pairs (None when none were completed).
    joined_result: T | None
    model: Model
    # The quota holder's usage after this write (None without a quota).
    usage: Usage | None = None
    # A labels log: what the same labels did for each model that takes its labels from this one.
    followers: tuple[Logged[T], ...] = ()


@dataclass(frozen=True)
class EventRows(Generic[T]):
    """What a completed inference event logs: its prediction rows under their ids, their
    timestamps, what to run on the pairs they complete and what those pairs keep of it (as
    `Store.log`'s `on_join` and `history_of`), and the rows' segments."""

    ids: Sequence[str]
    rows: np.ndarray[Any, Any]
    timestamps: Sequence[float] | None
    on_join: Callable[[Model, Pairs], T]
    # Segment key -> one value per row, for the predictions' segments (POST .../predictions's).
    segments: dict[str, list[str | None]] = field(default_factory=dict)
    history_of: Callable[[T], Sequence[PairLosses]] | None = None


@dataclass(frozen=True)
class _Partners:
    """The other side's waiting rows that one log joins, in the order of the request: each one's
    position in the request, its row (PostgreSQL: its ctid, read under the model's lock), its time
    (a label's arrival, a prediction's own time), dtype code, payload, weight (labels), segments
    (predictions: as stored) and whether it is counted in the rollups (predictions)."""

    at: Sequence[int]
    rows: Sequence[str | None]
    times: Sequence[float]
    codes: Sequence[int]
    payloads: Sequence[bytes]
    weights: Sequence[float | None]
    segments: Sequence[str | None]
    rolled_up: Sequence[int | None]


@dataclass(frozen=True)
class EventLogged(Generic[T]):
    """What one half of an inference event did: `pending` (it waits for the other half),
    `duplicate` (that half waits already, or the event completed before) or `completed` (both
    halves in: `logged` is the predictions' log)."""

    outcome: Literal["pending", "duplicate", "completed"]
    model: Model
    events: EventCounts
    logged: Logged[T] | None = None


@dataclass(frozen=True)
class Swept:
    """Rows a retention sweep (or one batch of it) removed from a model; `expired_*` counts the
    unjoined ones, `removed` all of them. `done`: no row of the model is past its retention."""

    model: str
    expired_predictions: int
    expired_labels: int
    pending_predictions: int
    pending_labels: int
    removed: int = 0
    done: bool = True

    def then(self, later: Swept) -> Swept:
        """This batch followed by a later one of the same sweep."""
        return replace(
            later,
            expired_predictions=self.expired_predictions + later.expired_predictions,
            expired_labels=self.expired_labels + later.expired_labels,
            removed=self.removed + later.removed,
        )
