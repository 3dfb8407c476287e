"""Champion and challenger: two models' losses over the ids both joined, paired id by id, with
an anytime-valid confidence sequence for the mean difference (service.values.comparison), over
the whole window or per value of one segment key (docs/comparisons.md).

A loss is compared when both models configure it identically (the same variant: loss, options,
convention and dtype) and its mean is a mean over pairs (aggregate "mean"): each pair keeps its
share of the loss's sum and denominator, so each model's mean over the common ids is exactly what
/v1/loss gives for them, and the pairs' differences are what the sequence is about.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.engine import LIBRARIES, UnknownLossError, resolve
from service.store import Model, Store, StoreFailureError
from service.store.comparisons import CommonPairs
from service.store.history import shares_of
from service.usecases.configured import Comparable, comparable_losses, loss_aggregate, loss_name_of
from service.usecases.errors import InvalidInputError, NotFoundError
from service.usecases.history import check_by
from service.usecases.models import unavailable, unknown_model
from service.usecases.windows import DEFAULT_WINDOW_SECONDS, Window, parse_time, query_problem, window
from service.values.compared import Compared
from service.values.comparison import METHOD, VERDICTS, Difference, Moments, bounds, paired_difference, verdicts

DEFAULT_ALPHA = 0.05
# Common ids one read transaction holds.
BATCH_ROWS = 10_000


def chosen_loss(challenger: Model, champion: Model, loss: str | None) -> Comparable:
    """The loss `loss` names (its index among the challenger's losses, or its name; default the
    first comparable one), which both must configure identically (else a 422 saying why)."""
    comparable = comparable_losses(challenger, champion)
    names = [loss_name_of(challenger, at) for at in range(len(challenger.config["losses"]))]
    pair = f"models {challenger.name} and {champion.name}"
    if loss is None:
        if not comparable:
            raise query_problem(
                "loss", f"{pair} configure no loss identically (the same loss, options, convention and dtype)"
            )
        return comparable[0]
    at = int(loss) if loss.isdigit() else _named(challenger, names, loss)
    if at is None or at >= len(names):
        shown = ", ".join(f"{i}: {name}" for i, name in enumerate(names))
        raise query_problem("loss", f"names none of model {challenger.name}'s losses ({shown}), got {loss[:64]!r}")
    for candidate in comparable:
        if candidate.challenger == at:
            return candidate
    if loss_aggregate(challenger, at) != "mean":
        reason = f"{names[at]}'s mean is not a mean over pairs ({loss_aggregate(challenger, at)}): no paired difference"
        raise query_problem("loss", reason)
    raise query_problem(
        "loss",
        f"model {champion.name} does not configure {names[at]} identically (the same options, convention "
        f"{challenger.config['convention']} and dtype {challenger.config['dtype']}); comparable: "
        + (", ".join(c.name for c in comparable) or "none"),
    )


def _named(model: Model, names: list[str], loss: str) -> int | None:
    """The first configured loss of that name, or of the name an alias stands for (mse:
    mean_squared_error, under the catalogue's conventions)."""
    if loss not in names and model.config["convention"] not in LIBRARIES:
        try:
            loss = resolve(loss).name
        except UnknownLossError:
            return None
    return names.index(loss) if loss in names else None


def _alpha(text: str | None) -> float:
    if text is None:
        return DEFAULT_ALPHA
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not 0 < alpha < 1:
        raise query_problem("alpha", f"expected a number strictly between 0 and 1, got {text[:64]!r}")
    return alpha


def _span(start: str | None, end: str | None, now: float) -> tuple[float, float]:
    last = now if end is None else parse_time(end, "end")
    first = last - DEFAULT_WINDOW_SECONDS if start is None else parse_time(start, "start")
    if last <= first:
        raise query_problem("end", f"must be after start ({first:g}), got {last:g}")
    return first, last


@dataclass
class _Paired:
    """The common ids' shares of the compared loss, in the challenger's (time, id) order."""

    made: list[NDArray[np.float64]]
    segments: list[str | None]
    challenger: list[NDArray[np.float64]]  # per batch: (3, n) sums, denominators
    champion: list[NDArray[np.float64]]

    def add(self, batch: CommonPairs, variant: int) -> None:
        mine = _shares(batch.challenger, batch.challenger_rows, variant, len(batch))
        theirs = _shares(batch.champion, batch.champion_rows, variant, len(batch))
        both = ~np.isnan(mine[0]) & ~np.isnan(theirs[0])  # a pair joined before the loss was configured lacks it
        self.made.append(batch.made[both])
        self.segments.extend(value for value, kept in zip(batch.segments, both.tolist(), strict=True) if kept)
        self.challenger.append(mine[:, both])
        self.champion.append(theirs[:, both])


def _shares(entries: NDArray[Any], rows: NDArray[np.intp], variant: int, count: int) -> NDArray[np.float64]:
    """Each row's sum and denominator of the loss `variant` (NaN where the row keeps none)."""
    sums, denominators, _, found = shares_of(entries, rows, variant, count)
    return np.where(found, np.array([sums, denominators]), np.nan)


def compare(
    store: Store,
    challenger: str,
    champion: str,
    *,
    start: str | None = None,
    end: str | None = None,
    loss: str | None = None,
    by: str | None = None,
    alpha: str | None = None,
    step: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """GET /v1/models/{challenger}/compare/{champion}: the answer's JSON fields. With `step`, also
    the sequence as it stood at the end of each step from `start`: what a dashboard reading it
    then saw."""
    first, last = _span(start, end, time.time() if now is None else now)
    level = _alpha(alpha)
    steps = None if step is None else window(str(first), str(last), step, last)
    try:
        mine, theirs = store.model(challenger), store.model(champion)
        if mine is None:
            raise unknown_model(challenger)
        if theirs is None:
            raise unknown_model(champion)
        if challenger == champion:
            raise query_problem("champion", f"compare model {challenger} with another model, not with itself")
        check_by(mine, by)
        compared = chosen_loss(mine, theirs, loss)
        paired = _Paired([], [], [], [])
        for batch in store.common_batches(challenger, champion, first, last, key=by, batch_rows=BATCH_ROWS):
            paired.add(batch, compared.variant)
    except StoreFailureError as exc:
        raise unavailable(exc) from None
    mine_shares, their_shares = _joined(paired.challenger), _joined(paired.champion)
    answer: dict[str, Any] = {
        "loss": compared.name,
        "start": first,
        "end": last,
        **_compared(challenger, champion, mine_shares, their_shares, level),
        "alpha": level,
        "method": METHOD,
    }
    if steps is not None:
        answer["step"] = steps.step
        answer["sequence"] = _sequence(
            np.concatenate(paired.made) if paired.made else np.zeros(0), mine_shares, their_shares, steps, level
        )
    if by is not None:
        answer["by"] = by
        values = np.array(["" if v is None else "\x00" + v for v in paired.segments], dtype=object)
        answer["segments"] = [
            {"segment": None if key == "" else key[1:]}
            | _compared(challenger, champion, mine_shares[:, values == key], their_shares[:, values == key], level)
            for key in sorted(set(values.tolist()))
        ]
    return answer


def _sequence(
    made: NDArray[np.float64], mine: NDArray[np.float64], theirs: NDArray[np.float64], steps: Window, alpha: float
) -> list[dict[str, Any]]:
    """The difference and its sequence over the pairs made before the end of each step (steps
    before the first pair are left out): the same bounds `paired_difference` gives, from running
    sums (`comparison.running_moments` over one entry per step)."""
    bucket = np.minimum(((made - steps.start) // steps.step).astype(np.int64), steps.count - 1)
    x, den = mine[0] - theirs[0], mine[1]

    def per_step(values: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.bincount(bucket, weights=values, minlength=steps.count).astype(np.float64)

    counted = (den != 0).astype(np.float64)
    x = np.where(den != 0, x, 0.0)
    sums = [per_step(v) for v in (counted, den, x, x * x, x * den, den * den)]
    running = Moments(*(np.cumsum(s) for s in sums))
    mean, low, high = bounds(running, alpha)
    shown = np.flatnonzero(running.count > 0)
    return [
        {
            "end": min(steps.start + (k + 1) * steps.step, steps.end),
            "n": int(running.count[k]),
            "mean": _number(mean[k]),
            "low": _number(low[k]),
            "high": _number(high[k]),
            "verdict": VERDICTS[int(verdicts(low[k : k + 1], high[k : k + 1])[0])],
        }
        for k in shown.tolist()
    ]


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _joined(batches: list[NDArray[np.float64]]) -> NDArray[np.float64]:
    return np.concatenate(batches, axis=1) if batches else np.zeros((2, 0))


def _compared(
    challenger: str, champion: str, mine: NDArray[np.float64], theirs: NDArray[np.float64], alpha: float
) -> dict[str, Any]:
    """The comparison of the pairs whose shares are given (rows: sums, denominators): each
    model's mean over them (its own sums over its own denominators, as /v1/loss divides), and the
    paired difference with its confidence sequence."""
    found: Difference = paired_difference(mine[0], theirs[0], mine[1], alpha)
    return {
        "n": found.n,
        "challenger": {"model": challenger, "mean": _mean(mine)},
        "champion": {"model": champion, "mean": _mean(theirs)},
        "difference": {"mean": found.mean, "low": found.low, "high": found.high},
        "verdict": found.verdict,
    }


def _mean(shares: NDArray[np.float64]) -> float | None:
    denominator = float(shares[1].sum())
    if denominator == 0:
        return None
    mean = float(shares[0].sum()) / denominator
    return mean if math.isfinite(mean) else None


# -- the comparisons /metrics reports -------------------------------------------------------------

VERDICT_VALUES = {verdict: value for value, verdict in VERDICTS.items()}


def configured_pairs(store: Store) -> list[tuple[str, str, Comparable]]:
    """Every (challenger, champion, loss) to compare: each model's `compare_to` champions that
    are still configured, and each loss both configure identically."""
    try:
        models = {model.name: model for model in store.models()}
    except StoreFailureError as exc:
        raise unavailable(exc) from None
    pairs: list[tuple[str, str, Comparable]] = []
    for model in models.values():
        for champion in model.config.get("compare_to") or []:
            theirs = models.get(champion)
            if theirs is not None and champion != model.name:
                pairs.extend((model.name, champion, loss) for loss in comparable_losses(model, theirs))
    return pairs


def compared(store: Store, challenger: str, champion: str, loss: Comparable, now: float) -> Compared | None:
    """`compare` over the default window (the 24 h before `now`), as /metrics shows it; None where
    either model was deleted or reconfigured since the pair was found."""
    try:
        answer = compare(store, challenger, champion, loss=str(loss.challenger), now=now)
    except (NotFoundError, InvalidInputError):
        return None
    if answer["loss"] != loss.name:
        return None  # the challenger's losses changed in between: the next run finds the pair again
    difference = answer["difference"]
    return Compared(
        model=challenger,
        champion=champion,
        loss=answer["loss"],
        n=answer["n"],
        mean=difference["mean"],
        low=difference["low"],
        high=difference["high"],
        verdict=VERDICT_VALUES[answer["verdict"]],
    )
