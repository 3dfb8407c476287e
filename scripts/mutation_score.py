"""The mutation score per module, from the results `mutmut run` leaves in mutants/ (make mutation).

Killed: a test failed, or the mutant timed out (an infinite loop is caught too). Survived: every
selected test passed. "No tests": no selected test runs that code; counted against the score.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152, 255}  # mutmut's exit codes for killed and timed-out mutants


def main() -> int:
    metas = sorted(Path("mutants").rglob("*.py.meta"))
    if not metas:
        print("no results in mutants/: run `make mutation`", file=sys.stderr)
        return 2
    totals: Counter[str] = Counter()
    print("| module | mutants | killed | survived | no tests | score |")
    print("|---|---|---|---|---|---|")
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        checked = [code for code in codes if code is not None]
        killed = sum(code in KILLED for code in checked)
        survived = sum(code == 0 for code in checked)
        untested = sum(code in (5, 33) for code in checked)
        module = str(meta.relative_to("mutants")).removesuffix(".meta")
        print(
            f"| {module} | {len(checked)} | {killed} | {survived} | {untested} | {killed / max(1, len(checked)):.1%} |"
        )
        totals.update(mutants=len(checked), killed=killed, survived=survived, untested=untested)
    score = totals["killed"] / max(1, totals["mutants"])
    counts = " | ".join(str(totals[key]) for key in ("mutants", "killed", "survived", "untested"))
    print(f"| all | {counts} | {score:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
