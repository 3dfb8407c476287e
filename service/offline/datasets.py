"""Losses over datasets larger than memory: Parquet or Arrow files scanned in record batches.

    >>> result = evaluate_dataset("evals/*.parquet", loss="scce", predictions="logits", labels="label",
    ...                           options={"from_logits": True}, group_by=["country"])
    >>> result.mean, result.groups[0]

Each record batch is computed by the engine on its own, exactly as `/v1/loss` computes those rows,
and the batches combine exactly: mean = sum of sums / sum of denominators. Memory stays bounded by
the batch size whatever the dataset's size. `group_by` gives the same numbers per segment, with
percentiles of the per-sample values from a log-bucket sketch (relative error at most
`SKETCH_ACCURACY`), which merges across batches and across Dask partitions alike.

`evaluate_dask` runs the same per-partition computation on a Dask cluster (`pip install
'loss-service[dask]'`) and combines the partitions' sums the same way.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.engine import (
    FRAMEWORKS,
    Aggregate,
    Convention,
    DType,
    LossInputError,
    LossResult,
    Totals,
    compute,
    loss_name,
)
from service.offline.files import AtomicOutput, OutputError, refuse_overlap

# Percentiles are read from buckets whose bounds grow by GAMMA: any value is within this relative
# error of its bucket's representative (DDSketch's construction, vectorised).
SKETCH_ACCURACY = 0.005
_GAMMA = (1 + SKETCH_ACCURACY) / (1 - SKETCH_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
_TINY = 1e-300  # magnitudes below count as zero
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
DEFAULT_BATCH_ROWS = 65_536
# Segments kept at most: each holds its totals and a sketch (up to a few thousand buckets), so a
# key column with a value per row would otherwise grow with the dataset.
DEFAULT_MAX_GROUPS = 10_000
# Record batches decoded ahead of the one computed: pyarrow reads ahead 16 by default, which held
# ~200 MB of decoded row groups for no speed the engine could use.
READAHEAD = 2


class DatasetError(ValueError):
    """A dataset that cannot be evaluated; the message names the file, row and column where it can."""


@dataclass
class Sketch:
    """Counts of values by signed log bucket: mergeable, bounded by the range of magnitudes seen."""

    counts: dict[int, int] = field(default_factory=dict)
    zeros: int = 0

    def add(self, values: np.ndarray[Any, Any]) -> None:
        values = values.ravel().astype(np.float64, copy=False)
        magnitude = np.abs(values)
        small = magnitude < _TINY
        self.zeros += int(small.sum())
        index = np.ceil(np.log(magnitude[~small]) / _LOG_GAMMA).astype(np.int64)
        signed = np.where(values[~small] > 0, index + (1 << 20), -(index + (1 << 20)))
        keys, counts = np.unique(signed, return_counts=True)
        for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
            self.counts[key] = self.counts.get(key, 0) + count

    def merge(self, other: Sketch) -> None:
        self.zeros += other.zeros
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count

    def quantile(self, q: float) -> float:
        """The value at rank q (0..1), within SKETCH_ACCURACY relative error."""
        total = self.zeros + sum(self.counts.values())
        if not total:
            return math.nan
        entries = [(self._value(key), count) for key, count in self.counts.items()] + [(0.0, self.zeros)]
        entries.sort()
        rank, seen = q * (total - 1), 0
        for value, count in entries:
            seen += count
            if seen > rank:
                return value
        return entries[-1][0]

    @staticmethod
    def _value(key: int) -> float:
        index = abs(key) - (1 << 20)
        # The bucket (gamma^(i-1), gamma^i] is represented by the point of equal relative error.
        value = 2 * _GAMMA**index / (_GAMMA + 1)
        return value if key > 0 else -value


@dataclass
class Tally(Totals):
    """A dataset's or a segment's totals (`Totals`: they combine as the client's chunks do), with
    its rows and, for segments, the sketch of its per-sample values."""

    rows: int = 0
    sketch: Sketch = field(default_factory=Sketch)

    def add_batch(self, result: LossResult, rows: int, *, sketch: bool = False) -> None:
        """`sketch`: also keep the per-sample values' percentiles (segments report them; the whole
        dataset does not, and sketching costs a sort of every batch)."""
        self.add(result)
        self.rows += rows
        if sketch:
            self.sketch.add(result.per_sample)

    def merge(self, other: Tally) -> None:
        self.add(other)
        self.rows += other.rows
        self.sketch.merge(other.sketch)


@dataclass(frozen=True)
class Spec:
    """What to compute: the loss and the columns it reads."""

    loss: str
    predictions: str
    labels: str
    weight: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    dtype: DType = "float64"
    convention: Convention = "keras"
    group_by: tuple[str, ...] = ()
    max_groups: int = DEFAULT_MAX_GROUPS

    @property
    def columns(self) -> list[str]:
        names = [self.predictions, self.labels, *([self.weight] if self.weight else []), *self.group_by]
        return list(dict.fromkeys(names))


@dataclass
class DatasetResult:
    loss: str
    mean: float
    sum: float
    count: int
    denominator: float
    rows: int
    dtype: str
    convention: str
    groups: list[dict[str, Any]] | None = None
    aggregate: Aggregate = "mean"

    def as_dict(self) -> dict[str, Any]:
        out = {key: value for key, value in vars(self).items() if key != "groups"}
        if self.groups is not None:
            out["groups"] = self.groups
        return out


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


def _compute(spec: Spec, arrays: Mapping[str, np.ndarray[Any, Any]]) -> LossResult:
    return compute(
        spec.loss,
        arrays["predictions"],
        arrays["labels"],
        options=dict(spec.options),
        sample_weight=arrays.get("sample_weight"),
        dtype=spec.dtype,
        convention=spec.convention,
        chunk=True,  # a batch whose targets are all ignored counts 0 / 0, to be combined
    )


def evaluate_batch(
    spec: Spec, batch: Any, where: Callable[[int], str]
) -> tuple[LossResult, dict[tuple[Any, ...], Tally]]:
    """One record batch: the engine's result for all its rows, and totals per group."""
    arrays = {"predictions": _column(batch, spec.predictions, where), "labels": _column(batch, spec.labels, where)}
    if spec.weight:
        arrays["sample_weight"] = _column(batch, spec.weight, where)
    try:
        reduced = _compute(spec, arrays)
    except LossInputError as exc:
        column = {"predictions": spec.predictions, "labels": spec.labels, "sample_weight": spec.weight}.get(
            exc.field, exc.field
        )
        located = f"{where(exc.index[0])}, " if exc.index else ""
        raise DatasetError(f"{located}column {column!r}: {exc.reason}") from None
    groups: dict[tuple[Any, ...], Tally] = {}
    if spec.group_by:
        keys = [_key_values(batch.column(name), name, where) for name in spec.group_by]
        rows_of: dict[tuple[Any, ...], list[int]] = {}
        for row, key in enumerate(zip(*keys, strict=True)):
            rows = rows_of.get(key)
            if rows is None:
                if len(rows_of) == spec.max_groups:
                    raise _too_many_groups(spec, where(row))
                rows = rows_of[key] = []
            rows.append(row)
        for key, rows in rows_of.items():
            index = np.asarray(rows)
            part = {name: values[index] for name, values in arrays.items()}
            totals = groups[key] = Tally()
            totals.add_batch(_compute(spec, part), len(rows), sketch=True)
    return reduced, groups


