"""A mergeable quantile sketch with 1 % relative accuracy: DDSketch, in NumPy.

DDSketch (Masson, Rim and Lee, "DDSketch: A Fast and Fully-Mergeable Quantile Sketch with
Relative-Error Guarantees", PVLDB 12(12), 2019) counts each value in the bin
k = ceil(log_gamma |x|), gamma = (1 + a) / (1 - a), and answers a quantile from the bin holding
its rank as 2 gamma^k / (gamma + 1), which is within a relative error a of every value the bin
holds. Two sketches merge by adding their counts bin by bin, so the sketch of a union is exactly
the merge of the sketches of its parts, in any order.

Here a = 0.01; negative values count in mirrored bins, and values whose magnitude is below
`TINY` (1e-300, a loss that small is 0 in any dtype the service computes in) in one bin of their
own that answers 0. Each bin is one `code`: 0 for that bin, `OFFSET + k` for a positive value,
`-(OFFSET + k)` for a negative one, so that codes sort as the values they stand for. A sketch is
kept as bytes: its bins in code order, each a little-endian int32 code and int64 count (`BIN`).
Many sketches merge and answer in one vectorised pass (`merge`, `quantiles`).

The q-quantile of n values is the value of rank floor(q (n - 1)) counting from 0 (NumPy's
`method="lower"`); the sketch answers it within 1 % relative error.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

ACCURACY = 0.01
GAMMA = (1 + ACCURACY) / (1 - ACCURACY)
_LOG_GAMMA = math.log(GAMMA)
TINY = 1e-300
# Above the largest bin index float64 reaches (ceil(log_gamma 1.8e308) = 35,485) and below 2^17.
OFFSET = 1 << 16
BIN = np.dtype([("code", "<i4"), ("count", "<i8")])
# Codes of the groups a merge keeps apart are shifted past every code: (group << 18) + code + 2^17.
_GROUP_SHIFT = 18
_CODE_BIAS = 1 << 17

Codes = NDArray[np.int64]


def codes(values: NDArray[Any]) -> Codes:
    """The bin code of each value (finite values; the engine answers no others)."""
    values = np.asarray(values, dtype=np.float64)
    magnitude = np.abs(values)
    small = magnitude < TINY
    with np.errstate(divide="ignore"):
        index = np.ceil(np.log(np.where(small, 1.0, magnitude)) / _LOG_GAMMA).astype(np.int64)
    code = np.where(values < 0, -(OFFSET + index), OFFSET + index)
    return np.where(small, 0, code)


def encode(bin_codes: Codes, counts: NDArray[np.int64]) -> bytes:
    """A sketch from its bins (codes in increasing order, each once)."""
    bins = np.empty(len(bin_codes), dtype=BIN)
    bins["code"], bins["count"] = bin_codes, counts
    return bins.tobytes()


def of_values(values: NDArray[Any]) -> bytes:
    """The sketch of some values."""
    found, counts = np.unique(codes(values), return_counts=True)
    return encode(found, counts.astype(np.int64))


def grouped(values: NDArray[Any], groups: NDArray[np.int64], size: int) -> list[bytes]:
    """The sketch of the values of each group 0..size-1 (b"" for a group without values)."""
    return split(*_summed(groups.astype(np.int64), codes(values), np.ones(len(values), np.int64)), size)


def merge(sketches: Sequence[bytes | None], groups: Sequence[int] | NDArray[np.int64], size: int) -> list[bytes]:
    """The merge of the sketches of each group 0..size-1: `sketches[i]` belongs to `groups[i]`."""
    return split(*_bins(sketches, groups), size)


def split(group: NDArray[np.int64], code: Codes, count: NDArray[np.int64], size: int) -> list[bytes]:
    """Bins sorted by group then code, as one sketch per group 0..size-1."""
    edges = np.searchsorted(group, np.arange(size + 1))
    return [encode(code[a:b], count[a:b]) for a, b in itertools.pairwise(edges)]


def quantiles(
    sketches: Sequence[bytes | None], groups: Sequence[int] | NDArray[np.int64], size: int, qs: Sequence[float]
) -> NDArray[np.float64]:
    """For each group 0..size-1, the quantiles `qs` of the merge of its sketches, shape (size,
    len(qs)); NaN where a group holds no value (the caller reports null).

    One pass over all the sketches' bins: they are concatenated in group order and, only where a
    group holds more than one sketch, sorted by code within it (a bin's rank needs no merge of
    equal codes); the cost follows the bins, and one bin's work is a few NumPy element steps."""
    group, code, count = _ordered(sketches, np.asarray(groups, dtype=np.int64))
    answer = np.full((size, len(qs)), np.nan)
    if not len(group):
        return answer
    totals = np.bincount(group, weights=count, minlength=size).astype(np.int64)
    first = np.searchsorted(group, np.arange(size))  # each group's first bin
    cumulative = np.cumsum(count)
    before = np.concatenate([[0], cumulative])[first]  # the values in earlier groups
    present = np.flatnonzero(totals)
    ranks = np.floor(np.multiply.outer(totals[present] - 1, np.asarray(qs, dtype=np.float64))).astype(np.int64)
    # the first bin of the group whose running count passes the rank
    at = np.searchsorted(cumulative, before[present, None] + ranks, side="right")
    answer[present] = value(code[at])
    return answer


