"""Reading request bodies: content type, raw bytes, one validation pass.

JSON bodies carry every field. Binary bodies (npz, Arrow IPC stream) carry the arrays
`predictions`, `labels` and optionally `sample_weight`; the other fields come as query
parameters, `options` as a JSON object. Both go through the same Pydantic models.
"""

from __future__ import annotations

import gc
import io
import json
import math
import struct
import threading
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec
import numpy as np
import orjson
from fastapi import Request
from isal.isal_zlib import crc32  # ISA-L's CRC-32: 0.63 against zlib's 2.15 ms per 8 MB
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect

from service.api.arrays import BOOLEANS_PRESENT, MAX_ELEMENTS, NumericArray
from service.api.errors import validation_problem
from service.api.headers import byte_count, request_header
from service.api.json_arrays import SIMDJSON_BYTES, SMALL_BODY_BYTES, loads_with_arrays, occurrences, structure
from service.api.problems import ProblemError, clipped, shown
from service.columns import as_array

JSON_MEDIA_TYPE = "application/json"
NPZ_MEDIA_TYPE = "application/x-npz"
ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
BATCH_MEDIA_TYPES = (JSON_MEDIA_TYPE, NPZ_MEDIA_TYPE, ARROW_MEDIA_TYPE)
ARRAY_FIELDS = ("predictions", "labels", "sample_weight")
_ARRAY_KEYS = frozenset(ARRAY_FIELDS)
T = TypeVar("T")


