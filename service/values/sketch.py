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
`-(OFFSET + k)` for a negative one, so that codes sort as the values they stand for.

A sketch is kept as bytes, its n bins in code order (`encode`): a header `D`, the width in bytes
of its codes and of its counts (1, 2, 4 or 8: the fewest that hold them), the version 1, and its
first code as a little-endian int32; then each code less the first, then the running count up to
each bin (little-endian unsigned, of those widths). The running counts let a quantile be found by
binary search in the bytes as stored, so that answering a sketch reads as many of its numbers
(`_SEARCH_STEPS` and two) however many bins it holds (`quantiles`). Sketches of layout 0, 12
bytes a bin (a little-endian int32 code and int64 count, `BIN`), are read too: their fourth byte,
the top byte of an int32 code, is 0 or 255, never the version 1. Many sketches merge in one vectorised pass (`merge`).

The q-quantile of n values is the value of rank floor(q (n - 1)) counting from 0 (NumPy's
`method="lower"`); the sketch answers it within 1 % relative error.
"""

from __future__ import annotations

import math
import struct
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
# A bin of layout 0 (see the module).
BIN = np.dtype([("code", "<i4"), ("count", "<i8")])
_MAGIC, _VERSION, _HEADER = 0x44, 1, 8
_HEAD = struct.Struct("<BBBBi")  # 'D', code width, count width, version, first code
# The widths a sketch's codes and running counts are stored in: the first whose limit is above them.
_WIDTHS, _WIDTH_LIMITS = np.array([1, 2, 4, 8]), np.array([1 << 8, 1 << 16, 1 << 32])
# Halvings that narrow a binary search over any sketch's bins to one: codes span under 2^18.
_SEARCH_STEPS = 18
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
    """A sketch from its bins (codes in increasing order, each once; counts positive)."""
    return split(np.zeros(len(bin_codes), np.int64), np.asarray(bin_codes, np.int64), counts, 1)[0]


def of_values(values: NDArray[Any]) -> bytes:
    """The sketch of some values."""
    found, counts = np.unique(codes(values), return_counts=True)
    return encode(found, counts.astype(np.int64))


def grouped(values: NDArray[Any], groups: NDArray[np.int64], size: int) -> list[bytes]:
    """The sketch of the values of each group 0..size-1 (b"" for a group without values)."""
    keys = (groups.astype(np.int64) << _GROUP_SHIFT) + (codes(values) + _CODE_BIAS)
    unique, counts = np.unique(keys, return_counts=True)  # each value counts once: no sums to make
    return split(unique >> _GROUP_SHIFT, (unique & ((1 << _GROUP_SHIFT) - 1)) - _CODE_BIAS, counts, size)


def merge(sketches: Sequence[bytes | None], groups: Sequence[int] | NDArray[np.int64], size: int) -> list[bytes]:
    """The merge of the sketches of each group 0..size-1: `sketches[i]` belongs to `groups[i]`."""
    return split(*_bins(sketches, groups), size)


def split(group: NDArray[np.int64], code: Codes, count: NDArray[np.int64], size: int) -> list[bytes]:
    """Bins sorted by group then code, as one sketch per group 0..size-1 (b"" for a group without
    bins): the codes less each group's first and the running counts are made for all groups at
    once, in one byte string per width; each sketch is its header and its slices of those."""
    edges = np.searchsorted(group, np.arange(size + 1))
    bins = np.diff(edges)
    present = np.flatnonzero(bins)
    if not len(present):
        return [b""] * size
    firsts, lasts = edges[present], edges[present + 1] - 1
    own = np.repeat(np.arange(len(present)), bins[present])
    relative = code - code[firsts][own]
    running = np.cumsum(count, dtype=np.int64)
    running -= np.concatenate([[0], running[lasts[:-1]]])[own]
    code_width = _WIDTHS[np.searchsorted(_WIDTH_LIMITS, relative[lasts], side="right")]
    count_width = _WIDTHS[np.searchsorted(_WIDTH_LIMITS, running[lasts], side="right")]
    as_bytes = {
        (kind, width): (relative if kind == "code" else running).astype(f"<u{width}").tobytes()
        for kind, widths_of in (("code", code_width), ("count", count_width))
        for width in np.unique(widths_of).tolist()
    }
    sketches = [b""] * size
    for at, first, last, first_code, width, count_size in zip(
        present.tolist(),
        firsts.tolist(),
        (lasts + 1).tolist(),
        code[firsts].tolist(),
        code_width.tolist(),
        count_width.tolist(),
        strict=True,
    ):
        sketches[at] = b"".join(
            (
                _HEAD.pack(_MAGIC, width, count_size, _VERSION, first_code),
                as_bytes["code", width][first * width : last * width],
                as_bytes["count", count_size][first * count_size : last * count_size],
            )
        )
    return sketches


def quantiles(
    sketches: Sequence[bytes | None], groups: Sequence[int] | NDArray[np.int64], size: int, qs: Sequence[float]
) -> NDArray[np.float64]:
    """For each group 0..size-1, the quantiles `qs` of the merge of its sketches, shape (size,
    len(qs)); NaN where a group holds no value (the caller reports null).

    Where every group holds at most one sketch, each quantile is a binary search of the running
    counts in that sketch's bytes: `_SEARCH_STEPS` reads per sketch and quantile, however many
    bins it holds. Otherwise all the bins are read, concatenated in group order and, only where a
    group holds more than one sketch, sorted by code within it (a bin's rank needs no merge of
    equal codes)."""
    layout = _Layout.of(sketches)
    group = np.asarray(groups, dtype=np.int64)
    answer = np.full((size, len(qs)), np.nan)
    sizes = np.bincount(group[layout.bins > 0], minlength=size) if len(group) else np.zeros(size, np.int64)
    if not np.any(sizes > 1):
        searched = (layout.bins > 0) & layout.running
        answer[group[searched]] = layout.searched(np.flatnonzero(searched), qs)
        rest = np.flatnonzero((layout.bins > 0) & ~layout.running)  # sketches of layout 0
        if not len(rest):
            return answer
        layout, group = layout.subset(rest), group[rest]
    bin_group, code, count = _ordered(layout, group)
    if not len(bin_group):
        return answer
    totals = np.bincount(bin_group, weights=count, minlength=size).astype(np.int64)
    first = np.searchsorted(bin_group, np.arange(size))  # each group's first bin
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


class _Layout:
    """Some sketches' bytes, concatenated, and where each one's bins are in them."""

    def __init__(self, raw: NDArray[np.uint8], offsets: NDArray[np.int64], lengths: NDArray[np.int64]) -> None:
        self.raw, self.offsets = raw, offsets  # `raw` ends in 8 zero bytes past the last sketch
        head = raw[offsets[:, None] + np.arange(4)].astype(np.int64)
        # The running-count layout: a header whose fourth byte is the version (see the module).
        self.running = (lengths >= _HEADER) & (head[:, 0] == _MAGIC) & (head[:, 3] == _VERSION)
        self.code_width = np.where(self.running, head[:, 1], 4)
        self.count_width = np.where(self.running, head[:, 2], 8)
        self.bins = np.where(
            self.running, (lengths - _HEADER) // (self.code_width + self.count_width), lengths // BIN.itemsize
        )
        self.base = np.where(self.running, _signed(_read(raw, offsets + 4, 4)), 0)

    @classmethod
    def of(cls, sketches: Sequence[bytes | None]) -> _Layout:
        blobs = [b"" if sketch is None else sketch for sketch in sketches]
        lengths = np.fromiter((len(blob) for blob in blobs), dtype=np.int64, count=len(blobs))
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(blobs) else lengths
        return cls(np.frombuffer(b"".join([*blobs, bytes(8)]), dtype=np.uint8), offsets, lengths)

    def subset(self, which: NDArray[np.int64]) -> _Layout:
        layout = object.__new__(_Layout)
        layout.raw, layout.offsets = self.raw, self.offsets[which]
        for name in ("running", "code_width", "count_width", "bins", "base"):
            setattr(layout, name, getattr(self, name)[which])
        return layout

    def kinds(self, sketches: NDArray[np.int64]) -> list[tuple[NDArray[np.bool_], bool, int, int]]:
        """`sketches` by how their bins are stored: for each kind among them (a store holds one or
        a few), which of them (a mask), whether of the running-count layout, the code width and the
        count width."""
        kind = self.running[sketches] * 100 + self.code_width[sketches] * 10 + self.count_width[sketches]
        return [(kind == this, this >= 100, this // 10 % 10, this % 10) for this in np.unique(kind).tolist()]

    def searched(self, sketches: NDArray[np.int64], qs: Sequence[float]) -> NDArray[np.float64]:
        """The quantiles `qs` of each of `sketches` (of the running-count layout, not empty), by
        binary search of its running counts: shape (len(sketches), len(qs))."""
        answer = np.empty((len(sketches), len(qs)))
        fractions = np.asarray(qs, dtype=np.float64)
        for mask, _, code_width, count_width in self.kinds(sketches):
            these = sketches[mask]
            which = np.repeat(these, len(qs))
            codes_at = self.offsets[which] + _HEADER
            counts_at = codes_at + self.bins[which] * code_width
            high = self.bins[which] - 1
            total = _read(self.raw, counts_at + high * count_width, count_width)
            rank = np.floor((total - 1) * np.tile(fractions, len(these))).astype(np.int64)
            low = np.zeros(len(which), np.int64)
            for _ in range(_SEARCH_STEPS):  # the first bin whose running count passes the rank
                middle = (low + high) >> 1
                past = _read(self.raw, counts_at + middle * count_width, count_width) > rank
                low, high = np.where(past, low, middle + 1), np.where(past, middle, high)
            found = self.base[which] + _read(self.raw, codes_at + low * code_width, code_width)
            answer[mask] = value(found).reshape(len(these), len(qs))
        return answer

    def decoded(self) -> tuple[NDArray[np.int64], Codes, NDArray[np.int64]]:
        """Every bin: (its sketch, its code, its count), in sketch then code order; the bytes of
        each kind of sketch are gathered and read as one array of that kind's widths."""
        sketch = np.repeat(np.arange(len(self.bins), dtype=np.int64), self.bins)
        code, count = np.empty(len(sketch), np.int64), np.empty(len(sketch), np.int64)
        for mask, running, code_width, count_width in self.kinds(np.arange(len(self.bins), dtype=np.int64)):
            offsets, bins = self.offsets[mask], self.bins[mask]
            at = mask[sketch]
            if running:
                codes_at = offsets + _HEADER
                found = _spans(self.raw, codes_at, bins * code_width).view(f"<u{code_width}")
                code[at] = np.repeat(self.base[mask], bins) + found
                stored = _spans(self.raw, codes_at + bins * code_width, bins * count_width).view(f"<u{count_width}")
                stored = stored.astype(np.int64)
                # the first bin of each sketch counts from 0, each other one from the bin before it
                first = np.arange(len(stored)) == np.repeat(np.cumsum(bins) - bins, bins)
                count[at] = stored - np.where(first, 0, np.concatenate([[0], stored[:-1]]))
            else:
                found = _spans(self.raw, offsets, bins * BIN.itemsize).view(BIN)
                code[at], count[at] = found["code"], found["count"]
        return sketch, code, count


