"""The HTTP clients, sync and async: each operation written once as a plan of HTTP calls.

Bodies are JSON for small batches, an Arrow stream or npz for large ones; large batches go in
chunks of `chunk_size` samples and come back combined; retries follow the rules in
`service.client`'s docstring."""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import httpx
import numpy as np
import orjson

from service.client.errors import (
    _ERRORS,
    LossServiceError,
    ServerError,
    UnreachableError,
)
from service.client.logger import PredictionLogger
from service.values.columns import as_array
from service.values.results import LossResult, combine

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CHUNK_SIZE = 100_000
RETRYABLE_STATUSES = {503}
# Statuses retried (with their Retry-After) only on calls that are safe to repeat: a logged row
# sent again is a duplicate, never stored or recorded twice.
RETRYABLE_WHEN_SAFE = {507}
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
    )


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


def _chunks(body: dict[str, Any], chunk_size: int) -> Iterator[dict[str, Any]]:
    """The batch split along its first axis; everything else is shared."""
    samples = len(body["predictions"])
    arrays = [key for key in ("predictions", "labels", "sample_weight") if key in body]
    if samples <= chunk_size:
        yield body
        return
    for start in range(0, samples, chunk_size):
        yield {**body, "chunk": True, **{key: body[key][start : start + chunk_size] for key in arrays}}


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


def _request_parts(call: _Call) -> tuple[bytes | None, dict[str, str] | None, Mapping[str, str] | None]:
    """A call's content, headers and query: its body encoded, or its own query and Accept."""
    if call.body is not None:
        return _encode(call.body, call.body_format)
    return None, {"accept": call.accept} if call.accept else None, call.params


def _query(**values: Any) -> dict[str, str]:
    """Query parameters given, as text (None: left out; a datetime in RFC 3339)."""
    return {
        key: value.isoformat() if isinstance(value, datetime) else str(value)
        for key, value in values.items()
        if value is not None
    }


def _table(content: bytes, as_: str) -> Any:
    """An Arrow stream as a pyarrow Table, or ("pandas") a DataFrame."""
    import pyarrow as pa

    table = pa.ipc.open_stream(content).read_all()
    return table.to_pandas() if as_ == "pandas" else table


def _decode(response: httpx.Response) -> Any:
    if response.status_code == 204:
        return None
    if response.headers.get("content-type", "").startswith(ARROW):
        return response.content
    if response.headers.get("content-type", "").startswith(NPZ):
        with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
            # Indexing the archive reads and parses the member every time: once each halves the
            # decode of a large result.
            arrays = {key: archive[key] for key in archive.files}
        return {key: array.item() if array.ndim == 0 else array for key, array in arrays.items()}
    return response.json()


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {"title": response.reason_phrase, "detail": response.text[:500]}
    kind = _ERRORS.get(response.status_code, ServerError if response.status_code >= 500 else LossServiceError)
    error = kind(response.status_code, problem)
    with contextlib.suppress(KeyError, ValueError):
        seconds = float(response.headers["retry-after"])
        if math.isfinite(seconds):
            error.retry_after = max(0.0, seconds)
    raise error


def _safe_to_repeat(call: _Call, exc: httpx.TransportError) -> bool:
    """A POST is repeated only when it cannot have reached the server (so no batch is counted twice),
    unless repeating it is harmless: a logged row sent again is a duplicate, never stored or
    recorded twice, and a configuration PUT again is the same configuration."""
    if call.idempotent or call.method in ("GET", "PUT"):
        return True
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _retry_delay(attempt: int, backoff: float, response: httpx.Response | None, safe: bool = False) -> float | None:
    """Seconds to wait before the next attempt, or None if this outcome must not be retried.
    `safe`: the call may be repeated even after the server processed it."""
    if response is not None:
        retryable = RETRYABLE_STATUSES | RETRYABLE_WHEN_SAFE if safe else RETRYABLE_STATUSES
        if response.status_code not in retryable or "retry-after" not in response.headers:
            return None
        try:
            seconds = float(response.headers["retry-after"])
        except ValueError:
            return None
        return max(0.0, seconds) if math.isfinite(seconds) else None  # `inf` would sleep for ever, or raise
    return backoff * 2.0**attempt


def _planned(body: dict[str, Any], chunk_size: int, progress: bool) -> Iterator[dict[str, Any]]:
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
        for chunk in _chunks(body, chunk_size):
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


