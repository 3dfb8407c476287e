"""JSON bodies read by simdjson, with their arrays of numbers going straight to NumPy.

orjson builds a Python float and a list slot for every number, and NumPy then copies them out:
for large bodies that is most of a request's time, and for small ones about half of the body's
parse and validation (docs/performance.md). simdjson parses the same text into its tape, and
`as_buffer` copies an array's numbers out of the tape as doubles (or int64) without
a Python object per number.

Only bodies this module can read exactly are read here; for anything else `loads_with_arrays`
returns None and the caller's ordinary parser reads the body and names what is wrong in it:
not JSON (NaN and Infinity literals included), a repeated key, an escape sequence, nesting
deeper than two levels in an array of numbers, booleans or nulls among numbers, integers out
of int64's range, an object with more than `_MAX_KEYS` keys.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import simdjson

# From this many bytes on (a dozen rows of ten numbers), simdjson's parse and its copy straight to
# NumPy cost less than orjson's Python numbers and NumPy's conversion of them; below, orjson is
# ahead (parse and validation of a /v1/loss body, measured: docs/performance.md).
SIMDJSON_BYTES = 2 * 1024
# Below this many bytes, bytes.count counts fast enough (in `structure(body)`, for the bytes numbers
# are not written with); from it on, NumPy (for common bytes) or memchr (for rare ones) count faster.
SMALL_BODY_BYTES = 64 * 1024
_MAX_DEPTH = 64
# simdjson finds a key by scanning its object, so reading an object key by key costs its size
# squared; an object with more keys than this (options with thousands of names) goes to orjson.
_MAX_KEYS = 128


class _UnusualBodyError(Exception):
    """The body needs the ordinary parser."""


def loads_with_arrays(body: bytes, array_keys: frozenset[str]) -> Any | None:
    """The JSON document in `body`, with the value of every key in `array_keys` (at any depth) a
    NumPy array: int64 when all its numbers are integers, else float64, as `np.array` makes it of
    the list orjson would return. None when the body is not one this reader can vouch for (see
    the module's docstring), or such a value is not a non-empty array of numbers of one or two
    dimensions."""
    if b"\\" in body:
        return None  # an escape could spell a quote or a bracket that the counts below miss
    try:
        parser = simdjson.Parser()
        document = parser.parse(body)
    except (ValueError, RuntimeError):  # not JSON; RuntimeError: nested beyond simdjson's 1,024 levels
        return None
    counts = _Counts()
    try:
        data = _convert(document, array_keys, counts, 0)
    except _UnusualBodyError:
        return None
    # Every array in the text opens with a bracket: arrays of numbers flattened by `as_buffer` could
    # hide a nested one (`[[1, [2]], [3, 4]]` flattens as `[[1, 2], [3, 4]]`), which this catches.
    if occurrences(body, b"[") != counts.brackets:
        return None
    return data


# Under glibc's mmap threshold (128 KiB by default): a larger temporary is mapped and unmapped for
# every block, and page-faulted in each time.
_BLOCK = 64 * 1024


# What numbers are written with, and the spaces between them: most of a small body of arrays, and
# none of the structure that is counted in it (quotes, commas, brackets, the letters of literals).
_NUMBER_BYTES = b"0123456789.+- "


_remembered: tuple[bytes | memoryview, bytes] = (b"", b"")


def structure(text: bytes | memoryview) -> bytes:
    """`text` without the bytes that numbers are written with, for counting in a small body: 32 x 10
    numbers in 6.5 KB leave 0.5 KB, and deleting them once costs less than counting each byte
    over the whole body for every count (docs/performance.md). Quotes, commas and brackets are all kept, so
    their counts are the body's; a word can only gain occurrences (a string's "t1rue" becomes
    "true"), never lose any.

    The last text's is remembered (by identity, which the reference held keeps unique): the
    memory estimate, the literal count and the reader's bracket check each ask about one body."""
    global _remembered
    last, rest = _remembered
    if last is text:
        return rest
    rest = (text if isinstance(text, bytes) else bytes(text)).translate(None, _NUMBER_BYTES)
    _remembered = (text, rest)  # one assignment: a thread reading it sees the old pair or the new
    return rest


