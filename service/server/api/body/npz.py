"""npz bodies: declared sizes checked before anything is inflated, stored arrays read in place."""

from __future__ import annotations

import io
import math
import struct
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from isal.isal_zlib import crc32  # ISA-L's CRC-32, several times zlib's speed

from service.server.api.problems import ProblemError, clipped

# What reading a malformed archive raises: zipfile raises RuntimeError for an encrypted member and
# NotImplementedError for a compression method it lacks.
NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError)


def npz_arrays(body: bytes, max_elements: int | None = None) -> dict[str, np.ndarray[Any, Any]]:
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
    for name, count, _ in declared_members(body):
        if count > limit:
            raise ProblemError(
                413, f"array {name!r} declares {count:,} numbers; the limit is {limit:,} (LOSS_SERVICE_MAX_ELEMENTS)"
            )


def declared_members(body: bytes) -> Iterator[tuple[str, int, int]]:
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


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (fixed fields), name length, extra length


def _stored_npz_arrays(body: bytes) -> dict[str, np.ndarray[Any, Any]] | None:
    """The arrays of an uncompressed npz (what np.savez writes) as read-only views of `body`.

    np.load copies each member out of the archive (time and page faults); here the
    CRC-32 is checked over the bytes where they lie (by ISA-L) and each array is a view of them.
    Anything else (compression, another .npy version, object arrays, odd names) returns None for
    np.load, which reads or refuses it.
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