def _key_values(column: Any, name: str, where: Callable[[int], str]) -> list[Any]:
    """A segment column's values as hashable, JSON-ready keys: numbers, text, booleans, and dates
    and times as Arrow's text for them ("2026-01-01 00:00:00.000000000"). NaN, like null, is the
    key None: NaN never equals itself, so each NaN row would otherwise be a segment of its own."""
    import pyarrow as pa
    import pyarrow.types as pt

    if pt.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = column.type
    if pt.is_floating(kind):
        return [None if value != value else value for value in column.cast(pa.float64()).to_pylist()]
    if pt.is_integer(kind) or pt.is_boolean(kind) or pt.is_string(kind) or pt.is_large_string(kind):
        return list(column.to_pylist())
    if pt.is_null(kind):
        return [None] * len(column)
    if pt.is_temporal(kind) and not pt.is_duration(kind) and not pt.is_interval(kind):
        return list(column.cast(pa.string()).to_pylist())
    raise DatasetError(
        f"{where(0)}, column {name!r}: {kind} cannot be a segment key; group by numbers, text, booleans or dates"
    )


def _too_many_groups(spec: Spec, where: str) -> DatasetError:
    return DatasetError(
        f"{where}: more segments of {', '.join(spec.group_by)} than the {spec.max_groups:,} allowed "
        "(--max-groups); group by fewer or coarser columns, or raise the limit"
    )


def _merge_groups(
    groups: dict[tuple[Any, ...], Tally], parts: Mapping[tuple[Any, ...], Tally], spec: Spec, where: str
) -> None:
    """Add `parts` into `groups`, refusing to keep more than `spec.max_groups` segments."""
    for key, part in parts.items():
        kept = groups.get(key)
        if kept is None:
            if len(groups) >= spec.max_groups:
                raise _too_many_groups(spec, where)
            kept = groups[key] = Tally()
        kept.merge(part)


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


