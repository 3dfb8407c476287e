"""Arrow IPC stream bodies: what could expand from a few bytes refused before any column is decoded."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from service.server.api.problems import ProblemError, clipped, shown
from service.values.columns import as_array


def arrow_arrays(body: bytes) -> dict[str, np.ndarray[Any, Any]]:
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
