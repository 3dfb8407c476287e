"""The HTTP clients, sync and async: each carries out the operations' plans of HTTP calls
(`service.client.plans`) over its own httpx client, sleeping between retries its own way.

Bodies are JSON for small batches, an Arrow stream or npz for large ones; large batches go in
chunks of `chunk_size` samples and come back combined; retries follow the rules in
`service.client`'s docstring."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import anyio
import httpx

from service.client.bodies import LogResult
from service.client.calls import Plan, T, _Call, _request_parts
from service.client.errors import LossServiceError
from service.client.logger import PredictionLogger
from service.client.plans import _Base
from service.values.results import LossResult

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CHUNK_SIZE = 100_000


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
                try:
                    answer = self._exchange(call)
                except LossServiceError as exc:  # the plan may read the error, and raise its own
                    call = plan.throw(exc)
                else:
                    call = plan.send(answer)
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
        segments: Sequence[str] | None = None,
        keep_pairs: bool | None = None,
        labels_from: str | None = None,
        compare_to: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Create or replace a model's configuration: the losses computed when its pairs join
        (names, or {"loss": name, "options": {...}} items). Retention defaults to 7 days;
        `segments`: the segment keys its predictions may carry; `keep_pairs`: keep each joined
        pair's rows for the export; `labels_from`: the model whose logged labels serve this one too;
        `compare_to`: the champions /metrics compares this model with."""
        return self._run(
            self._configure_plan(
                model, losses, convention, dtype, retention_seconds, segments, keep_pairs, labels_from, compare_to
            )
        )

    def model_status(self, model: str) -> dict[str, Any]:
        """The model's configuration and its pending, joined and expired counts."""
        return self._run(self._single("GET", f"/v1/models/{model}"))

    def models(self) -> list[dict[str, Any]]:
        return list(self._run(self._single("GET", "/v1/models"))["models"])

    def delete_model(self, model: str) -> None:
        """Remove the model and everything stored for it."""
        self._run(self._single("DELETE", f"/v1/models/{model}"))

    def log_predictions(
        self,
        model: str,
        ids: Any,
        predictions: Any,
        *,
        timestamps: Any = None,
        segments: Mapping[str, Sequence[str | None]] | None = None,
    ) -> LogResult:
        """Store predictions until their labels arrive; those whose labels wait already join now.
        `timestamps`: when each prediction was made (Unix seconds), default its arrival;
        `segments`: for each declared segment key, one value (or None) per prediction."""
        plan = self._log_plan(model, "predictions", ids, predictions, {"timestamps": timestamps}, segments)
        return self._run(plan)

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

    def compare(
        self,
        challenger: str,
        champion: str,
        start: Any = None,
        end: Any = None,
        *,
        loss: int | str | None = None,
        by: str | None = None,
        alpha: float | None = None,
        step: float | None = None,
    ) -> dict[str, Any]:
        """The challenger's loss against the champion's over the ids both joined, with the paired
        difference's anytime-valid confidence sequence and its verdict: the JSON of GET
        /v1/models/{challenger}/compare/{champion} (docs/comparisons.md)."""
        plan = self._compare_plan(challenger, champion, start=start, end=end, loss=loss, by=by, alpha=alpha, step=step)
        return self._run(plan)

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
                try:
                    answer = await self._exchange(call)
                except LossServiceError as exc:  # the plan may read the error, and raise its own
                    call = plan.throw(exc)
                else:
                    call = plan.send(answer)
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
        segments: Sequence[str] | None = None,
        keep_pairs: bool | None = None,
        labels_from: str | None = None,
        compare_to: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        return await self._run(
            self._configure_plan(
                model, losses, convention, dtype, retention_seconds, segments, keep_pairs, labels_from, compare_to
            )
        )

    async def model_status(self, model: str) -> dict[str, Any]:
        return await self._run(self._single("GET", f"/v1/models/{model}"))

    async def models(self) -> list[dict[str, Any]]:
        return list((await self._run(self._single("GET", "/v1/models")))["models"])

    async def delete_model(self, model: str) -> None:
        await self._run(self._single("DELETE", f"/v1/models/{model}"))

    async def log_predictions(
        self,
        model: str,
        ids: Any,
        predictions: Any,
        *,
        timestamps: Any = None,
        segments: Mapping[str, Sequence[str | None]] | None = None,
    ) -> LogResult:
        plan = self._log_plan(model, "predictions", ids, predictions, {"timestamps": timestamps}, segments)
        return await self._run(plan)

    async def log_labels(self, model: str, ids: Any, labels: Any, *, sample_weight: Any = None) -> LogResult:
        return await self._run(self._log_plan(model, "labels", ids, labels, {"sample_weight": sample_weight}))

    async def history(
        self, model: str, start: Any = None, end: Any = None, step: float | None = None, by: str | None = None
    ) -> dict[str, Any]:
        return await self._run(self._history_plan(model, start, end, step, by))

    async def compare(
        self,
        challenger: str,
        champion: str,
        start: Any = None,
        end: Any = None,
        *,
        loss: int | str | None = None,
        by: str | None = None,
        alpha: float | None = None,
        step: float | None = None,
    ) -> dict[str, Any]:
        plan = self._compare_plan(challenger, champion, start=start, end=end, loss=loss, by=by, alpha=alpha, step=step)
        return await self._run(plan)

    async def pairs(self, model: str, start: Any = None, end: Any = None, as_: str = "arrow") -> Any:
        return await self._run(self._pairs_plan(model, start, end, as_))