def evaluate_dataset(
    path: str | Sequence[str],
    spec: Spec,
    *,
    per_sample_out: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: Callable[[int], None] | None = None,
) -> DatasetResult:
    """Stream the dataset through the engine; see the module docstring.

    `per_sample_out`: a Parquet file that receives `row` (the row's index in scan order: files in
    sorted order, rows in file order) and `per_sample`; written to a temporary file beside it and
    moved into place only when the whole dataset was computed, so a failure leaves no partial file.
    An output that is, or is inside, the dataset (links followed) raises OutputError before any
    row is read. `progress(rows)` is called after each batch.
    """
    _name(spec)  # an unknown loss fails before any file is read
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")
    if per_sample_out:
        files = dataset_files(path)
        patterns = [path] if isinstance(path, str) and _is_glob(path) else []
        refuse_overlap(per_sample_out, [*files, *([path] if isinstance(path, str) else [])], patterns)
    dataset = open_dataset(path, spec)
    totals, groups = Tally(), dict[tuple[Any, ...], Tally]()
    writer = _PerSampleWriter(per_sample_out) if per_sample_out else None
    try:
        for batch, where, start in _batches(dataset, spec, batch_rows):
            reduced, batch_groups = evaluate_batch(spec, batch, where)
            totals.add_batch(reduced, batch.num_rows)
            _merge_groups(groups, batch_groups, spec, where(0))
            if writer is not None:
                writer.write(start, reduced.per_sample)
            if progress is not None:
                progress(batch.num_rows)
        _check_counted(totals, spec)
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if writer is not None:
        writer.finish()
    return result_of(spec, totals, groups)


def _check_counted(totals: Tally, spec: Spec) -> None:
    if totals.rows == 0:
        raise DatasetError("the dataset has no rows")
    if not totals.denominator and spec.convention == "torch":
        raise DatasetError("every target is ignored or weighted 0: PyTorch's mean would be 0/0 (NaN)")
    if not totals.denominator and spec.convention not in FRAMEWORKS:
        raise DatasetError("every row is weighted 0: the weighted mean would be 0/0")


def result_of(spec: Spec, totals: Tally, groups: Mapping[tuple[Any, ...], Tally]) -> DatasetResult:
    result = DatasetResult(
        loss=_name(spec),
        mean=totals.mean(),
        sum=totals.sum,
        count=totals.count,
        denominator=totals.denominator,
        rows=totals.rows,
        dtype=spec.dtype,
        convention=spec.convention,
        aggregate=totals.aggregate,
    )
    if spec.group_by:
        result.groups = [
            {
                "key": dict(zip(spec.group_by, key, strict=True)),
                "rows": part.rows,
                "count": part.count,
                "sum": part.sum,
                "mean": part.mean(),
                "denominator": part.denominator,
                **{name: part.sketch.quantile(q) for name, q in QUANTILES.items()},
            }
            for key, part in sorted(groups.items(), key=lambda item: _sortable(item[0]))
        ]
    return result


def _sortable(key: tuple[Any, ...]) -> tuple[Any, ...]:
    # None sorts first; values of different types sort by type name, then value. Keys are the
    # values `_key_values` gives (numbers, text, booleans, None), which compare within a type.
    return tuple((value is not None, type(value).__name__, value) for value in key)


class _PerSampleWriter:
    """Per-sample values to Parquet, as they are computed, atomically placed at the end."""

    def __init__(self, destination: str) -> None:
        self.output = AtomicOutput(destination)
        self.temporary = self.output.path
        self.writer: Any = None

    def write(self, start: int, per_sample: np.ndarray[Any, Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = np.arange(start, start + per_sample.shape[0], dtype=np.int64)
        values = per_sample.astype(np.float64, copy=False)
        if values.ndim == 1:
            column = pa.array(values)
        else:
            width = int(np.prod(values.shape[1:]))
            column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)
        table = pa.table({"row": rows, "per_sample": column})
        try:
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.temporary, table.schema)
            self.writer.write_table(table)
        except OSError as exc:  # a full disk, a quota
            raise OutputError(f"{self.output.given}: cannot write: {exc}") from None

    def finish(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
        except OSError as exc:
            self.output.discard()
            raise OutputError(f"{self.output.given}: cannot write: {exc}") from None
        self.output.commit()

    def abandon(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError):
                self.writer.close()
        self.output.discard()


# -- Dask ------------------------------------------------------------------------------------------


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
