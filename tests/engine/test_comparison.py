"""service/values/comparison.py: the means against a naive float64 loop, the confidence sequence
against the paper's formula written out per look, and its promise in simulation: read after every
batch of 100 pairs, an A/A comparison shows a verdict in at most α of the runs (a peeking
t-interval does not), and a challenger with a 2 % lower loss is found better."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize

from service.values.comparison import (
    METHOD,
    TUNED_FOR,
    bounds,
    margin,
    paired_difference,
    rho_squared,
    running_moments,
)
from tests.comparing import TWO_PERCENT_OWN, clopper_pearson, false_verdicts, power

ALPHA = 0.05


def naive_means(challenger: list[float], champion: list[float], den: list[float]) -> tuple[int, float, float, float]:
    n, c, p, d, total = 0, 0.0, 0.0, 0.0, 0.0
    for s_c, s_p, w in zip(challenger, champion, den, strict=True):
        if w != 0:
            n += 1
            c += s_c
            p += s_p
            d += s_c - s_p
            total += w
    return n, c / total, p / total, d / total


def naive_sequence(x: list[float], den: list[float], alpha: float, t_star: float) -> tuple[float, float]:
    """Waudby-Smith et al. (2021), Theorem 2.2, on z_i = (x_i − R den_i) / mean(den), long-hand."""
    pairs = [(xi, w) for xi, w in zip(x, den, strict=True) if w != 0]
    n = len(pairs)
    ratio = sum(xi for xi, _ in pairs) / sum(w for _, w in pairs)
    mean_den = sum(w for _, w in pairs) / n
    variance = sum(((xi - ratio * w) / mean_den) ** 2 for xi, w in pairs) / (n - 1)
    rho2 = (-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha))) / t_star
    half = math.sqrt(variance) * math.sqrt(
        2 * (n * rho2 + 1) / (n**2 * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha)
    )
    return ratio - half, ratio + half


def losses(seed: int, n: int, weighted: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    den = rng.choice([0.0, 0.5, 1.0, 3.0], n) if weighted else np.ones(n)
    champion = rng.gamma(2.0, 0.3, n) * den
    return champion * rng.lognormal(-0.02, 0.2, n), champion, den


@pytest.mark.parametrize("weighted", [False, True])
def test_means_and_difference_match_a_naive_loop(weighted: bool) -> None:
    challenger, champion, den = losses(1, 3_001, weighted)
    got = paired_difference(challenger, champion, den, ALPHA)
    n, c, p, d = naive_means(challenger.tolist(), champion.tolist(), den.tolist())
    assert got.n == n == (3_001 if not weighted else int(np.count_nonzero(den)))
    assert got.challenger == pytest.approx(c, rel=1e-12)
    assert got.champion == pytest.approx(p, rel=1e-12)
    assert got.mean == pytest.approx(d, rel=1e-11)
    assert got.mean == pytest.approx(c - p, rel=1e-11)


@pytest.mark.parametrize("weighted", [False, True])
def test_bounds_follow_the_papers_formula_at_every_look(weighted: bool) -> None:
    challenger, champion, den = losses(2, 2_000, weighted)
    x = challenger - champion
    running = bounds(running_moments(x, den, 100), ALPHA)
    for look, n in enumerate(range(100, 2_001, 100)):
        low, high = naive_sequence(x[:n].tolist(), den[:n].tolist(), ALPHA, TUNED_FOR)
        once = paired_difference(challenger[:n], champion[:n], den[:n], ALPHA)
        assert (once.low, once.high) == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))
        # The simulations' vectorised readings are the same numbers as the route's.
        assert running[1][look] == pytest.approx(low, rel=1e-10)
        assert running[2][look] == pytest.approx(high, rel=1e-10)


def test_bounds_lose_nothing_to_a_large_common_difference() -> None:
    """Pairs that differ by 1e4 give or take 1e-4: Σ (x − R den)² from its expansion about 0
    would be rounding; the route takes its sums about the pairs' own mean."""
    rng = np.random.default_rng(3)
    champion = rng.gamma(2.0, 0.3, 500)
    challenger = champion + 1e4 + rng.normal(0, 1e-4, 500)
    got = paired_difference(challenger, champion, np.ones(500), ALPHA)
    low, high = naive_sequence((challenger - champion).tolist(), [1.0] * 500, ALPHA, TUNED_FOR)
    assert got.high - got.low == pytest.approx(high - low, rel=1e-6)
    assert got.verdict == "worse"


def test_the_mixture_is_tuned_for_its_pairs() -> None:
    """ρ² (the paper's closed form) gives within 1 % of the narrowest sequence at t* pairs, and
    narrower there than ρ² tuned for ten times fewer or more pairs."""

    def width(rho2: float) -> float:
        n = TUNED_FOR
        return math.sqrt(2 * (n * rho2 + 1) / (n**2 * rho2) * math.log(math.sqrt(n * rho2 + 1) / ALPHA))

    best = optimize.minimize_scalar(lambda r: width(math.exp(r)), bounds=(-20, 0), method="bounded")
    ours = float(margin(np.array([float(TUNED_FOR)]), ALPHA)[0])
    assert ours == pytest.approx(width(rho_squared(ALPHA)), rel=1e-12)
    assert ours <= best.fun * 1.01
    assert ours < width(rho_squared(ALPHA, TUNED_FOR / 10))
    assert ours < width(rho_squared(ALPHA, TUNED_FOR * 10))
    assert "2103.06476" in METHOD
    assert f"{TUNED_FOR:,}" in METHOD


