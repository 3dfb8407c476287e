"""JSON bodies: parsed once, repeated keys refused, arrays straight to NumPy, validated."""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from service.server.api.arrays import BOOLEANS_PRESENT, MAX_ELEMENTS, NumericArray
from service.server.api.body.formats import ARRAY_FIELDS
from service.server.api.errors import validation_problem
from service.server.api.json_arrays import SIMDJSON_BYTES, SMALL_BODY_BYTES, loads_with_arrays, structure
from service.server.api.problems import ProblemError, clipped, shown

_ARRAY_KEYS = frozenset(ARRAY_FIELDS)


def _booleans_outside_arrays(data: Any) -> int:
    """Booleans anywhere in `data` except the top-level array fields; iterative, so no nesting
    depth a client sends can exhaust the interpreter's stack."""
    pending = [data] if not isinstance(data, dict) else [v for k, v in data.items() if k not in ARRAY_FIELDS]
    found = 0
    while pending:
        value = pending.pop()
        if isinstance(value, bool):
            found += 1
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list) and not _all_strings(value):
            pending.extend(value)
    return found


def _all_strings(values: list[Any]) -> bool:
    """A flat list of strings (row ids): one C-level pass instead of a Python step per string."""
    return bool(values) and type(values[0]) is str and all(type(v) is str for v in values)


class RepeatedKeyError(ValueError):
    """A JSON object names the same key twice; which value the client meant is unknowable."""

    def __init__(self, path: list[str | int], key: str) -> None:
        self.path = [clipped(part) if isinstance(part, str) else part for part in (*path, key)]
        where = ".".join(str(part) for part in self.path[:-1]) or "the top-level object"
        super().__init__(f"key {shown(key)} appears more than once in {where}")


class _RepeatedKeys(dict[str, Any]):
    repeated: str


# Bodies from this size are parsed with the cyclic garbage collector paused.
COLLECTOR_PAUSE_BYTES = 1 << 20
_pauses = 0
_pauses_lock = threading.Lock()
_resume_collector = False


