"""Loss history in the store: what each joined pair keeps of its losses, on the row whose
arrival completes the pair (the label, or the prediction where the label came first).

How it is kept (docs/delayed-labels.md, "How history is kept"): per configured loss one
`HISTORY_LOSS` entry, the pair's share of that loss's sum and denominator (so that any set of
pairs gives the mean /v1/loss gives for it), and the number of values it adds to `count`; the
variant (`loss_variant`) tells configurations of a loss apart. rollups.py counts the pairs into
cells by prediction time and segment; pairs.py reads them back row by row or by columns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

# One configured loss of one joined pair, on its prediction row.
HISTORY_LOSS = np.dtype([("variant", "<i8"), ("sum", "<f8"), ("denominator", "<f8"), ("count", "<i8")])
# One estimated loss of one joined pair, beside its losses: the moments of the pair's shares of the
# loss's sum and denominator under the belief its model held when it joined (MOMENTS, in order;
# NaN where the engine could not estimate it).
MOMENTS = ("mean", "variance", "denominator", "denominator_variance", "covariance")
EXPECTED_LOSS = np.dtype([("variant", "<i8"), ("moments", "<f8", (len(MOMENTS),))])
# A rollup cell's expected losses, per loss: the pairs estimated, then their MOMENTS summed.
EXPECTED_TOTALS = 1 + len(MOMENTS)


def loss_variant(loss: str, options: Mapping[str, Any], convention: str, dtype: str) -> int:
    """A signed 64-bit hash of one configured loss: the same loss configured the same way keeps
    its history across a re-PUT; any change to it starts a history of its own."""
    canonical = orjson.dumps(
        {"loss": loss, "options": options, "convention": convention, "dtype": dtype}, option=orjson.OPT_SORT_KEYS
    )
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "little", signed=True)


@dataclass(frozen=True)
class PairLosses:
    """One configured loss over the pairs one transaction joins, pair by pair (float64)."""

    variant: int
    loss: str
    aggregate: str
    sums: NDArray[np.float64]
    denominators: NDArray[np.float64]
    counts: NDArray[np.int64]
    # The estimated loss's moments per pair, (pairs, len(MOMENTS)); None for a loss not estimated.
    expected: NDArray[np.float64] | None = None


def packed_losses(losses: Sequence[PairLosses], pairs: int) -> bytes:
    """Every pair's `losses` column end to end: one HISTORY_LOSS entry per loss and pair, the
    pairs in order (a pair's column is its `len(losses)` entries)."""
    if not losses:
        return b""
    table = np.empty((pairs, len(losses)), dtype=HISTORY_LOSS)
    for column, loss in enumerate(losses):
        table["variant"][:, column] = loss.variant
        table["sum"][:, column] = loss.sums
        table["denominator"][:, column] = loss.denominators
        table["count"][:, column] = loss.counts
    return table.tobytes()


def packed_expected(losses: Sequence[PairLosses], pairs: int) -> bytes:
    """Every pair's `expected` column end to end: one EXPECTED_LOSS entry per estimated loss and
    pair, the pairs in order."""
    estimated = [loss for loss in losses if loss.expected is not None]
    if not estimated:
        return b""
    table = np.empty((pairs, len(estimated)), dtype=EXPECTED_LOSS)
    for column, loss in enumerate(estimated):
        table["variant"][:, column] = loss.variant
        table["moments"][:, column] = loss.expected
    return table.tobytes()


def decode_expected(blob: bytes | None) -> NDArray[Any]:
    """A row's `expected` back as EXPECTED_LOSS entries (none where nothing is estimated)."""
    return np.frombuffer(blob or b"", dtype=EXPECTED_LOSS)


def expected_totals(moments: NDArray[np.float64]) -> NDArray[np.float64]:
    """Pairs' moments (pairs, len(MOMENTS)) as rollup totals: how many are estimated (not NaN),
    then their moments summed."""
    counted = ~np.isnan(moments).any(axis=1)
    return np.concatenate([[float(counted.sum())], moments[counted].sum(axis=0)])


def decode_losses(blob: bytes | None) -> NDArray[Any]:
    """A row's `losses` back as HISTORY_LOSS entries (none before it joined)."""
    return np.frombuffer(blob or b"", dtype=HISTORY_LOSS)


def entries_of(blobs: Sequence[bytes], count: int) -> tuple[NDArray[Any], NDArray[np.intp]]:
    """The `losses` columns of `count` rows (b"" where a row has none) as one view of HISTORY_LOSS
    entries over their joined bytes, and the row each entry belongs to."""
    sizes = np.fromiter(map(len, blobs), np.int64, count) // HISTORY_LOSS.itemsize
    return np.frombuffer(b"".join(blobs), dtype=HISTORY_LOSS), np.repeat(np.arange(count), sizes)


def shares_of(
    entries: NDArray[Any], owners: NDArray[np.intp], variant: int, count: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64], NDArray[np.bool_]]:
    """Each of `count` rows' share of the loss `variant` (its sum, denominator and count of
    values) from `entries_of`'s entries, and whether the row keeps one (0 where it does not)."""
    sums, denominators = np.zeros(count), np.zeros(count)
    counts, found = np.zeros(count, np.int64), np.zeros(count, bool)
    hit = entries["variant"] == variant
    at = owners[hit]
    sums[at], denominators[at] = entries["sum"][hit], entries["denominator"][hit]
    counts[at], found[at] = entries["count"][hit], True
    return sums, denominators, counts, found


def pair_value(sums: NDArray[np.float64], denominators: NDArray[np.float64], aggregate: str) -> NDArray[np.float64]:
    """Each pair's own loss, as /v1/loss would give it for that pair alone (its sum over its
    denominator, the root of that for root_mean, the sum itself for sum); NaN where a pair counts
    nothing (every target ignored, or weight 0), which the sketches leave out."""
    if aggregate == "sum":
        return sums.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(denominators != 0, sums / np.where(denominators != 0, denominators, 1.0), np.nan)
    return np.sqrt(mean) if aggregate == "root_mean" else mean
