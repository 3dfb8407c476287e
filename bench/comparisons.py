"""What a champion/challenger comparison promises, measured: false verdicts in A/A runs and the
pairs it takes to find a better challenger, in-process, simulated with a fixed seed.

    PYTHONPATH=. python bench/comparisons.py [--runs 1000] [--power-runs 500]

The losses are binary cross-entropies of simulated classifiers (tests/comparing.py describes
them); every reading goes through service/values/comparison.py, read after every batch of 100
pairs, at α = 0.05.
1. A/A: `--runs` runs of 10,000 pairs in which both models have the same expected loss (without
   and with weights, some of them 0), and the champion's own losses logged under both names. The
   share of runs that ever read "better" or "worse", with its 95 % Clopper-Pearson interval, for
   the confidence sequence and for a fixed-sample t-interval read the same way.
2. Power: `--power-runs` runs of up to 100,000 pairs in which the challenger's mean loss is 1, 2
   and 3 % lower; the share that reads "better" within them, the pairs it takes (10th, 50th and
   90th percentile), and the runs that ever read "worse".
"""

from __future__ import annotations

import argparse

import numpy as np

from service.values.comparison import METHOD
from tests.comparing import CHAMPION_OWN, OWN_FOR_LOWER, clopper_pearson, false_verdicts, power

ALPHA = 0.05
AA_PAIRS = 10_000
POWER_PAIRS = 100_000


def share(found: int, runs: int) -> str:
    low, high = clopper_pearson(found, runs)
    return f"{found / runs:.3f} ({low:.3f}-{high:.3f})"


def aa(runs: int) -> None:
    print(f"A/A, {runs:,} runs of {AA_PAIRS:,} pairs read after every 100, alpha {ALPHA}")
    print(f"{'case':<34} {'sequence: any verdict':>24} {'peeking t-interval':>24}")
    cases = {
        "same predictions under two names": {"same": True},
        f"equal expected loss (own error {CHAMPION_OWN})": {},
        "equal expected loss, weighted": {"weighted": True},
    }
    for seed, (name, options) in enumerate(cases.items(), start=11):
        found = false_verdicts(seed, runs, AA_PAIRS, ALPHA, **options)
        print(f"{name:<34} {share(found.sequence, runs):>24} {share(found.t_interval, runs):>24}")


def powers(runs: int) -> None:
    print(f"\nPower, {runs:,} runs of up to {POWER_PAIRS:,} pairs read after every 100, alpha {ALPHA}")
    print(f"{'lower':>6} {'loss ratio':>10} {'better':>8} {'p10':>8} {'median':>8} {'p90':>8} {'worse':>6}")
    for seed, (lower, own) in enumerate(OWN_FOR_LOWER.items(), start=21):
        found = power(seed, runs, POWER_PAIRS, ALPHA, own)
        pairs = found.pairs_to_better
        p10, p50, p90 = (f"{q:,.0f}" if np.isfinite(q) else "-" for q in np.percentile(pairs, [10, 50, 90]))
        decided = f"{np.isfinite(pairs).mean():.0%}"
        print(f"{lower:>6.0%} {found.loss_ratio:>10.4f} {decided:>8} {p10:>8} {p50:>8} {p90:>8} {found.worse:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument("--power-runs", type=int, default=500)
    args = parser.parse_args()
    print(METHOD, end="\n\n")
    aa(args.runs)
    powers(args.power_runs)


if __name__ == "__main__":
    main()
