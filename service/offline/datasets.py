"""Losses over datasets larger than memory: Parquet or Arrow files scanned in record batches.

    >>> result = evaluate_dataset("evals/*.parquet", loss="scce", predictions="logits", labels="label",
    ...                           options={"from_logits": True}, group_by=["country"])
    >>> result.mean, result.groups[0]

Each record batch is computed by the engine on its own, exactly as `/v1/loss` computes those rows,
and the batches combine exactly: mean = sum of sums / sum of denominators. Memory stays bounded by
the batch size whatever the dataset's size. `group_by` gives the same numbers per segment, with
percentiles of the per-sample values from a log-bucket sketch (relative error at most
`SKETCH_ACCURACY`), which merges across batches and across Dask partitions alike.

`evaluate_dask` (`service.offline.cluster`) runs the same per-partition computation on a Dask
cluster (`pip install 'loss-service[dask]'`) and combines the partitions' sums the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from service.engine import (
    FRAMEWORKS,
    LossInputError,
    LossResult,
    compute,
)
from service.offline.files import AtomicOutput, OutputError, refuse_overlap
from service.offline.reading import _batches, _column, _is_glob, _name, dataset_files, open_dataset
from service.offline.sketch import QUANTILES, Tally
from service.offline.spec import DatasetError, DatasetResult, Spec

DEFAULT_BATCH_ROWS = 65_536


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