async def received_body(request: Request) -> bytes:
    """`await request.body()`, without Starlette's async generator and its closing context (~7 us
    of a 32 x 10 /v1/loss request in-process): the same messages read, the same ClientDisconnect
    when the client leaves first, and a body of one chunk is that chunk, not a copy (Starlette's
    generator ends with an empty chunk, so its join copied). The body is kept where
    `request.body()` looks for it, for anything that asks again."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    body = b"".join(chunks)  # one chunk: join returns that very object
    request._body = body  # Starlette's own cache of the body
    return body


async def read_body(request: Request, accepted: tuple[str, ...] = (JSON_MEDIA_TYPE,)) -> tuple[str, bytes]:
    media_type = (request_header(request.scope, b"content-type") or "").split(";")[0].strip().lower()
    if media_type not in accepted:
        shown = media_type or "none"
        raise ProblemError(415, f"Content-Type must be {' or '.join(accepted)}, got {shown}")
    body = await received_body(request)
    if not body or body.isspace():  # strip() would copy the body to say the same
        raise ProblemError(400, "the request body is empty")
    return media_type, body


# Binary tensors after a JSON header of any length are placed on this boundary as they arrive.
TENSOR_ALIGNMENT = 64
Body = bytes | memoryview  # memoryview: received with its tensors aligned (read_body_aligned)


async def read_body_aligned(request: Request, offset: int) -> Body:
    """The body, received into a buffer where byte `offset` starts a 64-byte boundary.

    Open Inference Protocol tensors follow a JSON header of any length, so in a plain bytes body
    they are rarely aligned for their dtype, and NumPy's loops over misaligned data are slower:
    10,000 x 100 cross-entropy took 4.0-4.2 against 3.5-3.7 ms in float32 (finiteness check and
    compute), 9.1-9.2 against 8.4-8.5 ms in float64. Receiving into an aligned buffer copies
    each chunk once, as joining them into bytes does. Without a Content-Length (a chunked body,
    or a gzip one, which BodyLimit inflates), or with `offset` beyond it, the plain body.
    """
    length = byte_count(request_header(request.scope, b"content-length"))
    if length is None or not 0 <= offset <= length:
        return await received_body(request)
    buffer = np.empty(length + TENSOR_ALIGNMENT, dtype=np.uint8)
    start = -(buffer.ctypes.data + offset) % TENSOR_ALIGNMENT
    body = memoryview(buffer.data)[start : start + length]
    received = 0
    async for chunk in request.stream():
        end = received + len(chunk)
        if end > length:
            raise ProblemError(400, f"the body is longer than its Content-Length ({length:,} bytes)")
        body[received:end] = chunk
        received = end
    if received != length:
        raise ProblemError(400, f"the body ended after {received:,} of its Content-Length {length:,} bytes")
    return body


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
    built so far, item by item: for a 20 MB body (10^4 rows of 100) that was ~15 ms of 122, and
    an occasional full collection added ~45 ms. Parsed JSON holds no reference cycles, so
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
        # Freed before the exact parse, which builds a tree of its own: holding both doubled the
        # peak (a 64 MB body with one escaped quote in a key: 1.51 GB instead of 634 MB).
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
    megabytes of digits with a handful of quotes and letters, and `find` crosses 20 MB in 0.5 ms
    where `count` takes 6-14 ms. Past `candidates` first bytes, `count` does the work; and on a
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
        for key in keys:  # one pass with a set: `key in keys[:index]` took ~55 s of CPU for 64K keys
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


def validate_binary(
    schema: TypeAdapter[Any], media_type: str, body: bytes, query: Mapping[str, str], max_elements: int | None = None
) -> Any:
    """A binary body's arrays plus the query's fields, validated like a JSON body."""
    arrays = _npz_arrays(body, max_elements) if media_type == NPZ_MEDIA_TYPE else _arrow_arrays(body)
    unexpected = sorted(set(arrays) - set(ARRAY_FIELDS))
    if unexpected:
        raise ProblemError(
            422,
            f"body: unexpected array {shown(unexpected[0])}; expected {', '.join(ARRAY_FIELDS)}",
            errors=[
                {
                    "loc": ["body", clipped(unexpected[0])],
                    "msg": f"unexpected array; expected {', '.join(ARRAY_FIELDS)}",
                }
            ],
        )
    fields: dict[str, Any] = {key: value for key, value in query.items() if key not in ARRAY_FIELDS}
    for key in ("options", "chunk"):  # a JSON object and a JSON boolean, written in the query
        if key in fields:
            try:
                fields[key] = orjson.loads(fields[key])
            except orjson.JSONDecodeError as exc:
                raise ProblemError(400, f"query parameter {key}: malformed JSON: {exc}") from None
    try:
        return schema.validate_python({**fields, **arrays}, context={MAX_ELEMENTS: max_elements})
    except ValidationError as exc:
        problem = validation_problem(exc)
        for error in problem.errors or []:
            if error["loc"][1] not in ARRAY_FIELDS:
                error["loc"][0] = "query"  # with a binary body, every other field is a query parameter
        raise problem from None


# What reading a malformed archive raises: zipfile raises RuntimeError for an encrypted member and
# NotImplementedError for a compression method it lacks.
NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError)


def _npz_arrays(body: bytes, max_elements: int | None = None) -> dict[str, np.ndarray[Any, Any]]:
    if not body.startswith(b"PK"):
        raise ProblemError(400, "malformed npz: not a zip archive (an npz body starts with the bytes PK)")
    try:
        if max_elements is not None:
            _check_declared_sizes(body, max_elements)
        stored = _stored_npz_arrays(body)
        if stored is not None:
            return stored
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except NPZ_ERRORS as exc:
        raise ProblemError(400, f"malformed npz: {exc}") from None


def _check_declared_sizes(body: bytes, limit: int) -> None:
    """Refuse members whose .npy header declares more numbers than `limit`, before any is read or
    inflated: 1.5 MB of compressed zeros can declare 10^8 of them, and a header alone 10^13."""
    for name, count, _ in _declared_members(body):
        if count > limit:
            raise ProblemError(
                413, f"array {name!r} declares {count:,} numbers; the limit is {limit:,} (LOSS_SERVICE_MAX_ELEMENTS)"
            )


def _declared_members(body: bytes) -> Iterator[tuple[str, int, int]]:
    """(name, numbers, bytes per number) of each .npy member, from its header alone; members
    without a readable .npy header are skipped, for np.load to refuse."""
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        for member in archive.infolist():
            with archive.open(member) as raw:
                header = io.BytesIO(raw.read(65_536))  # .npy headers are far shorter
            try:
                read = _npy_header(header)
            except ValueError:
                continue  # not an .npy member: np.load refuses it
            if read is None:
                continue  # np.load reads or refuses the others
            shape, _, dtype = read
            yield clipped(member.filename.removesuffix(".npy")), math.prod(shape), dtype.itemsize


def _npy_header(header: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]] | None:
    """(shape, Fortran order, dtype) of a format 1.0 or 2.0 .npy header, read from `header`,
    which is left at the start of the data; None for another version."""
    version = np.lib.format.read_magic(header)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(header)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(header)
    return None


# Parsing a JSON body holds, at its peak, up to this much per number and per array in its text
# (a Python float, its list slot, list objects, the NumPy copies): the upper bounds measured by
# tests/test_budget.py over flat bodies, rows, one-element rows, integers and short decimals.
JSON_BYTES_PER_NUMBER = 96
JSON_BYTES_PER_ARRAY = 96
# And per object and per key (counted by its colon): a dict, and a key's string and dict slot
# (with the dict's growth), measured over lists of small objects and objects of many keys.
JSON_BYTES_PER_OBJECT = 128
JSON_BYTES_PER_KEY = 160


def decoded_bytes(media_type: str, body: Body) -> int:
    """An upper bound on the memory that parsing and validating `body` holds, the body included.

    Counting commas and brackets (`occurrences`, ~0.1 ms per MB) is what tells a body of one-element
    rows (20x its size once parsed) from one of long rows (1.3x).
    """
    if media_type == JSON_MEDIA_TYPE:
        return json_decoded_bytes(body)
    if media_type == NPZ_MEDIA_TYPE:
        try:
            declared = sum(count * itemsize for _, count, itemsize in _declared_members(bytes(body)))
        except NPZ_ERRORS:
            declared = 0  # malformed: the parser refuses it
        return len(body) + 2 * declared  # inflated, then an aligned or converted copy
    return 2 * len(body)  # Arrow: uncompressed columns are views of the body, plus a conversion


def json_decoded_bytes(text: Body) -> int:
    """`decoded_bytes` of JSON text."""
    numbers = occurrences(text, b",") + 1
    return (
        len(text)
        + JSON_BYTES_PER_NUMBER * numbers
        + JSON_BYTES_PER_ARRAY * occurrences(text, b"[")
        + JSON_BYTES_PER_OBJECT * occurrences(text, b"{")
        + JSON_BYTES_PER_KEY * occurrences(text, b":")
    )


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (fixed fields), name length, extra length


def _stored_npz_arrays(body: bytes) -> dict[str, np.ndarray[Any, Any]] | None:
    """The arrays of an uncompressed npz (what np.savez writes) as read-only views of `body`.

    np.load copies each member out of the archive (~1 ms for 8 MB, plus page faults); here the
    CRC-32 is checked over the bytes where they lie (by ISA-L, 3.4x zlib's speed) and each array
    is a view of them. Anything else (compression, another .npy version, object arrays, odd
    names) returns None for np.load, which reads or refuses it as before.
    """
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        members = archive.infolist()
    names = [member.filename.removesuffix(".npy") for member in members]
    if len(set(names)) != len(names) or not all(member.filename.endswith(".npy") for member in members):
        return None
    view = memoryview(body)
    arrays = {}
    for name, member in zip(names, members, strict=True):
        if member.compress_type != zipfile.ZIP_STORED or member.flag_bits & 0x1:  # compressed or encrypted
            return None
        local = view[member.header_offset : member.header_offset + _LOCAL_HEADER.size]
        if len(local) < _LOCAL_HEADER.size:
            return None
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(local)
        start = member.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        data = view[start : start + member.file_size]
        if signature != b"PK\x03\x04" or len(data) != member.file_size:
            return None
        if crc32(data) != member.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {member.filename!r}")
        array = _npy_view(data)
        if array is None:
            return None
        arrays[name] = array
    return arrays


def _npy_view(data: memoryview) -> np.ndarray[Any, Any] | None:
    """A .npy file's array as a view of its bytes; None for what np.load should handle."""
    header = io.BytesIO(data[:65_536])  # the header only: format 1.0/2.0 headers are far shorter
    read = _npy_header(header)
    if read is None:
        return None
    shape, fortran_order, dtype = read
    count = math.prod(shape)
    if dtype.hasobject or len(data) - header.tell() != count * dtype.itemsize:
        return None
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header.tell())
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


