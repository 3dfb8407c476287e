"""Engine speed against baselines measured in the same run. Medians of repeated runs; ratios > 1 mean faster.

    make bench        (or: .venv/bin/python bench/engine.py [--repeats N])

Cross-entropy from logits, float32, per-sample (reduction='none'):
  torch   torch.nn.functional.cross_entropy on one thread (torch.set_num_threads(1))
  loss    the engine's loss function alone (label checks, fused kernel)
  compute service.engine.compute(): conversion, finiteness and option checks, loss, reduction
  floor   the fewest NumPy calls that compute it (class-major, one block, no checks): what any
          NumPy engine pays at minimum, so loss / torch cannot pass floor / torch
MSE, float32, (N, 10): compute() against one read pass over both inputs (np.add.reduce of each).
XGBoost's logloss (N,) and mlogloss (N, 10) under convention xgboost, float32 rows with float64
sums (XGBoost's precision) and float64, weighted: compute() against the same read pass.
LightGBM's binary_logloss (N,) on raw scores under convention lightgbm, float64 from float32
labels and weights (LightGBM's precision): one row, against the same read pass.
CTC, (N, T, C) log-probabilities, targets of L labels: compute() under torch against
torch.nn.functional.ctc_loss on one thread (reduction='none'), both dtypes.
All cores: compute() with the engine on every core this process may use (LOSS_SERVICE_ENGINE_THREADS'
default) against torch at its default thread count, cross-entropy from logits, both dtypes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from service.engine import available_cores, compute, set_threads
from service.engine.losses.crossentropy import sparse_categorical_crossentropy

SIZES = [(1_000, 10), (100_000, 10), (10_000, 1_000), (1_000_000, 10)]


def median_seconds(work: Callable[[], Any], repeats: int) -> float:
    work()  # warm-up: first-touch page faults and lazy imports are not what is measured
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def numpy_floor(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """-log_softmax(x)[t] in eight NumPy calls over one class-major block, nothing checked."""
    columns = np.ascontiguousarray(logits.T)
    peak = columns.max(axis=0)
    np.subtract(columns, peak, out=columns)
    target = np.take(logits.ravel(), np.arange(0, logits.size, logits.shape[1]) + labels) - peak
    np.exp(columns, out=columns)
    return np.log(columns.sum(axis=0)) - target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    try:
        import torch
        import torch.nn.functional as F  # noqa: N812

        torch_default_threads = torch.get_num_threads()
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    set_threads(1)
    rng = np.random.default_rng(0)
    print(f"# {platform.processor() or platform.machine()}, numpy {np.__version__}", end="")
    print(f", torch {torch.__version__} (1 thread)" if torch else ", torch absent", f", median of {args.repeats}")
    print("\n| N x C | torch ms | loss ms | compute ms | loss / torch | compute / torch | NumPy floor / torch |")
    print("|---|---|---|---|---|---|---|")
    for n, c in SIZES:
        logits = rng.normal(0, 3, (n, c)).astype(np.float32)
        labels = rng.integers(0, c, n)
        loss_s = median_seconds(
            lambda: sparse_categorical_crossentropy(logits, labels, "torch", from_logits=True), args.repeats
        )
        compute_s = median_seconds(
            lambda: compute("scce", logits, labels, options={"from_logits": True}, dtype="float32", convention="torch"),
            args.repeats,
        )
        floor_s = median_seconds(lambda: numpy_floor(logits, labels), args.repeats)
        if torch is not None:
            tl, ty = torch.from_numpy(logits), torch.from_numpy(labels)
            torch_s = median_seconds(lambda: F.cross_entropy(tl, ty, reduction="none"), args.repeats)
            print(
                f"| {n:,} x {c:,} | {torch_s * 1e3:.3f} | {loss_s * 1e3:.3f} | {compute_s * 1e3:.3f} "
                f"| {torch_s / loss_s:.2f}x | {torch_s / compute_s:.2f}x | {torch_s / floor_s:.2f}x |"
            )
        else:
            print(f"| {n:,} x {c:,} | - | {loss_s * 1e3:.3f} | {compute_s * 1e3:.3f} | - | - | - |")

    print("\n| MSE N x 10 | read pass ms | compute ms | compute / read pass |")
    print("|---|---|---|---|")
    for n in (100_000, 1_000_000):
        predictions = rng.normal(size=(n, 10)).astype(np.float32)
        targets = rng.normal(size=(n, 10)).astype(np.float32)
        read_s = median_seconds(
            lambda: (np.add.reduce(predictions, axis=None), np.add.reduce(targets, axis=None)), args.repeats
        )
        mse_s = median_seconds(lambda: compute("mse", predictions, targets, dtype="float32"), args.repeats)
        print(f"| {n:,} x 10 | {read_s * 1e3:.3f} | {mse_s * 1e3:.3f} | {mse_s / read_s:.2f}x |")

    print("\n| xgboost metric | shape | dtype | read pass ms | compute ms | compute / read pass |")
    print("|---|---|---|---|---|---|")
    n = 1_000_000
    weights = rng.uniform(0.5, 2.0, n)
    for metric, shape in (("logloss", (n,)), ("mlogloss", (n // 10, 10))):
        probabilities = rng.uniform(0.01, 0.99, shape).astype(np.float32)
        if metric == "mlogloss":
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            labels = rng.integers(0, 10, shape[0])
        else:
            labels = (rng.random(n) > 0.5).astype(np.float32)
        sample_weight = weights[: shape[0]]
        read_s = median_seconds(
            lambda: (np.add.reduce(probabilities, axis=None), np.add.reduce(labels, axis=None)), args.repeats
        )
        for dtype in ("float32", "float64"):
            xgb_s = median_seconds(
                lambda: compute(
                    metric, probabilities, labels, sample_weight=sample_weight, convention="xgboost", dtype=dtype
                ),
                args.repeats,
            )
            print(
                f"| {metric} | {' x '.join(f'{d:,}' for d in shape)} | {dtype} | {read_s * 1e3:.3f} "
                f"| {xgb_s * 1e3:.3f} | {xgb_s / read_s:.2f}x |"
            )

    raw = rng.normal(0.0, 3.0, n)
    binary = (rng.random(n) > 0.5).astype(np.float64)
    read_s = median_seconds(lambda: (np.add.reduce(raw), np.add.reduce(binary)), args.repeats)
    lgb_s = median_seconds(
        lambda: compute(
            "binary_logloss", raw, binary, sample_weight=weights, options={"margin": True}, convention="lightgbm"
        ),
        args.repeats,
    )
    print(
        f"| lightgbm binary_logloss, margin | {n:,} | float64 | {read_s * 1e3:.3f} | {lgb_s * 1e3:.3f} "
        f"| {lgb_s / read_s:.2f}x |"
    )

    ctc_table(rng, args.repeats, torch)
    if torch is None:
        return
    cores = available_cores()
    set_threads(cores)
    torch.set_num_threads(torch_default_threads)
    print(
        f"\n| all cores: engine {cores} threads, torch {torch_default_threads} | dtype | torch ms | compute ms ", end=""
    )
    print("| compute / torch |")
    print("|---|---|---|---|---|")
    for n, c in SIZES[1:]:
        for dtype in ("float32", "float64"):
            logits = rng.normal(0, 3, (n, c)).astype(dtype)
            labels = rng.integers(0, c, n)
            compute_s = median_seconds(
                lambda: compute("scce", logits, labels, options={"from_logits": True}, dtype=dtype, convention="torch"),
                args.repeats,
            )
            tl, ty = torch.from_numpy(logits), torch.from_numpy(labels)
            torch_s = median_seconds(lambda: F.cross_entropy(tl, ty, reduction="none"), args.repeats)
            ratio = torch_s / compute_s
            print(f"| {n:,} x {c:,} | {dtype} | {torch_s * 1e3:.3f} | {compute_s * 1e3:.3f} | {ratio:.2f}x |")


CTC_SIZES = [(32, 100, 30, 20), (16, 500, 50, 100)]  # N, T, C, L


def ctc_table(rng: np.random.Generator, repeats: int, torch: Any) -> None:
    """The CTC recursion: T steps over an (N, 2L + 1) lattice, against PyTorch's C++ loops."""
    print("\n| CTC N x T x C, L labels | dtype | torch ms | compute ms | compute / torch |")
    print("|---|---|---|---|---|")
    for n, t, c, length in CTC_SIZES:
        for dtype in ("float32", "float64"):
            logits = rng.normal(0, 2, (n, t, c))
            log_p = (logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))).astype(dtype)
            labels = rng.integers(1, c, (n, length))
            compute_s = median_seconds(lambda: compute("ctc", log_p, labels, dtype=dtype, convention="torch"), repeats)
            shape = f"{n} x {t} x {c}, {length}"
            if torch is None:
                print(f"| {shape} | {dtype} | - | {compute_s * 1e3:.3f} | - |")
                continue
            tl, ty = torch.from_numpy(log_p).transpose(0, 1), torch.from_numpy(labels)
            inputs, targets = [t] * n, [length] * n
            torch_s = median_seconds(
                lambda: torch.nn.functional.ctc_loss(tl, ty, inputs, targets, reduction="none"), repeats
            )
            print(f"| {shape} | {dtype} | {torch_s * 1e3:.3f} | {compute_s * 1e3:.3f} | {torch_s / compute_s:.2f}x |")


if __name__ == "__main__":
    main()
