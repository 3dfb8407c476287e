"""Columns from other libraries as NumPy arrays: pandas, pyarrow (incl. fixed-size lists), lists."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_array(values: Any) -> np.ndarray[Any, Any]:
    """NumPy arrays, nested lists, pandas Series/DataFrames and pyarrow (chunked) arrays."""
    if isinstance(values, np.ndarray):
        return values
    if type(values).__module__.startswith("pyarrow") and hasattr(values, "validate"):
        # Arrow read from IPC (a request body, a file) is not checked: a list whose values claim a
        # negative length or offsets past them is read out of bounds, and pyarrow aborts the
        # process. A full check first: ArrowInvalid (a ValueError) instead; it reads the offsets
        # once, no values.
        values.validate(full=True)
    if hasattr(values, "combine_chunks"):  # pyarrow.ChunkedArray
        # combine_chunks copies even a single chunk (time and pages); one chunk is
        # read as it is, so a column of an Arrow request body stays a view of the body.
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    if hasattr(values, "flatten") and hasattr(values, "type") and hasattr(values.type, "list_size"):
        # pyarrow FixedSizeListArray: one fixed-length row per sample
        return np.asarray(values.flatten().to_numpy(zero_copy_only=False)).reshape(len(values), values.type.list_size)
    if hasattr(values, "offsets") and hasattr(values, "flatten"):
        return _list_rows(values)
    if hasattr(values, "to_numpy"):  # pandas, pyarrow.Array
        converted = values.to_numpy()
        if converted.dtype == object:  # a column of variable-length lists
            return np.stack([np.asarray(row) for row in converted])
        return np.asarray(converted)
    return np.asarray(values)


def _list_rows(values: Any) -> np.ndarray[Any, Any]:
    """A pyarrow (large) list column of equal-length rows as an (N, L) array, in one conversion."""
    lengths = np.diff(np.asarray(values.offsets))
    if lengths.size and (lengths != lengths[0]).any():
        row = int(np.argmax(lengths != lengths[0]))
        raise ValueError(f"row {row} has {lengths[row]} values and row 0 has {lengths[0]}: rows must be equally long")
    flat = np.asarray(values.flatten().to_numpy(zero_copy_only=False))
    return flat.reshape(len(values), int(lengths[0]) if lengths.size else 0)
