"""Reading a dataset: its files found (a path, a directory or a glob), opened as one Parquet or Arrow
dataset, and scanned in record batches, each with where its rows lie for error messages."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.engine import (
    loss_name,
)
from service.offline.spec import DatasetError, Spec

# Record batches decoded ahead of the one computed: pyarrow reads ahead 16 by default, which held
# ~200 MB of decoded row groups for no speed the engine could use.
READAHEAD = 2


def dataset_files(path: str | Sequence[str]) -> list[str]:
    """A file, a directory (its Parquet/Arrow files, recursively) or a glob, as a sorted list of files."""
    if not isinstance(path, str):
        return sorted(str(p) for p in path)
    if _is_glob(path):
        found = sorted(glob.glob(path, recursive=True))
    elif os.path.isdir(path):
        found = sorted(
            str(p) for p in Path(path).rglob("*") if p.is_file() and p.suffix in (".parquet", ".arrow", ".feather")
        )
    else:
        found = [path] if os.path.exists(path) else []
    if not found:
        raise DatasetError(f"{path}: no Parquet or Arrow files there")
    return found


def _is_glob(path: str) -> bool:
    return any(char in path for char in "*?[")


def _format(files: Sequence[str]) -> str:
    return "parquet" if all(f.endswith(".parquet") for f in files) else "ipc"


def open_dataset(path: str | Sequence[str], spec: Spec) -> Any:
    import pyarrow as pa
    import pyarrow.dataset as ds

    files = dataset_files(path)
    try:
        dataset = ds.dataset(files, format=_format(files))
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DatasetError(f"cannot read the dataset at {path}: {exc}") from None
    # Each file is read with its own schema (a dataset's is its first file's, and another file's
    # columns would be cast to it, or scanned as nulls where missing), so check each file's names.
    for fragment in dataset.get_fragments():
        try:
            names = fragment.physical_schema.names
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DatasetError(f"cannot read {fragment.path}: {exc}") from None
        missing = [name for name in spec.columns if name not in names]
        if missing:
            raise DatasetError(f"{fragment.path}: no column {missing[0]!r}; it has {', '.join(names)}")
    return dataset


def _column(batch: Any, name: str, where: Callable[[int], str]) -> np.ndarray[Any, Any]:
    """A record batch column as NumPy: numbers one per row, or (fixed-size) lists as a 2-D array."""
    import pyarrow as pa
    import pyarrow.types as pt

    column = batch.column(name)
    kind = column.type
    if pt.is_fixed_size_list(kind) or pt.is_list(kind) or pt.is_large_list(kind):
        if column.null_count:
            raise DatasetError(f"{where(_first_null(column))}, column {name!r}: a missing row (null)")
        if not pt.is_fixed_size_list(kind):
            lengths = np.diff(np.asarray(column.offsets))
            if lengths.size and (lengths != lengths[0]).any():
                row = int(np.argmax(lengths != lengths[0]))
                raise DatasetError(
                    f"{where(row)}, column {name!r}: ragged rows: {int(lengths[row])} values where the batch's "
                    f"first row has {int(lengths[0])}"
                )
            width = int(lengths[0]) if lengths.size else 0
        else:
            width = kind.list_size
        values = column.flatten()
        if not (pt.is_integer(values.type) or pt.is_floating(values.type)):
            raise DatasetError(f"{where(0)}, column {name!r}: lists of {values.type}, not numbers")
        return np.asarray(values.to_numpy(zero_copy_only=False)).reshape(len(column), width)
    if not (pt.is_integer(kind) or pt.is_floating(kind) or pt.is_boolean(kind)):
        raise DatasetError(f"{where(0)}, column {name!r}: {kind}, not numbers or lists of numbers")
    if column.null_count:
        raise DatasetError(f"{where(_first_null(column))}, column {name!r}: a missing value (null)")
    array = column.to_numpy(zero_copy_only=False)
    return np.asarray(array.astype(np.int64) if isinstance(column, pa.BooleanArray) else array)


def _first_null(column: Any) -> int:
    return int(np.flatnonzero(np.asarray(column.is_null()))[0])


def _name(spec: Spec) -> str:
    """The loss's name in answers (`loss_name`); an unknown loss, or a library metric's bad
    options, raise here."""
    return loss_name(spec.loss, spec.convention, spec.options)


def _scan_options(fragment: Any) -> Any:
    """Parquet without pre-buffering: it fetches whole row groups ahead, which pays on high-latency
    stores but on a local disk holds more memory and is no faster (docs/performance.md)."""
    import pyarrow.dataset as ds

    return ds.ParquetFragmentScanOptions(pre_buffer=False) if isinstance(fragment, ds.ParquetFileFragment) else None


def _batches(dataset: Any, spec: Spec, batch_rows: int) -> Iterator[tuple[Any, Callable[[int], str], int]]:
    """Record batches with, for error messages, where their row i lies (file and row in it)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")

    start = 0
    for fragment in dataset.get_fragments():
        path, first = fragment.path, 0
        # Arrow IPC is read as it lies, unchecked: a damaged file's offsets or UTF-8 reach whoever
        # reads the values (invalid offsets read out of bounds: a segfault). Its batches are
        # validated in full before use; Parquet's decoder builds valid arrays itself.
        check = not isinstance(fragment, ds.ParquetFileFragment)
        try:
            batches = fragment.to_batches(
                schema=fragment.physical_schema,
                columns=spec.columns,
                batch_size=batch_rows,
                batch_readahead=READAHEAD,
                fragment_readahead=1,
                fragment_scan_options=_scan_options(fragment),
            )
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DatasetError(f"cannot read {path}: {exc}") from None
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            # A damaged file: pyarrow raises OSError (ArrowIOError) for a corrupt page or codec, and
            # ArrowInvalid, ArrowNotImplementedError or UnicodeDecodeError for impossible values or names.
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise DatasetError(f"{path}: from row {first}: {exc}") from None
            if check:
                try:
                    batch.validate(full=True)
                except pa.ArrowException as exc:
                    raise DatasetError(f"{path}: from row {first}: {exc}") from None

            def where(row: int, path: str = path, first: int = first) -> str:
                return f"{path}: row {first + row}"

            yield batch, where, start
            first += batch.num_rows
            start += batch.num_rows
