"""A model's joined pairs, exported: one row per pair, in (prediction time, id) order, as an
Arrow IPC stream, CSV or NDJSON, written batch by batch as the store reads them.

Columns (docs/delayed-labels.md, "Exporting the pairs"):
- `id` (text), `predicted_at` (the prediction's time, Unix seconds), `label_arrived_at` (when
  its label arrived; null where the store kept no arrival), `weight` (the label's sample weight,
  1.0 where it came without one, as the join counted it);
- `segment_<key>` per declared segment key (text, null where the row has none);
- per configured loss i (in configured order; the history's `losses[i]` names it):
  `loss_<i>_sum` and `loss_<i>_denominator`, the pair's shares of that loss's sum and
  denominator, `loss_<i>_count` the values it counts, and `loss_<i>`, its own loss
  (`pair_value`: its sum over its denominator, null where it counts nothing). Any set of pairs
  has the mean /v1/loss gives for it: Σ sum / Σ denominator (its square root for a root-mean
  loss, Σ sum itself for a sum loss), so a history bucket's mean is recomputed exactly from its
  pairs' shares. Null for a pair joined under another configuration of that loss.
- with `"keep_pairs": true`, `predictions` and `labels`: each row's values as float64, a
  fixed-size list of the row's values (flattened where a row has more than one axis) or one
  number where rows are scalars; null for a pair joined before the model kept its pairs.
  float64 holds every stored value exactly (float32 predictions, integer labels below 2^53), so
  `loss-service compute --dataset` over them gives the service's numbers.

Memory holds one batch of `EXPORT_BATCH_ROWS` pairs, whatever the window holds.
"""

from __future__ import annotations

import io
import itertools
import math
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
from numpy.typing import NDArray

from service.store import DTYPES, Model, Store, StoreFailureError
from service.store.history import pair_value, shares_of
from service.store.pairs import PairColumns
from service.usecases.configured import loss_aggregate, loss_variants
from service.usecases.errors import InvalidInputError
from service.usecases.models import model_config, unavailable, unknown_model
from service.usecases.windows import DEFAULT_WINDOW_SECONDS, parse_time

Format = Literal["arrow", "csv", "ndjson"]
MEDIA_TYPES: dict[Format, str] = {
    "arrow": "application/vnd.apache.arrow.stream",
    "csv": "text/csv",
    "ndjson": "application/x-ndjson",
}
# Pairs one read transaction, and one record batch of the answer, holds.
EXPORT_BATCH_ROWS = 8192


def export_window(start: str | None, end: str | None, now: float) -> tuple[float, float]:
    """[start, end) by prediction time: `end` default now, `start` default 24 h before `end`."""
    last = now if end is None else parse_time(end, "end")
    first = last - DEFAULT_WINDOW_SECONDS if start is None else parse_time(start, "start")
    if last <= first:
        raise InvalidInputError("end", f"must be after start ({first:g}), got {last:g}", part="query")
    return first, last


@dataclass(frozen=True)
class Columns:
    """What a model's export holds: its segment keys, its losses and whether its pairs are kept."""

    keys: list[str]
    variants: list[int]
    aggregates: list[str]
    names: list[str]
    prediction_width: int | None  # None: no payload columns; 0: one number per row
    label_width: int | None

    def schema(self) -> pa.Schema:
        fields = [
            pa.field("id", pa.string(), nullable=False),
            pa.field("predicted_at", pa.float64(), nullable=False),
            pa.field("label_arrived_at", pa.float64()),
            pa.field("weight", pa.float64(), nullable=False),
            *(pa.field(f"segment_{key}", pa.string()) for key in self.keys),
        ]
        for i in range(len(self.variants)):
            fields += [
                pa.field(f"loss_{i}", pa.float64()),
                pa.field(f"loss_{i}_sum", pa.float64()),
                pa.field(f"loss_{i}_denominator", pa.float64()),
                pa.field(f"loss_{i}_count", pa.int64()),
            ]
        for name, width in (("predictions", self.prediction_width), ("labels", self.label_width)):
            if width is not None:
                fields.append(pa.field(name, pa.float64() if width == 0 else pa.list_(pa.float64(), width)))
        metadata = {
            "loss_service.losses": orjson.dumps(self.names),
            "loss_service.aggregates": orjson.dumps(self.aggregates),
        }
        return pa.schema(fields, metadata=metadata)


def columns_of(model: Model) -> Columns:
    from service.engine import loss_name

    config = model_config(model)
    keep = bool(config["keep_pairs"])
    return Columns(
        keys=list(config["segments"]),
        variants=loss_variants(model),
        aggregates=[loss_aggregate(model, i) for i in range(len(config["losses"]))],
        names=[loss_name(call["loss"], config["convention"], call["options"]) for call in config["losses"]],
        prediction_width=_width(model.prediction_shape) if keep else None,
        label_width=_width(model.label_shape) if keep else None,
    )


def _width(shape: tuple[int, ...] | None) -> int:
    """0 for scalar rows (one number per pair), else the values per row. A model with no row
    stored yet has no shape: its export has no rows either."""
    return 0 if not shape else math.prod(shape)


