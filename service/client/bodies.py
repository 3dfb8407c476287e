"""A batch on the wire: checked, cut into chunks of samples, sent as JSON, npz or an Arrow stream;
the answers for its chunks combined into one."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.values.columns import as_array
from service.values.results import LossResult, combine

JSON = "application/json"


NPZ = "application/x-npz"


ARROW = "application/vnd.apache.arrow.stream"


BODY_FORMATS = ("auto", "json", "arrow", "npz")


# From this many prediction values on, "auto" sends a binary body: parsing JSON numbers dominates.
BINARY_THRESHOLD = 4096


ARRAY_FIELDS = ("predictions", "labels", "sample_weight")


@dataclass(frozen=True)
class LogResult:
    """The answer to logging predictions or labels (all chunks of one call together)."""

    accepted: int
    duplicates: int
    # The first 100 ids of each chunk that this side already had.
    duplicate_ids: list[str]
    # The pairs this call completed, in the order of its ids; `results` follow this order.
    joined_ids: list[str]
    # One per configured loss over the completed pairs; empty when none was completed.
    results: list[LossResult]
    pending_predictions: int
    pending_labels: int
    # Labels logged for a model others take their labels from (labels_from): what they did for
    # each follower, its counts summed over the chunks and its pending rows after the last.
    followers: list[dict[str, Any]] = field(default_factory=list)


def _row_ids(ids: Any) -> list[Any]:
    """Ids as JSON values: strings, or non-negative integers (NumPy's included)."""
    values = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    return [int(v) if isinstance(v, np.integer) else v for v in values]


def _combined_log(answers: Sequence[Mapping[str, Any]]) -> LogResult:
    joined = [answer for answer in answers if answer["results"]]
    losses = len(joined[0]["results"]) if joined else 0
    return LogResult(
        accepted=sum(a["accepted"] for a in answers),
        duplicates=sum(a["duplicates"] for a in answers),
        duplicate_ids=[row_id for a in answers for row_id in a["duplicate_ids"]],
        joined_ids=[row_id for a in answers for row_id in a["joined_ids"]],
        results=[combine([LossResult.read(a["results"][i]) for a in joined]) for i in range(losses)],
        pending_predictions=answers[-1]["pending_predictions"],
        pending_labels=answers[-1]["pending_labels"],
        followers=_combined_followers(answers),
    )


def _combined_followers(answers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    followers: dict[str, dict[str, Any]] = {}
    for answer in answers:
        for theirs in answer.get("followers", ()):
            kept = followers.setdefault(
                theirs["model"], {"model": theirs["model"], "accepted": 0, "duplicates": 0, "joined": 0}
            )
            for count in ("accepted", "duplicates", "joined"):
                kept[count] += theirs[count]
            kept["pending_predictions"], kept["pending_labels"] = (
                theirs["pending_predictions"],
                theirs["pending_labels"],
            )
    return list(followers.values())


def _check_numbers(array: np.ndarray[Any, Any], field: str) -> np.ndarray[Any, Any]:
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{field} must hold numbers, got an array of {array.dtype}")
    # orjson serialises C-contiguous arrays of native dtypes directly.
    return np.ascontiguousarray(array.astype(np.int64) if array.dtype.kind in "bu" else array)


def _batch(
    predictions: Any, labels: Any, sample_weight: Any, dtype: str, convention: str, model: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "predictions": _check_numbers(as_array(predictions), "predictions"),
        "labels": _check_numbers(as_array(labels), "labels"),
        "dtype": dtype,
        "convention": convention,
    }
    if sample_weight is not None:
        body["sample_weight"] = _check_numbers(as_array(sample_weight), "sample_weight")
    if model is not None:
        body["model"] = model
    return body


def _chunks(
    body: dict[str, Any], chunk_size: int, sliced: Callable[[int, int], dict[str, Any]] | None = None
) -> Iterator[dict[str, Any]]:
    """The batch split along its first axis; `sliced(start, stop)` gives the rest of a chunk's body
    that is cut with it (options holding one value per sample); everything else is shared."""
    samples = len(body["predictions"])
    arrays = [key for key in ("predictions", "labels", "sample_weight") if key in body]
    if samples <= chunk_size:
        yield body
        return
    for start in range(0, samples, chunk_size):
        stop = start + chunk_size
        cut = sliced(start, stop) if sliced is not None else {}
        yield {**body, "chunk": True, **{key: body[key][start:stop] for key in arrays}, **cut}


def _encode(body: Mapping[str, Any], body_format: str) -> tuple[bytes, dict[str, str], dict[str, str]]:
    """The request's content, headers and query parameters: JSON, or an Arrow or npz body + query."""
    if body_format == "json":
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), {"content-type": JSON}, {}
    arrays = {key: body[key] for key in ARRAY_FIELDS if key in body}
    content, media_type = (_arrow(arrays), ARROW) if body_format == "arrow" else (_npz(arrays), NPZ)
    params = {
        key: orjson.dumps(value).decode() if key == "options" or isinstance(value, bool) else str(value)
        for key, value in body.items()
        if key not in ARRAY_FIELDS
    }
    return content, {"content-type": media_type, "accept": NPZ}, params


def _npz(arrays: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _fits_arrow(array: np.ndarray[Any, Any]) -> bool:
    """One value per sample, or a fixed-size list of them: what the service reads from Arrow."""
    return array.ndim == 1 or (array.ndim == 2 and array.shape[1] > 0)


def _arrow(arrays: Mapping[str, np.ndarray[Any, Any]]) -> bytes:
    """An Arrow IPC stream, one column per array: written without np.savez's CRC-32 and copies,
    and the service reads the columns without a checksum pass."""
    import pyarrow as pa

    columns = {
        name: pa.array(array)
        if array.ndim == 1
        else pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])
        for name, array in arrays.items()
    }
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _planned(
    body: dict[str, Any],
    chunk_size: int,
    progress: bool,
    sliced: Callable[[int, int], dict[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """The chunks to send, in order, advancing an optional tqdm bar as each one is done."""
    total = len(body["predictions"])
    bar = None
    if progress:
        try:
            from tqdm import tqdm
        except ImportError as exc:
            raise ImportError("progress=True needs tqdm: pip install tqdm") from exc
        bar = tqdm(total=total, unit="sample")
    try:
        for chunk in _chunks(body, chunk_size, sliced):
            yield chunk
            if bar is not None:
                bar.update(len(chunk["predictions"]))
    finally:
        if bar is not None:
            bar.close()


def _per_loss(responses: Sequence[Mapping[str, Any]], losses: int) -> list[LossResult]:
    """/v1/evaluate answers for each chunk, regrouped as one combined result per loss."""
    return [combine([LossResult.read(response["results"][i]) for response in responses]) for i in range(losses)]


def _loss_item(item: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(item, str):
        return {"loss": item, "options": {}}
    return {"loss": item["loss"], "options": dict(item.get("options", {}))}
