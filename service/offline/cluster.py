"""Datasets on a Dask cluster (`pip install 'loss-service[dask]'`): each partition computed by the
engine in its worker, exactly as a record batch is, and the partitions' sums combined the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from service.offline.datasets import DEFAULT_BATCH_ROWS, _check_counted, _merge_groups, evaluate_batch, result_of
from service.offline.reading import _batches, _name, dataset_files, open_dataset
from service.offline.sketch import Tally
from service.offline.spec import DatasetError, DatasetResult, Spec


def _partition_totals(frame: Any, spec: Spec) -> Any:
    """One Dask partition (a pandas DataFrame) as one row holding its pickled Tally per group."""
    import pandas as pd

    totals, groups = Tally(), dict[tuple[Any, ...], Tally]()
    for batch, where, _ in _partition_batches(frame):
        reduced, batch_groups = evaluate_batch(spec, batch, where)
        totals.add_batch(reduced, batch.num_rows)
        _merge_groups(groups, batch_groups, spec, where(0))
    return pd.DataFrame({"totals": [(totals, groups)]})


def _partition_batches(frame: Any) -> Iterator[tuple[Any, Callable[[int], str], int]]:
    """A pandas partition as record batches of DEFAULT_BATCH_ROWS (Arrow-backed columns convert
    without a copy), each with where its rows lie in the partition."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    start = 0
    for batch in table.to_batches(max_chunksize=DEFAULT_BATCH_ROWS):

        def where(row: int, first: int = start) -> str:
            return f"partition row {first + row}"

        yield batch, where, start
        start += batch.num_rows


def _dask_frame(data: Any, spec: Spec) -> Any:
    try:
        import dask.dataframe as dd
    except ImportError as exc:
        raise ImportError("Dask is an optional extra: pip install 'loss-service[dask]'") from exc
    _name(spec)
    if isinstance(data, str | list):
        # Arrow-backed partitions reach the engine without a pandas conversion of the list columns,
        # many times faster than NumPy-backed (object) columns (docs/performance.md).
        frame = dd.read_parquet(dataset_files(data), columns=spec.columns, dtype_backend="pyarrow")
    else:
        frame = data
    missing = [name for name in spec.columns if name not in frame.columns]
    if missing:
        raise DatasetError(f"no column {missing[0]!r}; the data has {', '.join(map(str, frame.columns))}")
    return frame[spec.columns]


def _partition_per_sample(frame: Any, spec: Spec) -> Any:
    import pandas as pd

    values = []
    for batch, where, _ in _partition_batches(frame):
        reduced, _ = evaluate_batch(spec, batch, where)
        if reduced.per_sample.ndim != 1:
            raise DatasetError(f"{spec.loss} gives {reduced.per_sample.shape[1:]} values per row, not one")
        values.append(reduced.per_sample.astype(np.float64))
    return pd.Series(np.concatenate(values) if values else np.zeros(0), index=frame.index, name="per_sample")


def per_sample_dask(data: Any, spec: Spec) -> Any:
    """Each row's per-sample value as a lazy Dask Series (losses with one value per row)."""
    return _dask_frame(data, spec).map_partitions(_partition_per_sample, spec, meta=("per_sample", "f8"))


def _file_totals(path: str, spec: Spec, batch_rows: int) -> tuple[Tally, dict[tuple[Any, ...], Tally]]:
    """One file streamed on a Dask worker, as `evaluate_dataset` streams it."""
    totals, groups = Tally(), dict[tuple[Any, ...], Tally]()
    for batch, where, _ in _batches(open_dataset([path], spec), spec, batch_rows):
        reduced, batch_groups = evaluate_batch(spec, batch, where)
        totals.add_batch(reduced, batch.num_rows)
        _merge_groups(groups, batch_groups, spec, where(0))
    return totals, groups


def evaluate_dask(
    data: Any, spec: Spec, *, scheduler: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS
) -> DatasetResult:
    """The same evaluation on Dask, on the scheduler at `scheduler` (a `dask.distributed` address)
    or on whatever Dask is configured to use; the parts combine exactly as batches do.

    `data`: a dataset path, whose files are streamed one per task on the workers (reading a file
    into a Dask dataframe first costs about ten times the streamed read), or a
    `dask.dataframe`, computed with `map_partitions` (fastest with `dtype_backend="pyarrow"`).
    """
    try:
        from dask.base import compute as dask_compute
        from dask.delayed import delayed
    except ImportError as exc:
        raise ImportError("Dask is an optional extra: pip install 'loss-service[dask]'") from exc
    _name(spec)
    if isinstance(data, str | list):
        open_dataset(data, spec)  # every file has the columns, before any task starts
        task = delayed(_file_totals)
        parts: Any = [task(path, spec, batch_rows) for path in dataset_files(data)]
    else:
        frame = _dask_frame(data, spec).map_partitions(_partition_totals, spec, meta={"totals": object})
        parts = [delayed(_merged)(series, spec) for series in frame["totals"].to_delayed()]
    if scheduler is not None:
        from distributed import Client

        with Client(scheduler) as client:  # type: ignore[no-untyped-call]
            computed = client.gather(client.compute(parts))
    else:
        (computed,) = dask_compute(parts)  # type: ignore[no-untyped-call]
    totals, groups = _merged(computed, spec)
    _check_counted(totals, spec)
    return result_of(spec, totals, groups)


def _merged(parts: Any, spec: Spec) -> tuple[Tally, dict[tuple[Any, ...], Tally]]:
    """Parts' (totals, groups) combined: sums, denominators, counts and sketches add up."""
    totals, groups = Tally(), dict[tuple[Any, ...], Tally]()
    for part_totals, part_groups in parts:
        totals.merge(part_totals)
        _merge_groups(groups, part_groups, spec, "the partitions combined")
    return totals, groups
