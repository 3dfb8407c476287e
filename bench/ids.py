"""What checking row ids costs: 100,000 ids of a log request, in-process, CPU time.

    PYTHONPATH=. python bench/ids.py

For each kind of id: the id validator (`to_ids`: types, lengths, repeats and characters), the
character check alone (over the ids joined into one string), the validation of the whole JSON
body of a predictions log (parse, ids and the 100,000 predictions), and the store's own check.
Minimum CPU time (`time.process_time`) of 31 runs, so other processes on the machine count little.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from service.server.api.body import validate_json
from service.server.api.model_schemas import PredictionsLog, _holds_refused, to_ids
from service.store.rows import _check_ids

COUNT = 100_000
KINDS: dict[str, list[Any]] = {
    "'tx-000123'": [f"tx-{i:06d}" for i in range(COUNT)],
    "36-character uuid-like": [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(COUNT)],
    "non-ASCII 'é-123'": [f"é-{i}" for i in range(COUNT)],
    "integers": list(range(COUNT)),
}


def cpu_ms(work: Callable[[], object], runs: int = 31) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best * 1e3


def main() -> None:
    print(f"{COUNT:,} ids | to_ids | character check | whole body | store check")
    for name, ids in KINDS.items():
        texts = [str(i) for i in ids]
        body = orjson.dumps({"ids": ids, "predictions": [0.5] * COUNT})
        print(
            f"{name} ({len(body) / 1e6:.1f} MB) | {cpu_ms(lambda: to_ids(ids)):.1f} ms"
            f" | {cpu_ms(lambda: _holds_refused(''.join(texts))):.1f} ms"
            f" | {cpu_ms(lambda: validate_json(PredictionsLog, body), 11):.1f} ms"
            f" | {cpu_ms(lambda: _check_ids(texts)):.1f} ms"
        )


if __name__ == "__main__":
    main()
