"""Datasets bigger than memory: streaming and Dask against pyarrow's scan of the same files.

    make bench-dataset        (writes ~2.3 GB of Parquet to a temporary directory, then removes it)

One run measures, on datasets of 10 float32 logits and an int64 label per row:
- pyarrow's scan of the two columns alone (the floor: reading and decoding the files);
- `loss-service compute --dataset` (sparse categorical cross-entropy from logits): its time as
  a ratio to the scan, and its peak RSS, at two dataset sizes (memory must not grow with size);
- the same evaluation on a Dask LocalCluster of 2 single-threaded worker processes, against one
  process. Each measurement runs in a fresh process (peak RSS is per process); medians of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CLASSES = 10
ROWS_PER_FILE = 2_000_000

MEASURE = r"""
import json, sys, time
import pyarrow.dataset as ds
from service.datasets import Spec, evaluate_dask, evaluate_dataset
kind, path = sys.argv[1], sys.argv[2]
started = time.perf_counter()
if kind == "scan":
    rows = 0
    for batch in ds.dataset(path, format="parquet").to_batches(columns=["logits", "label"], batch_size=65536):
        rows += batch.num_rows
    out = {"rows": rows}
else:
    spec = Spec("scce", "logits", "label", options={"from_logits": True}, dtype="float32")
    if kind == "stream":
        result = evaluate_dataset(path, spec)
    else:
        from distributed import LocalCluster
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            started = time.perf_counter()  # the cluster's start-up is not the evaluation's
            result = evaluate_dask(path, spec, scheduler=cluster.scheduler_address)
    out = {"rows": result.rows, "mean": result.mean}
out["seconds"] = time.perf_counter() - started
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child would report
# the RSS of the (large) benchmark process it was forked from.
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
out["peak_rss_mb"] = int(status["VmHWM"].split()[0]) / 1024
print(json.dumps(out))
"""


def write(directory: Path, rows: int) -> float:
    """`rows` rows in files of 2,000,000 (row groups of 250,000); returns the size in GB."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        count = min(ROWS_PER_FILE, rows - start)
        logits = rng.normal(0, 3, (count, CLASSES)).astype(np.float32)
        table = pa.table(
            {
                "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), CLASSES),
                "label": rng.integers(0, CLASSES, count),
            }
        )
        pq.write_table(table, directory / f"part-{number:04d}.parquet", row_group_size=250_000, compression="none")
    return sum(f.stat().st_size for f in directory.iterdir()) / 1e9


def measure(kind: str, path: Path, repeats: int) -> dict[str, float]:
    runs = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, kind, str(path)], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "rows": runs[0]["rows"],
        **({"mean": runs[0]["mean"]} if "mean" in runs[0] else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48_000_000, help="rows of the large dataset (48e6: ~2.3 GB)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="loss-service-bench-dataset-"))
    try:
        sizes = {"small": args.rows // 4, "large": args.rows}
        gigabytes = {name: write(root / name, rows) for name, rows in sizes.items()}
        print(f"# {os.cpu_count()} cores; Parquet, uncompressed; medians of {args.repeats} fresh processes")
        print("| dataset | rows | GB | pyarrow scan | its peak RSS | compute --dataset | ratio | rows/s | peak RSS |")
        print("|---|---|---|---|---|---|---|---|---|")
        streamed = {}
        for name, rows in sizes.items():
            scan = measure("scan", root / name, args.repeats)
            stream = streamed[name] = measure("stream", root / name, args.repeats)
            print(
                f"| {name} | {rows:,} | {gigabytes[name]:.2f} | {scan['seconds']:.2f} s | {scan['peak_rss_mb']:.0f} MB "
                f"| {stream['seconds']:.2f} s "
                f"| {stream['seconds'] / scan['seconds']:.2f}x | {rows / stream['seconds']:,.0f} "
                f"| {stream['peak_rss_mb']:.0f} MB |"
            )
        dask = measure("dask", root / "large", args.repeats)
        assert abs(dask["mean"] - streamed["large"]["mean"]) <= 1e-5 * abs(streamed["large"]["mean"])
        speedup = streamed["large"]["seconds"] / dask["seconds"]
        print()
        print("| large dataset | seconds | vs one process |")
        print("|---|---|---|")
        print(f"| one process (streaming) | {streamed['large']['seconds']:.2f} | 1.00x |")
        print(f"| Dask, 2 worker processes | {dask['seconds']:.2f} | {speedup:.2f}x |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n(whole benchmark: {time.perf_counter() - started:.0f} s)")
