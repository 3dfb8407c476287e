"""Large batches on every core: contiguous blocks of samples computed in a thread pool.

NumPy releases the GIL inside its loops, so threads run the blocks truly in parallel. Every loss
computes each sample from that sample's rows alone (those that read the whole batch are
registered `whole_batch` and never split, unless an option given makes them separable; options
holding one value per sample are split with them), and the blocks' values are joined in order
before one reduction over all of them: the answer is bit for bit the single-threaded one. A block that
refuses its input is not trusted to report the batch's first problem: the whole batch is then
computed on the calling thread, which raises exactly the single-threaded error.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.conventions import Convention
from service.engine.errors import LossInputError
from service.engine.reduction import Array, LossValues
from service.engine.registry import LossSpec

# Below this many prediction values a batch stays on the calling thread: handing blocks to other
# threads costs tens of microseconds, which only a batch this large repays.
MIN_SPLIT_VALUES = 1 << 18
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (what a
    container's `cpus` or a pod's CPU limit sets)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity is the bound
    return max(1, cores)


_threads = available_cores()


def set_threads(threads: int) -> None:
    """Compute large batches on up to `threads` threads (1: always on the calling thread)."""
    global _threads, _pool
    with _pool_lock:
        _threads = max(1, threads)
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def threads() -> int:
    return _threads


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="loss-engine")
        return _pool


def loss_values(
    spec: LossSpec, x: Array, y: np.ndarray[Any, Any], convention: Convention, bound: dict[str, Any]
) -> LossValues:
    """`spec.function` over the batch, split into up to `threads()` blocks of samples when it is large."""
    per_sample = spec.per_sample_options
    for name in per_sample:  # before any split: a block's slice of a wrong list can look right
        value = bound[name]
        if value is not None and len(value) != x.shape[0]:
            raise LossInputError(f"options.{name}", f"needs one value per sample ({x.shape[0]}), got {len(value)}")
    if x.size < 2 * MIN_SPLIT_VALUES:  # one block whatever the loss
        return spec.function(x, y, convention, **bound)
    whole = spec.reads_whole_batch(bound) or not x.ndim
    blocks = 1 if whole else min(_threads, x.shape[0], x.size // MIN_SPLIT_VALUES)
    if blocks <= 1:
        return spec.function(x, y, convention, **bound)
    edges = np.linspace(0, x.shape[0], blocks + 1).astype(int)

    def block(start: int, stop: int) -> LossValues:
        options = {
            name: value[start:stop] if name in per_sample and value is not None else value
            for name, value in bound.items()
        }
        with np.errstate(over="ignore", under="ignore"):  # error states are per thread
            return spec.function(x[start:stop], y[start:stop], convention, **options)

    futures = [_executor().submit(block, int(a), int(b)) for a, b in itertools.pairwise(edges)]
    try:
        parts = [future.result() for future in futures]
    except LossInputError:
        concurrent.futures.wait(futures)
        return spec.function(x, y, convention, **bound)  # the batch's own first problem, by its index
    return _joined(parts)


def _joined(parts: list[LossValues]) -> LossValues:
    first = parts[0]

    def joined(arrays: list[Any]) -> Any:
        return None if arrays[0] is None else np.concatenate(arrays)

    return LossValues(
        values=np.concatenate([part.values for part in parts]),
        denominator=joined([part.denominator for part in parts]),
        mask=joined([part.mask for part in parts]),
        mean_divisor=joined([part.mean_divisor for part in parts]),
        weighted_average=first.weighted_average,
        batch_mean=first.batch_mean,
    )
