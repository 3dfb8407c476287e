"""Champion and challenger, pair by pair: the mean difference of their losses and an anytime-valid
confidence sequence for it.

Over the n pairs both models have joined (those with a nonzero denominator), pair i holds each
model's share of the loss's sum, s_c,i (challenger) and s_p,i (champion), and the pair's share
den_i of the denominator (its weight; 1 for an unweighted loss). Both models share the label,
so the denominator is the same for both. Each model's mean is Σs / Σden, what /v1/loss gives over
those pairs, and the difference is the ratio estimator

    R_n = Σ x_i / Σ den_i,    x_i = s_c,i − s_p,i.

Its confidence sequence is the Gaussian-mixture asymptotic confidence sequence of Waudby-Smith,
Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and asymptotic confidence
sequences" (arXiv:2103.06476, Theorem 2.2; as their R package drconfseq computes it in
`asymptotic_confseq` and `std_conjmix_margin`), applied to the linearised values
z_i = (x_i − R_n den_i) / mean(den):

    R_n ± σ̂_n · sqrt( 2 (n ρ² + 1) / (n² ρ²) · log( sqrt(n ρ² + 1) / α ) ),
    σ̂_n² = Σ z_i² / (n − 1).

With den ≡ 1, z_i = x_i − mean(x) and this is exactly the paper's sequence for the mean of the
paired differences. Read after every batch, it excludes the true difference at any time at all
with probability at most α (asymptotically), so the verdict it gives ("better" when the upper
bound is below 0, "worse" when the lower bound is above 0) is false at most α of the time however
often a dashboard looks. A fixed-sample t-interval read the same way is not: every look is a new
chance of a false verdict.

The mixture parameter ρ sets the time at which the sequence is narrowest. It is tuned for
t* = `TUNED_FOR` pairs with the paper's closed form ρ² = (−2 log α + log(1 − 2 log α)) / t*, an
approximation of the exact minimiser of the width at t* (a Lambert W expression) that holds for
every α in (0, 1). Ten thousand pairs is where a comparison of two models' mean losses starts to
tell differences of a few percent apart (docs/comparisons.md measures it); the sequence is valid
at every n whatever ρ is, and ρ only moves where it is tightest.

`paired_difference` answers one comparison; `running_moments` and `bounds` evaluate the same
sequence at many looks of many simulated runs at once, through the same `bounds`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Verdict = Literal["better", "worse", "undecided"]
Floats = NDArray[np.float64]

TUNED_FOR = 10_000
METHOD = (
    "asymptotic confidence sequence (Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas 2021, "
    f"arXiv:2103.06476, Theorem 2.2), Gaussian mixture tuned for {TUNED_FOR:,} pairs, "
    "on the ratio estimator of the paired differences"
)


@dataclass(frozen=True)
class Difference:
    """One comparison: `challenger` and `champion` are each model's mean loss over the n pairs,
    `mean` the ratio estimator R_n (challenger − champion, summed pair by pair), `low` and `high`
    the confidence sequence at n (None while undefined: fewer than 2 pairs, or a denominator that
    sums to 0). The verdict is "better" when high < 0 (the challenger's loss is lower), "worse"
    when low > 0, else "undecided"."""

    n: int
    challenger: float | None
    champion: float | None
    mean: float | None
    low: float | None
    high: float | None
    verdict: Verdict


@dataclass(frozen=True)
class Moments:
    """The sums the sequence needs, over the pairs seen by each look (arrays of one shape)."""

    count: Floats  # n
    den: Floats  # Σ den
    x: Floats  # Σ x
    x_sq: Floats  # Σ x²
    x_den: Floats  # Σ x·den
    den_sq: Floats  # Σ den²


def rho_squared(alpha: float, tuned_for: float = TUNED_FOR) -> float:
    """ρ² of the mixture whose sequence is (near) narrowest at `tuned_for` pairs."""
    two_log = -2.0 * math.log(alpha)
    return (two_log + math.log1p(two_log)) / tuned_for


def margin(count: Floats, alpha: float) -> Floats:
    """The sequence's half-width for unit variance after `count` pairs (Theorem 2.2)."""
    rho2 = rho_squared(alpha)
    grown = count * rho2 + 1.0
    # log(sqrt(n ρ² + 1) / α), written so that it needs no square root.
    log_term = 0.5 * np.log(grown) - math.log(alpha)
    return np.asarray(np.sqrt(2.0 * grown * log_term / (count * count * rho2)), np.float64)


def bounds(moments: Moments, alpha: float) -> tuple[Floats, Floats, Floats]:
    """R_n and the sequence's low and high at each look; NaN where undefined (n < 2, Σ den = 0)."""
    check_alpha(alpha)
    m = moments
    defined = (m.count >= 2) & (m.den != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(m.den != 0, m.x / m.den, np.nan)
        # Σ (x − R den)², by its expansion, never below 0 through rounding.
        spread = np.maximum(m.x_sq - 2.0 * ratio * m.x_den + ratio * ratio * m.den_sq, 0.0)
        mean_den = m.den / m.count
        variance = spread / (mean_den * mean_den) / (m.count - 1.0)
        half = np.where(defined, np.sqrt(variance) * margin(np.where(defined, m.count, 2.0), alpha), np.nan)
    return ratio, ratio - half, ratio + half


def verdicts(low: Floats, high: Floats) -> NDArray[np.int8]:
    """-1 ("better": high < 0), 1 ("worse": low > 0) or 0 ("undecided", also where undefined)."""
    return np.where(high < 0, -1, np.where(low > 0, 1, 0)).astype(np.int8)


def moments(x: Floats, den: Floats) -> Moments:
    """The sums over all the pairs given."""
    sums = (len(x), np.sum(den), np.sum(x), np.dot(x, x), np.dot(x, den), np.dot(den, den))
    return Moments(*(np.asarray(total, np.float64) for total in sums))


def running_moments(x: Floats, den: Floats, every: int) -> Moments:
    """The sums after every `every` entries along the last axis (of length a multiple of `every`);
    as in `paired_difference`, an entry whose denominator is 0 is no pair and counts nothing."""

    def running(values: Floats) -> Floats:
        batches = values.reshape(*values.shape[:-1], -1, every).sum(axis=-1)
        return np.asarray(np.cumsum(batches, axis=-1), np.float64)

    x = np.where(den != 0, x, 0.0)
    pairs = (den != 0).astype(np.float64)
    return Moments(running(pairs), running(den), running(x), running(x * x), running(x * den), running(den * den))


def paired_difference(challenger_sums: Floats, champion_sums: Floats, denominators: Floats, alpha: float) -> Difference:
    """The comparison over the pairs given (one entry per common id); pairs whose denominator is 0
    count nothing and are left out."""
    check_alpha(alpha)
    if not np.shape(challenger_sums) == np.shape(champion_sums) == np.shape(denominators) == (len(denominators),):
        raise ValueError("the challenger's sums, the champion's and the denominators are arrays of one length")
    kept = denominators != 0
    challenger, champion, den = (
        np.asarray(a, np.float64)[kept] for a in (challenger_sums, champion_sums, denominators)
    )
    x = challenger - champion
    total = float(np.sum(den))
    if len(den) == 0 or total == 0:
        return Difference(len(den), None, None, None, None, None, "undecided")
    means = _number(float(np.sum(challenger)) / total), _number(float(np.sum(champion)) / total)
    pivot = float(np.sum(x)) / total
    if not math.isfinite(pivot):
        return Difference(len(den), *means, None, None, None, "undecided")
    # The sums are taken about the pairs' own mean difference, so that Σ (x − R den)² loses
    # nothing to cancellation; the sequence moves with its centre, so this changes no bound.
    ratio, low, high = (float(pivot + v) for v in bounds(moments(x - pivot * den, den), alpha))
    defined = math.isfinite(low) and math.isfinite(high)
    return Difference(
        n=len(den),
        challenger=means[0],
        champion=means[1],
        mean=_number(ratio),
        low=low if defined else None,
        high=high if defined else None,
        verdict=VERDICTS[int(verdicts(np.array(low), np.array(high)))] if defined else "undecided",
    )


VERDICTS: dict[int, Verdict] = {-1: "better", 0: "undecided", 1: "worse"}


def check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha is a level in (0, 1), got {alpha!r}")


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None