def value(code: Codes) -> NDArray[np.float64]:
    """The value a bin answers: 2 gamma^k / (gamma + 1), its sign, or 0."""
    code = np.asarray(code, dtype=np.int64)
    index = np.abs(code) - OFFSET
    magnitude = 2.0 * np.exp(index * _LOG_GAMMA) / (GAMMA + 1.0)
    return np.where(code == 0, 0.0, np.sign(code) * magnitude)


def _ordered(
    sketches: Sequence[bytes | None], groups: NDArray[np.int64]
) -> tuple[NDArray[np.int64], Codes, NDArray[np.int64]]:
    """Every bin of the sketches with its sketch's group, sorted by group then code (equal codes
    of one group's sketches stay apart)."""
    if len(groups) and np.any(groups[1:] < groups[:-1]):
        order = np.argsort(groups, kind="stable")
        sketches, groups = [sketches[i] for i in order.tolist()], groups[order]
    blobs = [b"" if sketch is None else sketch for sketch in sketches]
    bins = np.frombuffer(b"".join(blobs), dtype=BIN)
    lengths = np.fromiter((len(blob) for blob in blobs), dtype=np.int64, count=len(blobs)) // BIN.itemsize
    group = np.repeat(groups, lengths)
    code, count = bins["code"].astype(np.int64), bins["count"].astype(np.int64)
    if len(groups) > 1 and not np.all(groups[1:] > groups[:-1]):  # a group of several sketches
        order = np.argsort((group << _GROUP_SHIFT) + (code + _CODE_BIAS), kind="stable")
        group, code, count = group[order], code[order], count[order]
    return group, code, count


def _bins(
    sketches: Sequence[bytes | None], groups: Sequence[int] | NDArray[np.int64]
) -> tuple[NDArray[np.int64], Codes, NDArray[np.int64]]:
    """Every bin of the sketches, each with its sketch's group, summed per (group, code) and
    sorted by group then code: one pass over all of them, however many sketches."""
    blobs = [b"" if sketch is None else sketch for sketch in sketches]
    bins = np.frombuffer(b"".join(blobs), dtype=BIN)
    lengths = np.fromiter((len(blob) // BIN.itemsize for blob in blobs), dtype=np.int64, count=len(blobs))
    group = np.repeat(np.asarray(groups, dtype=np.int64), lengths)
    return _summed(group, bins["code"].astype(np.int64), bins["count"].astype(np.int64))


def _summed(
    group: NDArray[np.int64], code: Codes, count: NDArray[np.int64]
) -> tuple[NDArray[np.int64], Codes, NDArray[np.int64]]:
    keys = (group << _GROUP_SHIFT) + (code + _CODE_BIAS)
    unique, inverse = np.unique(keys, return_inverse=True)
    summed = np.bincount(inverse.reshape(-1), weights=count, minlength=len(unique)).astype(np.int64)
    return unique >> _GROUP_SHIFT, (unique & ((1 << _GROUP_SHIFT) - 1)) - _CODE_BIAS, summed
