"""One compared pair as /metrics reports it: what the comparison job hands the monitor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Compared:
    """One compared pair's comparison over the default window (GET .../compare/{champion}):
    `model` the challenger, `n` the ids both joined that count, `mean` the paired mean difference
    (challenger minus champion), `low` and `high` its anytime-valid band (None while undefined),
    `verdict` -1 (better), 0 (undecided) or 1 (worse)."""

    model: str
    champion: str
    loss: str
    n: int
    mean: float | None
    low: float | None
    high: float | None
    verdict: int
