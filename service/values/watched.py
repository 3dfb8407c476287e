"""One estimated loss of one model as /metrics reports it: what the estimate job hands the monitor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Watched:
    """The estimate of loss `loss` of model `model` (docs/monitoring.md, "Estimated loss").

    Over the last hour's predictions, joined and pending: `predictions` estimated, their expected
    loss `expected` and its 3-sigma band `low`..`high` (None without a prediction). Over the
    cohort (the predictions of the last LOSS_SERVICE_ESTIMATE_COHORT seconds) only its joined
    pairs: `pairs` of them estimated, their realized mean `realized`, and the expected loss and
    band of the same pairs, `joined_expected`, `joined_low`, `joined_high`. `realized` is None
    unless every joined pair of the cohort has an estimate (like for like), and with no pair."""

    model: str
    loss: str
    predictions: int
    expected: float | None
    low: float | None
    high: float | None
    pairs: int
    realized: float | None
    joined_expected: float | None
    joined_low: float | None
    joined_high: float | None

    @property
    def drifting(self) -> bool:
        """Whether the realized mean lies outside the joined pairs' band (not where either is unknown)."""
        if self.realized is None or self.joined_low is None or self.joined_high is None:
            return False
        return self.realized < self.joined_low or self.realized > self.joined_high