def _arrow_arrays(body: bytes) -> dict[str, np.ndarray[Any, Any]]:
    import pyarrow as pa

    try:
        _check_arrow_stream(body)
        table = pa.ipc.open_stream(body).read_all()
        return {name: as_array(table.column(name)) for name in table.column_names}
    # pyarrow's ArrowIOError (a buffer index out of range in a damaged stream) is an OSError.
    except (pa.ArrowException, OSError, ValueError, struct.error, IndexError) as exc:
        raise ProblemError(400, f"malformed Arrow stream: {exc}") from None


def _check_arrow_stream(body: bytes) -> None:
    """Refuse, before any column is decoded, what an Arrow stream could expand from a few bytes:
    buffer compression (98 KB of zstd held 2x10^8 zeros) and column types that are not numbers
    or lists of them (a null or dictionary column declares any length with no data). What is
    left has every value in the body, so the body limit bounds it."""
    import pyarrow as pa

    for message in pa.ipc.MessageReader.open_stream(body):
        if message.type == "schema":
            schema = pa.ipc.read_schema(message)
            for field in schema:
                if not _numeric_arrow_type(field.type):
                    raise ProblemError(
                        422,
                        f"body: Arrow column {shown(field.name)} has type {field.type}; columns must be numbers "
                        "or (fixed-size) lists of numbers",
                        errors=[{"loc": ["body", clipped(field.name)], "msg": f"unsupported Arrow type {field.type}"}],
                    )
        elif message.type == "record batch" and _arrow_compressed(message.metadata.to_pybytes()):
            raise ProblemError(
                415,
                "Arrow buffer compression (LZ4, ZSTD) is not accepted: its decoded size is unknown until it is "
                "decoded. Send the stream uncompressed, with Content-Encoding: gzip if the transfer size matters",
            )