def record_batch(columns: Columns, rows: PairColumns) -> pa.RecordBatch:
    """One batch of joined prediction rows, read as columns, as a record batch of
    `columns.schema()`: each column built from the store's whole column at once."""
    count = len(rows)
    data: list[Any] = [
        pa.array(rows.ids, pa.string()),
        pa.array(rows.made),
        pa.array(rows.label_arrived, pa.float64()),
        pa.array(rows.weights),
        *(pa.array(values, pa.string()) for values in rows.segments),
    ]
    table, owner = rows.losses, rows.owners
    for variant, aggregate in zip(columns.variants, columns.aggregates, strict=True):
        sums, denominators, counts, found = shares_of(table, owner, variant, count)
        values = pair_value(sums, denominators, aggregate)
        missing = ~found
        data += [
            pa.array(values, mask=missing | np.isnan(values)),
            pa.array(sums, mask=missing),
            pa.array(denominators, mask=missing),
            pa.array(counts, mask=missing),
        ]
    widths = [width for width in (columns.prediction_width, columns.label_width) if width is not None]
    for width, (payloads, codes) in zip(widths, rows.payloads, strict=True):
        data.append(_payloads(payloads, codes, width))
    return pa.RecordBatch.from_arrays(data, schema=columns.schema())


def _payloads(payloads: Sequence[bytes], codes: NDArray[np.int64], width: int) -> pa.Array:
    """Stored rows as float64 values: one per row (`width` 0) or fixed-size lists of `width`;
    null where a row has no payload (b"") or no dtype (-1). The rows of each dtype are joined
    and viewed at once."""
    size = max(width, 1)
    values = np.zeros((len(payloads), size))
    missing = (np.fromiter(map(len, payloads), np.int64, len(payloads)) == 0) | (codes < 0)
    for code in np.unique(codes[~missing]).tolist():
        rows = ~missing & (codes == code)
        joined = b"".join(itertools.compress(payloads, rows.tolist()))
        values[rows] = np.frombuffer(joined, dtype=DTYPES[code]).reshape(-1, size)
    if width == 0:
        return pa.array(values[:, 0], mask=missing)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width, mask=pa.array(missing))


# -- writing --------------------------------------------------------------------------------------


class _Sink(io.RawIOBase):
    """A file that hands over what was written since it was last drained."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _text_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """CSV cells hold one value: list columns become their JSON text ("[0.1, 0.9]")."""
    arrays, fields = [], []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_fixed_size_list(field.type):
            text = [None if value is None else orjson.dumps(value).decode() for value in column.to_pylist()]
            arrays.append(pa.array(text, pa.string()))
            fields.append(pa.field(field.name, pa.string()))
        else:
            arrays.append(column)
            fields.append(field)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def encoded(batches: Iterator[pa.RecordBatch], schema: pa.Schema, form: Format) -> Iterator[bytes]:
    """The batches in `form`, one chunk per batch (the Arrow stream's schema and end marker, and
    the CSV header, in the first and last chunks)."""
    if form == "ndjson":
        for batch in batches:
            yield b"".join(orjson.dumps(row) + b"\n" for row in batch.to_pylist())
        return
    sink = _Sink()
    if form == "arrow":
        with pa.ipc.new_stream(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
                yield sink.drain()
        yield sink.drain()
        return
    text_schema = _text_columns(pa.RecordBatch.from_pylist([], schema=schema)).schema
    with pa_csv.CSVWriter(sink, text_schema) as csv_writer:
        for batch in batches:
            csv_writer.write_batch(_text_columns(batch))
            yield sink.drain()
    yield sink.drain()


@dataclass(frozen=True)
class Export:
    """An export ready to send: its media type, then its chunks, each read from the store when
    asked for (the first one read already, so that a store that fails is a 503, not a cut)."""

    media_type: str
    chunks: Generator[bytes, None, None]


def pairs(
    store: Store,
    name: str,
    *,
    start: str | None,
    end: str | None,
    form: Format,
    now: float | None = None,
    batch_rows: int = EXPORT_BATCH_ROWS,
) -> Export:
    """Model `name`'s joined pairs made in [start, end), as `form` (see the module docstring)."""
    first, last = export_window(start, end, time.time() if now is None else now)
    try:
        model = store.model(name)
        if model is None:
            raise unknown_model(name)
        columns = columns_of(model)
        stream = encoded(
            (
                record_batch(columns, rows)
                for rows in store.pair_batches(
                    name,
                    first,
                    last,
                    keys=columns.keys,
                    payloads=columns.prediction_width is not None,
                    batch_rows=batch_rows,
                )
            ),
            columns.schema(),
            form,
        )
        head = next(stream, b"")
    except StoreFailureError as exc:
        raise unavailable(exc) from None
    return Export(MEDIA_TYPES[form], _chained(head, stream))


def _chained(head: bytes, rest: Iterator[bytes]) -> Generator[bytes, None, None]:
    if head:
        yield head
    yield from rest
