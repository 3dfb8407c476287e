"""What the use cases record as they work (losses, logged rows, expired rows, a key's usage),
declared here so that they import nothing of the server: its `Monitor` is the recorder it hands
them, and turns each call into metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from service.values.compared import Compared
from service.values.watched import Watched


class Recorder(Protocol):
    """The calls the use cases make on the recorder they are given, after the work they record."""

    def observe_batch(self, model: str | None, loss: str, per_sample: np.ndarray[Any, Any], mean: float) -> None:
        """One loss computed over a batch: its per-sample values and mean."""

    def observe_log(
        self,
        model: str,
        kind: str,
        accepted: int,
        duplicates: int,
        delays: np.ndarray[Any, Any],
        pending: tuple[int, int],
    ) -> None:
        """One request's rows kept for the delayed-labels store, after its transaction committed."""

    def observe_segments(
        self,
        model: str,
        keys: Sequence[str],
        segments: Sequence[Mapping[str, str]],
        losses: Sequence[tuple[str, np.ndarray[Any, Any]]],
    ) -> None:
        """Joined pairs' per-sample losses by the value of each declared segment key (`segments`:
        each pair's non-null values), after the join committed."""

    def observe_expired(self, model: str, expired: tuple[int, int], pending: tuple[int, int]) -> None:
        """Rows the retention sweep removed from a model, and the rows it still holds unpaired."""

    def set_quota_usage(self, key: str, models: int, stored_bytes: int, as_of: float) -> None:
        """A key's models and stored bytes, as of a `time.monotonic()` reading."""

    def set_comparisons(self, compared: Sequence[Compared]) -> None:
        """Every configured pair's comparison as one run found them: the pairs not among them are
        no longer compared."""

    def set_estimates(self, watched: Sequence[Watched]) -> None:
        """Every estimated loss of every model configured with `estimate`, as one run found them:
        the losses not among them are no longer estimated."""