def _numeric_arrow_type(arrow_type: Any) -> bool:
    import pyarrow.types as pt

    if pt.is_list(arrow_type) or pt.is_large_list(arrow_type) or pt.is_fixed_size_list(arrow_type):
        return _numeric_arrow_type(arrow_type.value_type)
    return bool(pt.is_integer(arrow_type) or pt.is_floating(arrow_type))


def _arrow_compressed(metadata: bytes) -> bool:
    """Whether a record batch message (its flatbuffer `Message`) declares body compression: the
    `compression` field of its RecordBatch. (Dictionary batches never get here: a dictionary
    column is refused with the schema.)"""
    root = _U32.unpack_from(metadata, 0)[0]
    batch = _flatbuffer_table(metadata, root, 2)  # Message.header
    return _flatbuffer_field(metadata, batch, 3) is not None  # RecordBatch.compression


_U32, _I32, _U16 = struct.Struct("<I"), struct.Struct("<i"), struct.Struct("<H")


def _flatbuffer_field(buffer: bytes, table: int, index: int) -> int | None:
    """Where field `index` of the flatbuffer table at `table` lies, or None when it is absent."""
    vtable = table - _I32.unpack_from(buffer, table)[0]
    if 4 + 2 * index >= _U16.unpack_from(buffer, vtable)[0]:
        return None
    offset = _U16.unpack_from(buffer, vtable + 4 + 2 * index)[0]
    return table + offset if offset else None


def _flatbuffer_table(buffer: bytes, table: int, index: int) -> int:
    """The table that field `index` of the table at `table` refers to."""
    field = _flatbuffer_field(buffer, table, index)
    if field is None:
        raise ValueError("an Arrow message without its header")
    return field + int(_U32.unpack_from(buffer, field)[0])


# From this size on, a body is decoded one top-level field at a time (msgspec, which builds no
# intermediate document), and each array becomes NumPy before the next is decoded, so Python
# lists (a float object and a list slot per number, ~3x the text) exist for one field at a time.
# Measured: a 100 MB body peaks at 3.8x its size instead of 6.6x, but a 20 MB body parses in
# 141 ms instead of 128, so smaller bodies keep orjson's one-pass parse.
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

    orjson builds a 1e6-number body's lists ~4x faster than pydantic-core's JSON mode builds them
    for a validator (measured: 93 ms against 478 ms for 20 MB). Bodies orjson refuses are parsed by
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
