"""What the sync and async clients share: their settings, and each operation written once as a
plan of HTTP calls (`_Call`), which either client carries out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from service.client.bodies import (
    ARRAY_FIELDS,
    BINARY_THRESHOLD,
    BODY_FORMATS,
    LogResult,
    _batch,
    _check_numbers,
    _combined_log,
    _fits_arrow,
    _loss_item,
    _per_loss,
    _planned,
    _row_ids,
)
from service.client.calls import Plan, _Call, _decode, _raise_for_status, _retry_delay, _safe_to_repeat
from service.client.errors import (
    UnreachableError,
)
from service.values.columns import as_array
from service.values.results import LossResult, combine


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

    def _health_plan(self) -> Plan[dict[str, Any]]:
        live = yield _Call("GET", "/livez")
        ready = yield _Call("GET", "/readyz", raw=True)  # 503 while starting or draining is an answer
        return {
            "live": live.get("status") == "ok",
            "ready": ready.get("status") == "ready",
            "status": ready.get("status"),
        }
