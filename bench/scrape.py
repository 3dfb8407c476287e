"""/metrics rendering, full and scoped to one team's models: CPU time of one rendering.

    PYTHONPATH=. python bench/scrape.py            (one worker: metrics in memory)
    PYTHONPATH=. python bench/scrape.py --workers  (prometheus-client's multiprocess files)

100 models (50 `fraud-*`, 50 `churn-*`), each with two losses' batches and delayed-label rows
(logged, joined, pending): ~5,600 series. Each figure is the least CPU time (time.process_time) of
50 renderings of `Monitor.exposition`, in full and scoped to `fraud-*` as a restricted metrics key
sees it. The scoped filter costs one pass over the samples and one pattern match per model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from fnmatch import fnmatchcase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", action="store_true", help="render from multiprocess files, as --workers N does")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    if args.workers:  # before prometheus-client is imported: it picks its value class then
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
    import numpy as np

    from service.config import Settings
    from service.server.monitoring import Monitor

    monitor = Monitor(Settings(max_models=200))
    batch = np.array([0.1, 0.5, 2.0])
    for team in ("fraud", "churn"):
        for i in range(50):
            for loss in ("mse", "mae"):
                monitor.observe_batch(f"{team}-{i}", loss, batch, 1.0)
            monitor.observe_log(f"{team}-{i}", "predictions", 3, 1, np.array([1.0, 20.0]), (5, 6))

    def least(render: Callable[[], object]) -> float:
        times = []
        for _ in range(args.rounds):
            started = time.process_time()
            render()
            times.append(time.process_time() - started)
        return min(times) * 1e3

    def fraud(label: str) -> bool:
        return fnmatchcase(label, "fraud-*")

    mode = "multiprocess files" if args.workers else "in memory"
    for name, visible in (("full", None), ("scoped to fraud-*", fraud)):
        body, _ = monitor.exposition(visible)
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        cpu = least(lambda visible=visible: monitor.exposition(visible))
        print(f"{mode:18s} {name:18s} {series:6,} series {len(body):9,} bytes {cpu:7.1f} ms CPU")


if __name__ == "__main__":
    sys.exit(main())
