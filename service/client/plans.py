"""What the sync and async clients share: their settings, and each operation written once as a
plan of HTTP calls (`_Call`), which either client carries out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from service.client.bodies import (
    ARRAY_FIELDS,
    ARROW,
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
from service.client.calls import (
    Plan,
    _Call,
    _decode,
    _query,
    _raise_for_status,
    _retry_delay,
    _safe_to_repeat,
    _table,
)
from service.client.errors import InvalidInputError, UnreachableError, WholeBatchError
from service.client.splitting import Catalogue, Splitting, by_name, splitting
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
        self._catalogue: Catalogue | None = None
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

    def _catalogue_plan(self) -> Plan[Catalogue]:
        """The service's catalogue by name and alias, asked once per client, and only when a batch
        is larger than a chunk: it says which losses need the whole batch and which options are
        cut with a chunk (`service.client.splitting`)."""
        if self._catalogue is None:
            self._catalogue = by_name((yield _Call("GET", "/v1/losses"))["losses"])
        return self._catalogue

    def _splittings(
        self, body: Mapping[str, Any], items: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> Plan[list[Splitting]]:
        """How the batch of each (loss, options) item splits; nothing is asked for a batch that
        fits in one chunk."""
        samples = len(body["predictions"])
        if samples <= self.chunk_size:
            return [Splitting(None, frozenset()) for _ in items]
        catalogue = yield from self._catalogue_plan()
        splits = [splitting(catalogue, loss, body["convention"], options) for loss, options in items]
        for split, (_, options) in zip(splits, items, strict=True):
            split.check(options, samples)
        return splits

    def _sent(self, call: _Call, splits: Sequence[Splitting], samples: int) -> Plan[Any]:
        """The answer to `call`; a 413 for a batch sent whole because a loss needs it whole says so."""
        try:
            return (yield call)
        except InvalidInputError as exc:
            reasons = [split.whole for split in splits if split.whole is not None]
            if exc.status != 413 or not reasons or samples <= self.chunk_size:
                raise
            detail = (
                f"the batch of {samples} samples is sent whole, not split into chunks of {self.chunk_size}: "
                f"{'; '.join(reasons)}. The service refused it whole: {exc.problem.get('detail', '')}"
            )
            error = WholeBatchError(exc.status, {**exc.problem, "detail": detail})
            error.retry_after = exc.retry_after
            raise error from exc

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
        samples = len(body["predictions"])
        (split,) = yield from self._splittings(body, [(loss, options)])
        body_format = self._body_format(body)
        size = samples if split.whole is not None else self.chunk_size

        def sliced(start: int, stop: int) -> dict[str, Any]:
            return {"options": split.cut(options, start, stop)}

        parts = []
        for chunk in _planned(body, size, self.progress, sliced):
            call = _Call("POST", "/v1/loss", chunk, body_format)
            parts.append(LossResult.read((yield from self._sent(call, [split], samples))))
        return combine(parts)

    def _evaluate_plan(
        self,
        arrays: tuple[Any, Any, Any],
        losses: Sequence[str | Mapping[str, Any]],
        dtype: str,
        convention: str,
        model: str | None,
    ) -> Plan[list[LossResult]]:
        """One request per chunk for all the losses; the batch goes whole when one of them needs it."""
        body = {**_batch(*arrays, dtype, convention, model), "losses": [_loss_item(item) for item in losses]}
        samples = len(body["predictions"])
        items = [(item["loss"], item["options"]) for item in body["losses"]]
        splits = yield from self._splittings(body, items)
        size = samples if any(split.whole is not None for split in splits) else self.chunk_size

        def sliced(start: int, stop: int) -> dict[str, Any]:
            return {
                "losses": [
                    {**item, "options": split.cut(item["options"], start, stop)}
                    for item, split in zip(body["losses"], splits, strict=True)
                ]
            }

        responses = []
        for chunk in _planned(body, size, self.progress, sliced):
            responses.append((yield from self._sent(_Call("POST", "/v1/evaluate", chunk), splits, samples)))
        return _per_loss(responses, len(body["losses"]))

    def _configure_plan(
        self,
        model: str,
        losses: Sequence[str | Mapping[str, Any]],
        convention: str,
        dtype: str,
        retention_seconds: float | None,
        segments: Sequence[str] | None = None,
        keep_pairs: bool | None = None,
        labels_from: str | None = None,
        compare_to: Sequence[str] | None = None,
    ) -> Plan[dict[str, Any]]:
        body: dict[str, Any] = {
            "losses": [_loss_item(item) for item in losses],
            "convention": convention,
            "dtype": dtype,
        }
        if retention_seconds is not None:
            body["retention_seconds"] = retention_seconds
        if segments is not None:
            body["segments"] = list(segments)
        if keep_pairs is not None:
            body["keep_pairs"] = keep_pairs
        if labels_from is not None:
            body["labels_from"] = labels_from
        if compare_to is not None:
            body["compare_to"] = list(compare_to)
        return dict((yield _Call("PUT", f"/v1/models/{model}", body)))

    def _log_plan(
        self,
        model: str,
        side: str,
        ids: Any,
        rows: Any,
        extra: Mapping[str, Any],
        segments: Mapping[str, Sequence[str | None]] | None = None,
    ) -> Plan[LogResult]:
        """Rows sent in chunks of `chunk_size`, each with its slice of every segment key's values;
        each chunk may be retried, since a row sent again is a duplicate: never stored, joined or
        recorded twice."""
        row_ids = _row_ids(ids)
        arrays = {side: _check_numbers(as_array(rows), side)}
        arrays.update({key: _check_numbers(as_array(v), key) for key, v in extra.items() if v is not None})
        for key, array in arrays.items():
            if array.ndim == 0 or len(array) != len(row_ids):
                raise ValueError(f"{key} must have one row per id ({len(row_ids)}), got shape {list(array.shape)}")
        values = {key: list(column) for key, column in (segments or {}).items()}
        for key, column in values.items():
            if len(column) != len(row_ids):
                raise ValueError(f"segments[{key!r}] must have one value per id ({len(row_ids)}), got {len(column)}")
        answers = []
        for start in range(0, len(row_ids), self.chunk_size):
            part = slice(start, start + self.chunk_size)
            body = {"ids": row_ids[part], **{key: array[part] for key, array in arrays.items()}}
            if values:
                body["segments"] = {key: column[part] for key, column in values.items()}
            answers.append((yield _Call("POST", f"/v1/models/{model}/{side}", body, idempotent=True)))
        return _combined_log(answers)

    def _losses_plan(self) -> Plan[list[dict[str, Any]]]:
        return list((yield _Call("GET", "/v1/losses"))["losses"])

    def _single(self, method: str, path: str) -> Plan[Any]:
        return (yield _Call(method, path))

    def _history_plan(self, model: str, start: Any, end: Any, step: Any, by: str | None) -> Plan[dict[str, Any]]:
        params = _query(start=start, end=end, step=step, by=by)
        return dict((yield _Call("GET", f"/v1/models/{model}/history", params=params)))

    def _compare_plan(self, challenger: str, champion: str, **query: Any) -> Plan[dict[str, Any]]:
        params = _query(**query)
        return dict((yield _Call("GET", f"/v1/models/{challenger}/compare/{champion}", params=params)))

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
