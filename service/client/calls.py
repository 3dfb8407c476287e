"""One HTTP exchange of a client's plan (`_Call`), and what becomes of its answer: decoded, raised
as the error its status names, or retried after the delay the server asks for."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx
import numpy as np

from service.client.bodies import ARROW, NPZ, _encode
from service.client.errors import (
    _ERRORS,
    LossServiceError,
    ServerError,
)

RETRYABLE_STATUSES = {503}


# Statuses retried (with their Retry-After) only on calls that are safe to repeat: a logged row
# sent again is a duplicate, never stored or recorded twice.
RETRYABLE_WHEN_SAFE = {507}


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