def _spans(raw: NDArray[np.uint8], starts: NDArray[np.int64], lengths: NDArray[np.int64]) -> NDArray[np.uint8]:
    """The bytes raw[starts[i] : starts[i] + lengths[i]] of every i, one after another."""
    total = int(lengths.sum())
    if len(starts) == 1 or total == 0:
        return raw[int(starts[0]) : int(starts[0]) + total] if len(starts) else raw[:0]
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return raw[shift + np.arange(total)]


def _read(raw: NDArray[np.uint8], at: NDArray[np.int64], width: int) -> NDArray[np.int64]:
    """The little-endian unsigned integers of `width` bytes at byte offsets `at` of `raw`."""
    found = raw[at] if width == 1 else raw[at[:, None] + np.arange(width)].view(f"<u{width}")[:, 0]
    return np.asarray(found, dtype=np.int64)


def _signed(found: NDArray[np.int64]) -> NDArray[np.int64]:
    """Unsigned 32-bit values as the int32 they encode."""
    return np.where(found >= 1 << 31, found - (1 << 32), found)


def _ordered(layout: _Layout, groups: NDArray[np.int64]) -> tuple[NDArray[np.int64], Codes, NDArray[np.int64]]:
    """Every bin of the sketches with its sketch's group, sorted by group then code (equal codes
    of one group's sketches stay apart)."""
    sketch, code, count = layout.decoded()
    group = groups[sketch]
    if len(group) > 1 and np.any(np.diff((group << _GROUP_SHIFT) + (code + _CODE_BIAS)) < 0):
        order = np.argsort((group << _GROUP_SHIFT) + (code + _CODE_BIAS), kind="stable")
        group, code, count = group[order], code[order], count[order]
    return group, code, count


def _bins(
    sketches: Sequence[bytes | None], groups: Sequence[int] | NDArray[np.int64]
) -> tuple[NDArray[np.int64], Codes, NDArray[np.int64]]:
    """Every bin of the sketches, each with its sketch's group, summed per (group, code) and
    sorted by group then code: one pass over all of them, however many sketches."""
    sketch, code, count = _Layout.of(sketches).decoded()
    return _summed(np.asarray(groups, dtype=np.int64)[sketch], code, count)


def _summed(
    group: NDArray[np.int64], code: Codes, count: NDArray[np.int64]
) -> tuple[NDArray[np.int64], Codes, NDArray[np.int64]]:
    keys = (group << _GROUP_SHIFT) + (code + _CODE_BIAS)
    if not len(keys):
        return keys, keys, np.zeros(0, np.int64)
    # The bins come as runs already in order (each sketch's, by code): a stable sort merges the runs.
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    unique = ordered[starts]
    summed = np.add.reduceat(np.asarray(count, np.int64)[order], starts)
    return unique >> _GROUP_SHIFT, (unique & ((1 << _GROUP_SHIFT) - 1)) - _CODE_BIAS, summed