def test_too_few_pairs_give_no_bounds() -> None:
    nothing = paired_difference(np.array([]), np.array([]), np.array([]), ALPHA)
    assert (nothing.n, nothing.challenger, nothing.mean, nothing.low, nothing.verdict) == (
        0,
        None,
        None,
        None,
        "undecided",
    )
    one = paired_difference(np.array([0.1, 5.0]), np.array([0.9, 7.0]), np.array([2.0, 0.0]), ALPHA)
    assert (one.n, one.challenger, one.champion) == (1, 0.05, 0.45)
    assert one.mean == pytest.approx(-0.4)
    assert (one.low, one.high, one.verdict) == (None, None, "undecided")
    uncounted = paired_difference(np.array([0.0, 0.0]), np.array([0.0, 0.0]), np.zeros(2), ALPHA)
    assert (uncounted.n, uncounted.mean, uncounted.verdict) == (0, None, "undecided")


def test_identical_losses_differ_by_nothing() -> None:
    champion = np.random.default_rng(4).gamma(2.0, 0.3, 1_000)
    same = paired_difference(champion, champion.copy(), np.ones(1_000), ALPHA)
    assert (same.mean, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, "undecided")
    assert same.challenger == same.champion == pytest.approx(champion.mean(), rel=1e-12)


def test_a_loss_that_is_not_finite_gives_no_numbers() -> None:
    got = paired_difference(np.array([0.1, np.inf, 0.3]), np.array([0.2, 0.2, 0.2]), np.ones(3), ALPHA)
    assert (got.n, got.challenger, got.mean, got.low, got.high, got.verdict) == (3, None, None, None, None, "undecided")
    assert got.champion == pytest.approx(0.2)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, math.nan])
def test_alpha_is_a_level(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        paired_difference(np.ones(3), np.ones(3), np.ones(3), alpha)


def test_the_same_predictions_under_two_names_never_differ() -> None:
    found = false_verdicts(seed=5, runs=1_000, pairs=10_000, alpha=ALPHA, same=True)
    assert (found.sequence, found.t_interval) == (0, 0)


@pytest.mark.parametrize("weighted", [False, True])
def test_an_aa_comparison_read_after_every_batch_is_falsely_decided_at_most_alpha(weighted: bool) -> None:
    """1,000 runs of 10,000 pairs, read after every 100: the confidence sequence shows a verdict
    in at most α of them; a t-interval read the same way does in far more."""
    found = false_verdicts(seed=6, runs=1_000, pairs=10_000, alpha=ALPHA, weighted=weighted)
    low, high = clopper_pearson(found.sequence, found.runs)
    share = found.sequence / found.runs
    print(f"A/A false verdicts: {share:.3f} (95 % Clopper-Pearson {low:.3f} to {high:.3f})")
    assert share <= ALPHA, (share, low, high)
    assert high <= ALPHA, f"the interval {low:.3f} to {high:.3f} reaches past α"
    assert found.t_interval / found.runs > 2 * ALPHA, found.t_interval


def test_a_challenger_with_two_percent_lower_loss_is_found_better() -> None:
    found = power(seed=7, runs=200, pairs=30_000, alpha=ALPHA, challenger_own=TWO_PERCENT_OWN)
    assert found.loss_ratio == pytest.approx(0.98, abs=0.002)
    decided = np.isfinite(found.pairs_to_better)
    print(f"2 % lower: better in {decided.mean():.0%}, median {np.median(found.pairs_to_better):,.0f} pairs")
    assert decided.mean() >= 0.8
    assert found.worse == 0


def test_the_docs_give_the_sequences_width_and_tuning() -> None:
    """docs/comparisons.md's price of anytime validity: the sequence's width over a fixed-sample
    normal interval's (1.959964 σ / √n) at the sizes it names, and the tuning it names."""
    page = " ".join((Path(__file__).resolve().parents[2] / "docs" / "comparisons.md").read_text().split())
    ratio = margin(np.array([100.0, 1_000.0, 10_000.0, 100_000.0]), ALPHA) * np.sqrt([100, 1_000, 10_000, 100_000])
    ratio /= 1.959964
    texts = [f"{ratio[2]:.2f} times at 10,000", f"{ratio[1]:.2f} times at 1,000", f"{ratio[3]:.2f} times at 100,000"]
    for text in [*texts, f"{ratio[0]:.1f} times at 100 pairs", f"/ {TUNED_FOR:,}"]:
        assert text in page, text


def test_the_arrays_are_one_per_pair() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_difference(np.ones(3), np.ones(2), np.ones(3), ALPHA)
    with pytest.raises(ValueError, match="one length"):
        paired_difference(np.ones((3, 1)), np.ones((3, 1)), np.ones((3, 1)), ALPHA)
