"""Arrays from and to files for the CLI: .npy, .npz, .csv, .parquet, .jsonl (and .json for output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.columns import as_array

READABLE = (".npy", ".npz", ".csv", ".parquet", ".jsonl")
WRITABLE = (".npy", ".csv", ".jsonl", ".json")


class FileFormatError(ValueError):
    """A file that cannot be read or written as an array; the CLI exits 2 with this message."""


def read_array(spec: str, name: str) -> np.ndarray[Any, Any]:
    """Read `spec` (a path, or `archive.npz:key`); `name` picks the array in an .npz of several."""
    path_text, _, key = spec.partition(":") if spec.count(":") == 1 and ".npz:" in spec else (spec, "", "")
    path = Path(path_text)
    suffix = path.suffix.lower()
    if suffix not in READABLE:
        raise FileFormatError(f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(READABLE)}")
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
        if suffix == ".npz":
            return _from_npz(path, key or name)
        if suffix == ".csv":
            return _from_csv(path)
        if suffix == ".parquet":
            return _from_parquet(path)
        return np.asarray([orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()])
    except FileFormatError:
        raise
    except (ValueError, OSError, orjson.JSONDecodeError) as exc:
        raise FileFormatError(f"{path}: {exc}") from exc


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

    table = pq.read_table(path)
    columns = [as_array(column) for column in table.columns]
    return columns[0] if len(columns) == 1 else np.column_stack(columns)


def write_array(path: Path, values: np.ndarray[Any, Any]) -> None:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, values, allow_pickle=False)
    elif suffix == ".csv":
        np.savetxt(path, values.reshape(values.shape[0], -1) if values.ndim > 1 else values, delimiter=",", fmt="%.17g")
    elif suffix == ".jsonl":
        path.write_bytes(b"".join(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for row in values))
    elif suffix == ".json":
        path.write_bytes(orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY))
    else:
        raise FileFormatError(f"{path}: cannot write {suffix or '(none)'}; use one of {', '.join(WRITABLE)}")
