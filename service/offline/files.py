"""Arrays from and to files for the CLI: .npy, .npz, .csv, .parquet, .jsonl (and .json for output).

Outputs are written to a temporary file beside the destination and renamed into place once
whole (`AtomicOutput`), and an output that is, or is inside, one of the run's inputs is refused
(`refuse_overlap`): a failed or mistaken run never leaves a half-written file nor costs its data."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
import tempfile
import tokenize
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from service.values.columns import as_array

READABLE = (".npy", ".npz", ".csv", ".parquet", ".jsonl")
WRITABLE = (".npy", ".csv", ".jsonl", ".json")


class FileFormatError(ValueError):
    """A file that cannot be read or written as an array; the CLI exits 2 with this message."""


class OutputError(FileFormatError):
    """An output that may not or cannot be written: it would overwrite an input, its folder is
    missing, the disk is full. Nothing was written to the destination."""


def input_path(spec: str) -> str:
    """The file of an input argument: `archive.npz:key` names `archive.npz`."""
    return spec.partition(":")[0] if spec.count(":") == 1 and ".npz:" in spec else spec


def refuse_overlap(output: str | Path, inputs: Iterable[str | Path], patterns: Iterable[str] = ()) -> None:
    """Raise OutputError when `output` is one of `inputs` or inside one of them (a directory).

    An existing output is compared with each input by device and inode (after symbolic links), so
    a symbolic or hard link to an input, or the input under another spelling, is that input; an
    output is inside a directory input when its resolved path is below the directory's. `patterns`
    are globs the inputs were found with: an output they match would be read by the next run.
    It costs one stat per input file."""
    resolved = Path(os.path.realpath(output))
    try:
        found = os.stat(resolved)
        identity: tuple[int, int] | None = (found.st_dev, found.st_ino)
    except OSError:
        identity = None  # a new file: it can be inside an input folder, not an input file
    for given in inputs:
        try:
            status = os.stat(given)
        except OSError:
            continue  # not there: nothing to overwrite (a glob's pattern, an input already refused)
        if identity == (status.st_dev, status.st_ino):
            raise OutputError(f"{output}: the output is the input {given}; write it elsewhere")
        if stat.S_ISDIR(status.st_mode) and resolved.is_relative_to(os.path.realpath(given)):
            raise OutputError(f"{output}: the output is inside the input {given}; write it elsewhere")
    for pattern in patterns:
        absolute = os.path.abspath(pattern)
        variants = {absolute, absolute.replace("**" + os.sep, "")}  # ** also matches no folder
        for candidate in {os.path.abspath(output), str(resolved)}:
            if any(fnmatch.fnmatchcase(candidate, variant) for variant in variants):
                raise OutputError(f"{output}: the output matches the input pattern {pattern}; write it elsewhere")


def check_destination(destination: str | Path) -> Path:
    """The file `destination` names (links followed), or OutputError when it is a folder or its
    folder does not exist: checked before any work, so a long run does not fail at its end."""
    resolved = Path(os.path.realpath(destination))
    if resolved.is_dir():
        raise OutputError(f"{destination}: is a folder; name a file")
    if not resolved.parent.is_dir():
        raise OutputError(f"{destination}: no such folder {resolved.parent}")
    return resolved


def _umask() -> int:
    """The process's umask: read from /proc where it can be (setting it to read it, the fallback,
    changes it for every thread for a moment)."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class AtomicOutput:
    """A temporary file in the destination's folder, renamed over the destination by `commit`.

    The destination's symbolic link is followed (the file it points to is replaced) and an existing
    file's permissions are kept; a new file gets the usual ones (0666 less the umask). `discard`
    removes the temporary file; until `commit`, the destination is untouched."""

    def __init__(self, destination: str | Path) -> None:
        self.given = destination
        self.destination = check_destination(destination)
        folder = self.destination.parent
        try:
            handle, name = tempfile.mkstemp(prefix=f".{self.destination.name}.", suffix=".part", dir=folder)
        except OSError as exc:
            raise OutputError(f"{destination}: cannot write there: {exc.strerror or exc}") from None
        os.close(handle)
        self.path = Path(name)

    def commit(self) -> None:
        try:
            try:
                mode = stat.S_IMODE(os.stat(self.destination).st_mode)
            except FileNotFoundError:
                mode = 0o666 & ~_umask()
            with open(self.path, "rb+") as written:
                os.fchmod(written.fileno(), mode)
                os.fsync(written.fileno())  # the data is on disk before the name points at it
            os.replace(self.path, self.destination)
        except OSError as exc:
            self.discard()
            raise OutputError(f"{self.given}: cannot write: {exc.strerror or exc}") from None
        with contextlib.suppress(OSError):  # the rename itself survives a crash
            folder = os.open(self.destination.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(destination: str | Path) -> Iterator[IO[bytes]]:
    """A binary file whose content replaces `destination` only when the block completes."""
    output = AtomicOutput(destination)
    try:
        with open(output.path, "wb") as handle:
            yield handle
    except OSError as exc:
        output.discard()
        raise OutputError(f"{destination}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        output.discard()
        raise
    output.commit()


# What a damaged or mislabelled input file raises while it is decoded: pyarrow's errors are OSError,
# ValueError or NotImplementedError; NumPy's .npy header parser raises SyntaxError or TokenError
# for a mangled header, MemoryError for one claiming more than memory; .npz is a zip archive.
DAMAGED = (
    ValueError,
    OSError,
    EOFError,
    MemoryError,
    NotImplementedError,
    SyntaxError,
    tokenize.TokenError,
    zipfile.BadZipFile,
)


def read_array(spec: str, name: str) -> np.ndarray[Any, Any]:
    """Read `spec` (a path, or `archive.npz:key`); `name` picks the array in an .npz of several."""
    path_text = input_path(spec)
    key = spec[len(path_text) + 1 :]
    path = Path(path_text)
    suffix = path.suffix.lower()
    if suffix not in READABLE:
        raise FileFormatError(f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(READABLE)}")
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            return _from_npy(path)
        if suffix == ".npz":
            return _from_npz(path, key or name)
        if suffix == ".csv":
            return _from_csv(path)
        if suffix == ".parquet":
            return _from_parquet(path)
        return np.asarray([orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()])
    except FileFormatError:
        raise
    except DAMAGED as exc:
        raise FileFormatError(f"{path}: {type(exc).__name__}: {exc}") from None


def _from_npy(path: Path) -> np.ndarray[Any, Any]:
    # Mapped first: a header that claims more values than the file holds is refused by its size
    # instead of allocating what it claims.
    return np.array(np.load(path, mmap_mode="r", allow_pickle=False))


def _from_npz(path: Path, key: str) -> np.ndarray[Any, Any]:
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        if key in names:
            return np.asarray(archive[key])
        if len(names) == 1:
            return np.asarray(archive[names[0]])
        raise FileFormatError(f"{path}: holds {names}; name one as {path}:<key>")


def _from_csv(path: Path) -> np.ndarray[Any, Any]:
    first = path.read_text().splitlines()[0] if path.stat().st_size else ""
    try:
        [float(cell) for cell in first.split(",")]
        header = 0
    except ValueError:
        header = 1  # a header row of column names
    return np.loadtxt(path, delimiter=",", skiprows=header, ndmin=1)


def _from_parquet(path: Path) -> np.ndarray[Any, Any]:
    import pyarrow.parquet as pq
    import pyarrow.types as pt

    table = pq.read_table(path)
    for field in table.schema:
        kind = field.type
        while pt.is_list(kind) or pt.is_large_list(kind) or pt.is_fixed_size_list(kind):
            kind = kind.value_type
        if not (pt.is_integer(kind) or pt.is_floating(kind) or pt.is_boolean(kind)):
            raise FileFormatError(f"{path}: column {field.name!r} is {field.type}, not numbers or lists of numbers")
    columns = [as_array(column) for column in table.columns]
    return columns[0] if len(columns) == 1 else np.column_stack(columns)


def check_writable(path: Path) -> None:
    """Refuse an output of a type `write_array` cannot write, before any work is done."""
    suffix = path.suffix.lower()
    if suffix not in WRITABLE:
        raise FileFormatError(f"{path}: cannot write {suffix or '(none)'}; use one of {', '.join(WRITABLE)}")


def write_array(path: Path, values: np.ndarray[Any, Any]) -> None:
    """Write `values` to `path` (by its suffix), atomically: see `atomic_write`."""
    check_writable(path)
    suffix = path.suffix.lower()
    with atomic_write(path) as handle:
        if suffix == ".npy":
            np.save(handle, values, allow_pickle=False)
        elif suffix == ".csv":
            rows = values.reshape(values.shape[0], -1) if values.ndim > 1 else values
            np.savetxt(handle, rows, delimiter=",", fmt="%.17g")
        elif suffix == ".jsonl":
            handle.write(b"".join(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for row in values))
        else:
            handle.write(orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY))