@contextmanager
def collector_paused(size: int) -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a large JSON body is lists.

    Every few hundred lists built start a young-generation collection that walks each list
    built so far, item by item, and from time to time a full collection walks them all: a tenth of a
    20 MB body's parse and more (docs/performance.md). Parsed JSON holds no reference cycles, so
    reference counting frees it all the same; the pause must last until the lists are freed, or
    the first collection after it walks them anyway. Concurrent parses share one pause (a count).
    """
    global _pauses, _resume_collector
    if size < COLLECTOR_PAUSE_BYTES:
        yield
        return
    with _pauses_lock:
        _pauses += 1
        if _pauses == 1:
            _resume_collector = gc.isenabled()
            gc.disable()
    try:
        yield
    finally:
        with _pauses_lock:
            _pauses -= 1
            if _pauses == 0 and _resume_collector:
                gc.enable()


def loads(body: bytes, array_keys: frozenset[str] = frozenset()) -> Any:
    """`orjson.loads` that refuses objects with a repeated key instead of keeping the last one.

    Each key and string value in the parsed tree accounts for two quote bytes in the body; a
    repeated key, an escaped quote or a string inside a skipped array leaves quotes unaccounted
    for. Only then does the exact, slower parse run, so equal counts prove no key repeats.

    From SIMDJSON_BYTES on, the values of `array_keys` that are arrays of numbers come back as
    NumPy arrays, read by simdjson without a Python object per number (`loads_with_arrays`),
    whenever that reader can vouch for the body; otherwise as lists, from orjson.
    """
    if array_keys and len(body) >= SIMDJSON_BYTES:
        fast = loads_with_arrays(body, array_keys)
        if fast is not None:
            return fast
    data = orjson.loads(body)
    if _count(body, b'"') != 2 * _strings_in(data):
        # Freed before the exact parse, which builds a tree of its own: holding both would double
        # the peak.
        del data
        refuse_repeated_keys(body)
        data = orjson.loads(body)
    return data


def _strings_in(data: Any) -> int:
    """Keys and strings in parsed JSON, skipping any array whose first leaf is a number: those are
    the megabytes of numbers, and a string hidden further in one only costs the exact parse."""
    pending, found = [data], 0
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            found += 1
        elif isinstance(value, dict):
            found += len(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            leaf = value
            while isinstance(leaf, list) and leaf:
                leaf = leaf[0]
            if _all_strings(value):
                found += len(value)
            elif not isinstance(leaf, (int, float)):
                pending.extend(value)
    return found


def _count(body: bytes, token: bytes, candidates: int = 64) -> int:
    """`body.count(token)`, found by `find` on the token's first byte, which is memchr: a body is
    megabytes of digits with a handful of quotes and letters, and `find` crosses them many times
    faster than `count` does. Past `candidates` first bytes, `count` does the work; and on a
    body under SMALL_BODY_BYTES, where it takes a microsecond or two."""
    if len(body) < SMALL_BODY_BYTES:
        return body.count(token)
    first = token[:1]
    found, seen, at = 0, 0, body.find(first)
    while at >= 0:
        seen += 1
        if seen > candidates:
            return body.count(token)
        found += body.startswith(token, at)
        at = body.find(first, at + 1)
    return found


def _literals(body: bytes) -> int:
    """At least as many as the `true` and `false` literals in `body` (more only when a string
    spells one out)."""
    if len(body) < SMALL_BODY_BYTES:
        rest = structure(body)
        return rest.count(b"true") + rest.count(b"false")
    return _count(body, b"true") + _count(body, b"false")


def refuse_repeated_keys(body: bytes) -> None:
    """Raise `RepeatedKeyError` naming the first repeated key and where it is; bodies that are not
    JSON pass, for the caller's parser to report."""
    repeated = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        built = dict(items)
        if len(built) == len(items):
            return built
        keys = [key for key, _ in items]
        marked = _RepeatedKeys(items)
        seen: set[str] = set()
        for key in keys:  # one pass with a set: linear in the keys, however many
            if key in seen:
                marked.repeated = key
                break
            seen.add(key)
        repeated = True
        return marked

    try:
        data = json.loads(body, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return
    if not repeated:
        return
    # Every object that repeats a key is in the tree: the walk reaches the first of them, whatever
    # array holds it (an object may follow numbers: `[1, {"a": 1, "a": 2}]`).
    pending: list[tuple[Any, list[str | int]]] = [(data, [])]
    while pending:
        value, path = pending.pop()
        if isinstance(value, _RepeatedKeys):
            raise RepeatedKeyError(path, value.repeated)
        if isinstance(value, dict):
            pending.extend((item, [*path, key]) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend((item, [*path, index]) for index, item in enumerate(value) if isinstance(item, (dict, list)))


# From this size on, a body is decoded one top-level field at a time (msgspec, which builds no
# intermediate document), and each array becomes NumPy before the next is decoded, so Python
# lists (a float object and a list slot per number, ~3x the text) exist for one field at a time.
# That bounds a large body's peak memory, but costs time on smaller bodies, which keep orjson's
# one-pass parse (docs/performance.md has both figures).
FIELDWISE_BYTES = 32 * 1024 * 1024
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ANY = msgspec.json.Decoder()
_ARRAY = TypeAdapter(NumericArray)


def _fieldwise(body: bytes, max_elements: int | None) -> dict[str, Any] | None:
    """The body's object with its arrays already validated NumPy arrays, or None when anything
    is unusual (not an object, malformed, NaN literals, a repeated key, an invalid array): the
    ordinary path then decodes the body again and reports precisely."""
    try:
        raw = _TOP_LEVEL.decode(body)
        small = {key: _ANY.decode(value) for key, value in raw.items() if key not in ARRAY_FIELDS}
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    tokens = _literals(body)
    context = {BOOLEANS_PRESENT: tokens > _booleans_outside_arrays(small), MAX_ELEMENTS: max_elements}
    strings = len(raw) + sum(_strings_in(value) for value in small.values())
    data: dict[str, Any] = dict(small)
    for key in [key for key in raw if key in ARRAY_FIELDS]:
        try:
            values = _ANY.decode(raw.pop(key))
        except (msgspec.DecodeError, RecursionError):
            return None
        strings += _strings_in(values)
        try:
            data[key] = _ARRAY.validate_python(values, context=context)
        except ValidationError:
            return None
        del values
    if _count(body, b'"') != 2 * strings:
        return None  # a repeated key (or an escape): the ordinary path names it
    return data


def validate_json(schema: type[BaseModel] | TypeAdapter[Any], body: bytes, max_elements: int | None = None) -> Any:
    """Parse and validate `body` (see `_validate_json`), with the collector paused until its lists are freed."""
    with collector_paused(len(body)):
        return _validate_json(schema, body, max_elements)


def _validate_json(schema: type[BaseModel] | TypeAdapter[Any], body: bytes, max_elements: int | None) -> Any:
    """Parse with orjson, validate the objects with the Pydantic models, arrays straight to NumPy.

    Bodies of FIELDWISE_BYTES and more are first tried field by field (`_fieldwise`), which
    bounds their peak memory; whatever that decoder does not accept comes back here.

    orjson builds a large body's lists several times faster than pydantic-core's JSON mode builds
    them for a validator. Bodies orjson refuses are parsed by
    pydantic-core instead: it reports malformed JSON precisely and reads NaN, Infinity and 1e400,
    which the array validator then refuses by field and index instead of a vague 400.
    """
    data: Any = _fieldwise(body, max_elements) if len(body) >= FIELDWISE_BYTES else None
    if data is not None:
        try:  # its arrays were held to the element limit before they became NumPy
            if isinstance(schema, TypeAdapter):
                return schema.validate_python(data)
            return schema.model_validate(data)
        except ValidationError as exc:
            raise validation_problem(exc) from None
    tokens = _literals(body)
    context: dict[str, Any] = {BOOLEANS_PRESENT: tokens > 0, MAX_ELEMENTS: max_elements}
    try:
        try:
            data = loads(body, _ARRAY_KEYS)
        except orjson.JSONDecodeError:
            refuse_repeated_keys(body)  # pydantic-core, like orjson, would keep the last value
            if isinstance(schema, TypeAdapter):
                return schema.validate_json(body, context=context)
            return schema.model_validate_json(body, context=context)
        # Booleans in the small fields (options, chunk) account for their tokens; only tokens left
        # over can be booleans inside the arrays, which need the exact per-element walk.
        context[BOOLEANS_PRESENT] = tokens > _booleans_outside_arrays(data)
        if isinstance(schema, TypeAdapter):
            return schema.validate_python(data, context=context)
        return schema.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_problem(exc) from None
    except RepeatedKeyError as exc:
        loc = ["body", *exc.path]
        raise ProblemError(422, str(exc), errors=[{"loc": loc, "msg": "repeated key"}]) from None
