"""The quantile sketch's stored layout and answers (service/values/sketch.py), against a naive
reader of the layout its docstring describes and NumPy's exact order statistics."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest

from service.values import sketch

GAMMA = 1.01 / 0.99


def naive_bins(values: np.ndarray[Any, Any]) -> dict[int, int]:
    """Each value's bin code, one value at a time: 0 below 1e-300, +-(2^16 + ceil(log_gamma |x|))."""
    bins: dict[int, int] = {}
    for x in values.tolist():
        code = 0 if abs(x) < 1e-300 else int(math.copysign(2**16 + math.ceil(math.log(abs(x)) / math.log(GAMMA)), x))
        bins[code] = bins.get(code, 0) + 1
    return bins


def read_layout(blob: bytes) -> dict[int, int]:
    """A sketch of the running-count layout, byte by byte: 'D', code width, count width, version 1,
    the first code (int32); the codes less the first; the running counts."""
    assert blob[0] == ord("D")
    assert blob[3] == 1
    code_width, count_width = blob[1], blob[2]
    (first,) = struct.unpack("<i", blob[4:8])
    n = (len(blob) - 8) // (code_width + count_width)
    assert len(blob) == 8 + n * (code_width + count_width)
    codes = [first + int.from_bytes(blob[8 + i * code_width : 8 + (i + 1) * code_width], "little") for i in range(n)]
    at = 8 + n * code_width
    running = [int.from_bytes(blob[at + i * count_width : at + (i + 1) * count_width], "little") for i in range(n)]
    return dict(zip(codes, np.diff([0, *running]).tolist(), strict=True))


def layout_0(bins: dict[int, int]) -> bytes:
    """Layout 0: each bin a little-endian int32 code and int64 count, in code order."""
    return b"".join(struct.pack("<iq", code, count) for code, count in sorted(bins.items()))


def samples(rng: np.random.Generator) -> list[np.ndarray[Any, Any]]:
    return [
        rng.normal(size=50) ** 2,
        rng.lognormal(0, 4, 3000),  # codes spanning more than 255: two-byte codes
        -rng.lognormal(0, 1, 400),
        np.concatenate([rng.normal(size=300), np.zeros(5), [1e-310]]),  # both signs and the zero bin
        np.repeat(rng.uniform(1, 2, 7), 20_000),  # counts past 65,535: four-byte running counts
        np.array([3.0]),
    ]


def test_a_sketch_is_stored_in_the_documented_layout_with_the_fewest_bytes() -> None:
    for values in samples(np.random.default_rng(1)):
        blob = sketch.of_values(values)
        assert read_layout(blob) == naive_bins(values)
        codes = sorted(naive_bins(values))
        widest = max(codes[-1] - codes[0], 0)
        assert blob[1] == next(w for w in (1, 2, 4) if widest < 256**w)
        assert blob[2] == next(w for w in (1, 2, 4, 8) if len(values) < 256**w)
    assert sketch.of_values(np.array([])) == b""


@pytest.mark.parametrize("layouts", ["running", "layout 0", "mixed"])
def test_quantiles_are_within_one_percent_whichever_layout_holds_the_sketches(layouts: str) -> None:
    rng = np.random.default_rng(2)
    values = samples(rng)
    qs = (0.0, 0.5, 0.9, 0.99, 1.0)
    for merged in (False, True):
        # one sketch per group, or each group's values in three sketches (a merge)
        parts = [np.array_split(v, 3) if merged else [v] for v in values]
        blobs, groups = [], []
        for group, pieces in enumerate(parts):
            for i, piece in enumerate(pieces):
                zero = layouts == "layout 0" or (layouts == "mixed" and (group + i) % 2 == 0)
                blobs.append(layout_0(naive_bins(piece)) if zero else sketch.of_values(piece))
                groups.append(group)
        blobs.append(None)  # a cell without values
        groups.append(len(values))
        order = rng.permutation(len(blobs))  # groups in any order
        got = sketch.quantiles([blobs[i] for i in order], np.array(groups)[order], len(values) + 2, qs)
        for group, v in enumerate(values):
            expected = np.quantile(v, qs, method="lower")
            assert np.all(np.abs(got[group] - expected) <= 0.01 * np.abs(expected) + 1e-300), (group, merged)
        assert np.isnan(got[len(values) :]).all()


def test_merging_sketches_of_either_layout_adds_their_bins() -> None:
    rng = np.random.default_rng(3)
    a, b, c = rng.lognormal(0, 3, 500), rng.normal(size=200), rng.lognormal(0, 3, 70)
    blobs = [layout_0(naive_bins(a)), sketch.of_values(b), sketch.of_values(c), None]
    merged = sketch.merge(blobs, np.array([0, 0, 1, 1]), 3)
    assert read_layout(merged[0]) == naive_bins(np.concatenate([a, b]))
    assert read_layout(merged[1]) == naive_bins(c)
    assert merged[2] == b""


def test_a_quantile_reads_as_many_stored_numbers_for_a_thousand_times_the_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The running counts are searched, not read through: the numbers a quantile reads from a
    sketch's bytes are as many whether it holds 10 bins or 1,000."""
    reads: list[int] = []
    original = sketch._read

    def counting(raw: Any, at: Any, width: int) -> Any:
        reads.append(len(at))
        return original(raw, at, width)

    monkeypatch.setattr(sketch, "_read", counting)
    rng = np.random.default_rng(4)
    counted = []
    for n in (30, 30_000):
        blobs = [sketch.of_values(rng.lognormal(0, 3, n)) for _ in range(20)]
        reads.clear()
        sketch.quantiles(blobs, np.arange(20), 20, (0.5, 0.9, 0.99))
        counted.append(sum(reads))
    assert counted[0] == counted[1] > 0
