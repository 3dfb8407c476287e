"""Simulated champion/challenger comparisons, read after every batch, for the tests of
service/values/comparison.py and bench/comparisons.py.

The losses are per-pair binary cross-entropies of simulated classifiers: a true logit
η ~ N(0, 2²), a label y ~ Bernoulli(sigmoid(η)), and each model's logit η + u + σ e, where the
error u ~ N(0, 1) is shared by both models (two models of one task err alike) and e ~ N(0, 1) is
each model's own. Champion and challenger with the same σ have the same expected loss (an A/A
comparison); a challenger with a smaller σ has a lower one. Weighted runs give each pair a
weight from {0, 0.5, 1, 2} (0: a pair that counts nothing) and each model the share w·loss.

Every reading goes through the module's own `running_moments`, `bounds` and `verdicts`, so the
simulation tests what the service computes. The runs are simulated in chunks so that memory
stays small whatever their number.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from service.values.comparison import bounds, margin, running_moments, verdicts

Floats = NDArray[np.float64]
EVERY = 100  # pairs in a batch: the comparison is read after each
CHAMPION_OWN = 0.5
# The challenger's own error for a mean loss 1, 2 and 3 % below the champion's (measured over 4
# million pairs: 0.990, 0.980 and 0.970 of it; each simulation reports its own ratio).
OWN_FOR_LOWER = {0.01: 0.42, 0.02: 0.30, 0.03: 0.12}
TWO_PERCENT_OWN = OWN_FOR_LOWER[0.02]
WEIGHTS = np.array([0.0, 0.5, 1.0, 2.0])
_CHUNK = 50


@dataclass(frozen=True)
class Losses:
    """(runs, pairs) arrays: each model's share of the loss's sum and each pair's denominator."""

    challenger: Floats
    champion: Floats
    den: Floats


def binary_cross_entropy(logit: Floats, label: Floats) -> Floats:
    """−y log σ(z) − (1 − y) log(1 − σ(z)), as log(1 + e^z) − y z."""
    return np.asarray(np.logaddexp(0.0, logit) - label * logit, np.float64)


def simulate(
    rng: np.random.Generator, runs: int, pairs: int, challenger_own: float, *, weighted: bool = False
) -> Losses:
    eta = rng.normal(0.0, 2.0, (runs, pairs))
    label = (rng.random((runs, pairs)) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)
    shared = eta + rng.normal(size=(runs, pairs))
    champion = binary_cross_entropy(shared + CHAMPION_OWN * rng.normal(size=(runs, pairs)), label)
    challenger = binary_cross_entropy(shared + challenger_own * rng.normal(size=(runs, pairs)), label)
    den = rng.choice(WEIGHTS, (runs, pairs)) if weighted else np.ones((runs, pairs))
    return Losses(challenger * den, champion * den, den)


def chunks(seed: int, runs: int, pairs: int, challenger_own: float, *, weighted: bool = False) -> Iterator[Losses]:
    rng = np.random.default_rng(seed)
    for start in range(0, runs, _CHUNK):
        yield simulate(rng, min(_CHUNK, runs - start), pairs, challenger_own, weighted=weighted)


def readings(losses: Losses, alpha: float) -> tuple[Floats, Floats, Floats, Floats]:
    """The count, low and high of the confidence sequence after every batch, and the half-width
    a fixed-sample t-interval (same estimate, same variance) would have at each, per run."""
    moments = running_moments(losses.challenger - losses.champion, losses.den, EVERY)
    centre, low, high = bounds(moments, alpha)
    sigma = (high - centre) / margin(moments.count, alpha)  # σ̂_n, as bounds estimates it
    count = moments.count
    t_half = stats.t.ppf(1 - alpha / 2, np.maximum(count - 1, 1)) * sigma / np.sqrt(count)
    return count, low, high, np.asarray(t_half, np.float64)


@dataclass(frozen=True)
class FalseVerdicts:
    runs: int
    sequence: int  # runs in which the confidence sequence ever gives a verdict
    t_interval: int  # runs in which the peeking t-interval ever does


def false_verdicts(
    seed: int, runs: int, pairs: int, alpha: float, *, weighted: bool = False, same: bool = False
) -> FalseVerdicts:
    """A/A runs: equal expected losses (or, `same`, the champion's own losses under both names)."""
    sequence = t_interval = 0
    for losses in chunks(seed, runs, pairs, CHAMPION_OWN, weighted=weighted):
        if same:
            losses = Losses(losses.champion, losses.champion, losses.den)
        _, low, high, t_half = readings(losses, alpha)
        sequence += int(np.any(verdicts(low, high) != 0, axis=1).sum())
        centre = (low + high) / 2
        t_interval += int(np.any(verdicts(centre - t_half, centre + t_half) != 0, axis=1).sum())
    return FalseVerdicts(runs, sequence, t_interval)


@dataclass(frozen=True)
class Power:
    pairs_to_better: Floats  # per run; inf where no verdict within the horizon
    worse: int  # runs that ever read "worse"
    loss_ratio: float  # the challenger's mean loss over the champion's, over all the pairs


def power(seed: int, runs: int, pairs: int, alpha: float, challenger_own: float) -> Power:
    found: list[Floats] = []
    worse, totals = 0, np.zeros(2)
    for losses in chunks(seed, runs, pairs, challenger_own):
        count, low, high, _ = readings(losses, alpha)
        code = verdicts(low, high)
        better = code == -1
        first = np.where(better.any(axis=1), count[np.arange(len(count)), better.argmax(axis=1)], np.inf)
        found.append(first)
        worse += int(np.any(code == 1, axis=1).sum())
        totals += (losses.challenger.sum(), losses.champion.sum())
    return Power(np.concatenate(found), worse, float(totals[0] / totals[1]))


def clopper_pearson(successes: int, trials: int) -> tuple[float, float]:
    """The exact 95 % interval of a binomial proportion."""
    interval = stats.binomtest(successes, trials).proportion_ci(0.95, method="exact")
    return float(interval.low), float(interval.high)