@dataclass(frozen=True)
class _Call:
    """One HTTP exchange a client operation needs; `raw` returns the JSON whatever the status."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    body_format: str = "json"
    raw: bool = False
    idempotent: bool = False
    params: Mapping[str, str] | None = None  # the query of a call without a body
    accept: str | None = None  # a media type other than JSON (the body comes back as bytes)


T = TypeVar("T")
Plan = Generator[_Call, Any, T]


class _Base:
    """What both clients share: settings, and each operation as a plan of HTTP calls.

    A plan is a generator that yields the calls it needs and receives their decoded answers;
    `LossClient` runs plans with blocking I/O and `AsyncLossClient` with `await`, so each
    operation is written once.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        retries: int,
        backoff: float,
        chunk_size: int,
        progress: bool,
        body_format: str,
    ) -> None:
        if body_format not in BODY_FORMATS:
            raise ValueError(f"body_format must be one of {', '.join(map(repr, BODY_FORMATS))}")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.chunk_size = chunk_size
        self.progress = progress
        self.body_format = body_format
        self._headers = {"accept": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    def _body_format(self, body: Mapping[str, Any]) -> str:
        """ "auto": JSON for small batches, Arrow for large ones when every array fits it, else npz.
        /v1/evaluate always speaks JSON."""
        arrays = [body[key] for key in ARRAY_FIELDS if key in body]
        fits_arrow = all(_fits_arrow(array) for array in arrays)
        if self.body_format == "arrow" and not fits_arrow:
            shapes = ", ".join(str(list(array.shape)) for array in arrays)
            raise ValueError(f"body_format 'arrow' takes arrays of one or two axes, got shapes {shapes}; use 'npz'")
        if self.body_format != "auto":
            return self.body_format
        if body["predictions"].size < BINARY_THRESHOLD:
            return "json"
        return "arrow" if fits_arrow else "npz"

    def _delay(
        self, attempt: int, call: _Call, response: httpx.Response | None, error: Exception | None
    ) -> float | None:
        """Seconds before another attempt, or None when this outcome is final."""
        if attempt == self.retries:
            return None
        if error is not None:
            return _retry_delay(attempt, self.backoff, None) if _safe_to_repeat(call, error) else None  # type: ignore[arg-type]
        safe = call.idempotent or call.method in ("GET", "PUT")
        return _retry_delay(attempt, self.backoff, response, safe)

    def _outcome(self, call: _Call, response: httpx.Response | None, error: Exception | None) -> Any:
        """The final answer of an exchange: its decoded body, or the typed error."""
        if error is not None:
            raise UnreachableError(self.base_url, error) from error
        assert response is not None
        if not call.raw:
            _raise_for_status(response)
        return _decode(response)

    def _loss_plan(
        self,
        loss: str,
        arrays: tuple[Any, Any, Any],
        dtype: str,
        convention: str,
        model: str | None,
        options: dict[str, Any],
    ) -> Plan[LossResult]:
        body = {**_batch(*arrays, dtype, convention, model), "loss": loss, "options": options}
        body_format = self._body_format(body)
        parts = []
        for chunk in _planned(body, self.chunk_size, self.progress):
            parts.append(LossResult.read((yield _Call("POST", "/v1/loss", chunk, body_format))))
        return combine(parts)

    def _evaluate_plan(
        self,
        arrays: tuple[Any, Any, Any],
        losses: Sequence[str | Mapping[str, Any]],
        dtype: str,
        convention: str,
        model: str | None,
    ) -> Plan[list[LossResult]]:
        body = {**_batch(*arrays, dtype, convention, model), "losses": [_loss_item(item) for item in losses]}
        responses = []
        for chunk in _planned(body, self.chunk_size, self.progress):
            responses.append((yield _Call("POST", "/v1/evaluate", chunk)))
        return _per_loss(responses, len(body["losses"]))

    def _configure_plan(
        self,
        model: str,
        losses: Sequence[str | Mapping[str, Any]],
        convention: str,
        dtype: str,
        retention_seconds: float | None,
    ) -> Plan[dict[str, Any]]:
        body: dict[str, Any] = {
            "losses": [_loss_item(item) for item in losses],
            "convention": convention,
            "dtype": dtype,
        }
        if retention_seconds is not None:
            body["retention_seconds"] = retention_seconds
        return dict((yield _Call("PUT", f"/v1/models/{model}", body)))

    def _log_plan(self, model: str, side: str, ids: Any, rows: Any, extra: Mapping[str, Any]) -> Plan[LogResult]:
        """Rows sent in chunks of `chunk_size`; each chunk may be retried, since a row sent
        again is a duplicate: never stored, joined or recorded twice."""
        row_ids = _row_ids(ids)
        arrays = {side: _check_numbers(as_array(rows), side)}
        arrays.update({key: _check_numbers(as_array(v), key) for key, v in extra.items() if v is not None})
        for key, array in arrays.items():
            if array.ndim == 0 or len(array) != len(row_ids):
                raise ValueError(f"{key} must have one row per id ({len(row_ids)}), got shape {list(array.shape)}")
        answers = []
        for start in range(0, len(row_ids), self.chunk_size):
            part = slice(start, start + self.chunk_size)
            body = {"ids": row_ids[part], **{key: array[part] for key, array in arrays.items()}}
            answers.append((yield _Call("POST", f"/v1/models/{model}/{side}", body, idempotent=True)))
        return _combined_log(answers)

    def _losses_plan(self) -> Plan[list[dict[str, Any]]]:
        return list((yield _Call("GET", "/v1/losses"))["losses"])

    def _single(self, method: str, path: str) -> Plan[Any]:
        return (yield _Call(method, path))

    def _history_plan(self, model: str, start: Any, end: Any, step: Any, by: str | None) -> Plan[dict[str, Any]]:
        params = _query(start=start, end=end, step=step, by=by)
        return dict((yield _Call("GET", f"/v1/models/{model}/history", params=params)))

    def _pairs_plan(self, model: str, start: Any, end: Any, as_: str) -> Plan[Any]:
        if as_ not in ("arrow", "pandas"):
            raise ValueError(f"as_ must be 'arrow' or 'pandas', not {as_!r}")
        params = _query(start=start, end=end)
        content = yield _Call("GET", f"/v1/models/{model}/pairs", params=params, accept=ARROW)
        return _table(content, as_)

    def _health_plan(self) -> Plan[dict[str, Any]]:
        live = yield _Call("GET", "/livez")
        ready = yield _Call("GET", "/readyz", raw=True)  # 503 while starting or draining is an answer
        return {
            "live": live.get("status") == "ok",
            "ready": ready.get("status") == "ready",
            "status": ready.get("status"),
        }


class LossClient(_Base):
    """Synchronous client. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.25,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: bool = False,
        body_format: str = "auto",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            retries=retries,
            backoff=backoff,
            chunk_size=chunk_size,
            progress=progress,
            body_format=body_format,
        )
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _exchange(self, call: _Call) -> Any:
        content, headers, params = _request_parts(call)
        for attempt in range(self.retries + 1):
            response, error = None, None
            try:
                response = self._http.request(call.method, call.path, content=content, headers=headers, params=params)
            except httpx.TransportError as exc:
                error = exc
            delay = self._delay(attempt, call, response, error)
            if delay is None:
                return self._outcome(call, response, error)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _run(self, plan: Plan[T]) -> T:
        try:
            call = next(plan)
            while True:
                call = plan.send(self._exchange(call))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def loss(
        self,
        loss: str,
        predictions: Any,
        labels: Any,
        *,
        sample_weight: Any = None,
        dtype: str = "float64",
        convention: str = "keras",
        model: str | None = None,
        **options: Any,
    ) -> LossResult:
        """One loss over a batch; keyword arguments other than these are the loss's options."""
        return self._run(self._loss_plan(loss, (predictions, labels, sample_weight), dtype, convention, model, options))

    def evaluate(
        self,
        predictions: Any,
        labels: Any,
        losses: Sequence[str | Mapping[str, Any]],
        *,
        sample_weight: Any = None,
        dtype: str = "float64",
        convention: str = "keras",
        model: str | None = None,
    ) -> list[LossResult]:
        """Several losses over one batch: names, or {"loss": name, "options": {...}} items."""
        return self._run(self._evaluate_plan((predictions, labels, sample_weight), losses, dtype, convention, model))

    def losses(self) -> list[dict[str, Any]]:
        """The catalogue: every loss with its formula, shapes and options."""
        return self._run(self._losses_plan())

    def health(self) -> dict[str, Any]:
        """Liveness and readiness; a 503 from /readyz reads as {"ready": False, ...}."""
        return self._run(self._health_plan())

    def configure_model(
        self,
        model: str,
        losses: Sequence[str | Mapping[str, Any]],
        *,
        convention: str = "keras",
        dtype: str = "float64",
        retention_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Create or replace a model's configuration: the losses computed when its pairs join
        (names, or {"loss": name, "options": {...}} items). Retention defaults to 7 days."""
        return self._run(self._configure_plan(model, losses, convention, dtype, retention_seconds))

    def model_status(self, model: str) -> dict[str, Any]:
        """The model's configuration and its pending, joined and expired counts."""
        return self._run(self._single("GET", f"/v1/models/{model}"))

    def models(self) -> list[dict[str, Any]]:
        return list(self._run(self._single("GET", "/v1/models"))["models"])

    def delete_model(self, model: str) -> None:
        """Remove the model and everything stored for it."""
        self._run(self._single("DELETE", f"/v1/models/{model}"))

    def log_predictions(self, model: str, ids: Any, predictions: Any, *, timestamps: Any = None) -> LogResult:
        """Store predictions until their labels arrive; those whose labels wait already join now.
        `timestamps`: when each prediction was made (Unix seconds), default its arrival."""
        return self._run(self._log_plan(model, "predictions", ids, predictions, {"timestamps": timestamps}))

    def log_labels(self, model: str, ids: Any, labels: Any, *, sample_weight: Any = None) -> LogResult:
        """Store labels; those whose predictions wait join now, and their losses come back."""
        return self._run(self._log_plan(model, "labels", ids, labels, {"sample_weight": sample_weight}))

    def history(
        self, model: str, start: Any = None, end: Any = None, step: float | None = None, by: str | None = None
    ) -> dict[str, Any]:
        """The model's losses, label coverage and label delays by prediction time (and, with `by`,
        segment): the JSON of GET /v1/models/{model}/history. `start`/`end`: Unix seconds or RFC
        3339 text (default the last 24 h); `step`: bucket width in seconds (default 3600)."""
        return self._run(self._history_plan(model, start, end, step, by))

    def pairs(self, model: str, start: Any = None, end: Any = None, as_: str = "arrow") -> Any:
        """The model's joined pairs made in [start, end) (GET /v1/models/{model}/pairs, read as an
        Arrow stream): a pyarrow Table, or with `as_="pandas"` a DataFrame (needs pandas)."""
        return self._run(self._pairs_plan(model, start, end, as_))

    def logger(self, model: str, **settings: Any) -> PredictionLogger:
        """A buffered logger for services that see one prediction at a time; see `PredictionLogger`."""
        return PredictionLogger(self, model, **settings)


class AsyncLossClient(_Base):
    """The same API as `LossClient`, as coroutines. Use with `async with`, or `await aclose()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.25,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: bool = False,
        body_format: str = "auto",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            retries=retries,
            backoff=backoff,
            chunk_size=chunk_size,
            progress=progress,
            body_format=body_format,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _exchange(self, call: _Call) -> Any:
        content, headers, params = _request_parts(call)
        for attempt in range(self.retries + 1):
            response, error = None, None
            try:
                response = await self._http.request(
                    call.method, call.path, content=content, headers=headers, params=params
                )
            except httpx.TransportError as exc:
                error = exc
            delay = self._delay(attempt, call, response, error)
            if delay is None:
                return self._outcome(call, response, error)
            await anyio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, plan: Plan[T]) -> T:
        try:
            call = next(plan)
            while True:
                call = plan.send(await self._exchange(call))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def loss(
        self,
        loss: str,
        predictions: Any,
        labels: Any,
        *,
        sample_weight: Any = None,
        dtype: str = "float64",
        convention: str = "keras",
        model: str | None = None,
        **options: Any,
    ) -> LossResult:
        return await self._run(
            self._loss_plan(loss, (predictions, labels, sample_weight), dtype, convention, model, options)
        )

    async def evaluate(
        self,
        predictions: Any,
        labels: Any,
        losses: Sequence[str | Mapping[str, Any]],
        *,
        sample_weight: Any = None,
        dtype: str = "float64",
        convention: str = "keras",
        model: str | None = None,
    ) -> list[LossResult]:
        return await self._run(
            self._evaluate_plan((predictions, labels, sample_weight), losses, dtype, convention, model)
        )

    async def losses(self) -> list[dict[str, Any]]:
        return await self._run(self._losses_plan())

    async def health(self) -> dict[str, Any]:
        return await self._run(self._health_plan())

    async def configure_model(
        self,
        model: str,
        losses: Sequence[str | Mapping[str, Any]],
        *,
        convention: str = "keras",
        dtype: str = "float64",
        retention_seconds: float | None = None,
    ) -> dict[str, Any]:
        return await self._run(self._configure_plan(model, losses, convention, dtype, retention_seconds))

    async def model_status(self, model: str) -> dict[str, Any]:
        return await self._run(self._single("GET", f"/v1/models/{model}"))

    async def models(self) -> list[dict[str, Any]]:
        return list((await self._run(self._single("GET", "/v1/models")))["models"])

    async def delete_model(self, model: str) -> None:
        await self._run(self._single("DELETE", f"/v1/models/{model}"))

    async def log_predictions(self, model: str, ids: Any, predictions: Any, *, timestamps: Any = None) -> LogResult:
        return await self._run(self._log_plan(model, "predictions", ids, predictions, {"timestamps": timestamps}))

    async def log_labels(self, model: str, ids: Any, labels: Any, *, sample_weight: Any = None) -> LogResult:
        return await self._run(self._log_plan(model, "labels", ids, labels, {"sample_weight": sample_weight}))

    async def history(
        self, model: str, start: Any = None, end: Any = None, step: float | None = None, by: str | None = None
    ) -> dict[str, Any]:
        return await self._run(self._history_plan(model, start, end, step, by))

    async def pairs(self, model: str, start: Any = None, end: Any = None, as_: str = "arrow") -> Any:
        return await self._run(self._pairs_plan(model, start, end, as_))