def occurrences(text: bytes | memoryview, char: bytes) -> int:
    """`text.count(char)` for one byte that numbers are not written with (a quote, a comma, a
    bracket, a letter other than e and E): below SMALL_BODY_BYTES counted in `structure(text)`,
    from it on by NumPy, faster than `bytes.count` on large bodies. A block at a time, so
    the comparison's temporary stays that size whatever the body's."""
    if char in _NUMBER_BYTES:
        raise ValueError(f"{char!r} is a byte numbers are written with; count it with bytes.count")
    if len(text) < SMALL_BODY_BYTES:
        return structure(text).count(char)
    view, code = np.frombuffer(text, dtype=np.uint8), ord(char)
    return sum(int(np.count_nonzero(view[start : start + _BLOCK] == code)) for start in range(0, view.size, _BLOCK))


_SCALARS = frozenset({str, int, float, bool, type(None)})


class _Counts:
    __slots__ = ("brackets",)

    def __init__(self) -> None:
        self.brackets = 0


def _convert(value: Any, array_keys: frozenset[str], counts: _Counts, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _UnusualBodyError
    if isinstance(value, simdjson.Object):
        if len(value) > _MAX_KEYS:
            raise _UnusualBodyError
        converted: dict[str, Any] = {}
        for key in value.keys():  # noqa: SIM118 - a repeated key appears twice here, and only here
            if key in converted:
                raise _UnusualBodyError
            counts.brackets += key.count("[")
            item = value[key]
            if key in array_keys and isinstance(item, simdjson.Array):
                numbers = _numbers(item)
                if numbers is None:
                    raise _UnusualBodyError
                counts.brackets += 1 + (len(item) if numbers.ndim == 2 else 0)
                converted[key] = numbers
            else:
                converted[key] = _convert(item, array_keys, counts, depth + 1)
        return converted
    if isinstance(value, simdjson.Array):
        counts.brackets += 1
        if depth < _MAX_DEPTH and len(value) and not isinstance(value[0], (simdjson.Array, simdjson.Object)):
            # Most likely a flat array of strings or numbers (row ids): converted in one call.
            items = value.as_list()
            if all(type(item) in _SCALARS for item in items):
                counts.brackets += "".join([item for item in items if type(item) is str]).count("[")
                return items
        return [_convert(item, array_keys, counts, depth + 1) for item in value]
    if isinstance(value, str):
        counts.brackets += value.count("[")
    return value


def _numbers(array: Any) -> np.ndarray[Any, Any] | None:
    """The array as NumPy if it is a non-empty rectangular array of numbers, 1-D or 2-D."""
    rows = len(array)
    if rows == 0:
        return None
    first = array[0]
    leaf: Any
    if isinstance(first, simdjson.Array):
        width = len(first)
        try:  # `len` of a number raises; of a string or an object, `as_buffer` below refuses it
            if width == 0 or set(map(len, array)) != {width}:
                return None
        except TypeError:
            return None
        count, leaf = rows * width, first[0]
    elif isinstance(first, (int, float)) and not isinstance(first, bool):
        width, count, leaf = 0, rows, first
    else:
        return None
    dtype: type[np.generic]
    try:
        # A float first: not all integers, and asking for them would fail only at the cost of an
        # exception, a large share of a small body's read.
        if isinstance(leaf, float):
            raise TypeError
        buffer, dtype = array.as_buffer(of_type="i"), np.int64
    except TypeError:  # not all integers
        try:
            buffer, dtype = array.as_buffer(of_type="d"), np.float64
        except (TypeError, ValueError):  # booleans, nulls, strings, objects among the numbers
            return None
    except ValueError:  # an integer beyond int64: NumPy would not make it int64 either
        return None
    numbers = np.frombuffer(buffer, dtype=dtype)
    if numbers.size != count:
        return None
    return numbers.reshape((rows, width)) if width else numbers
