"""The client's exceptions, one per kind of answer; each carries the RFC 9457 problem details."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class LossServiceError(Exception):
    """The service refused or failed a request; `problem` holds its RFC 9457 details."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.errors: list[dict[str, Any]] = list(problem.get("errors") or [])
        # Seconds the service asked the client to wait (its Retry-After), if it did.
        self.retry_after: float | None = None
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}".strip())


class InvalidInputError(LossServiceError):
    """400, 413, 415 or 422: the request itself is wrong; `errors` names each field and index."""


class WholeBatchError(InvalidInputError):
    """413 for a batch larger than a chunk that the client sent whole, because a loss of it reads
    every sample of the batch (see `service.client.splitting`): the message names the loss and
    the option, if any, that lets the batch split."""


class UnauthorizedError(LossServiceError):
    """401 or 403."""


class NotFoundError(LossServiceError):
    """404: an unknown route or loss."""


class OverloadedError(LossServiceError):
    """429, 503 or 504 after the retries were spent."""


class InsufficientStorageError(OverloadedError):
    """507 after the retries were spent: the service's disk is full; nothing of the request was stored."""


class ServerError(LossServiceError):
    """Any other 5xx."""


class UnreachableError(LossServiceError):
    """No HTTP answer at all (connection refused, DNS, timeout) after the retries were spent."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(0, {"title": "Unreachable", "detail": f"{url}: {cause!r}"})


_ERRORS: dict[int, type[LossServiceError]] = {
    400: InvalidInputError,
    413: InvalidInputError,
    415: InvalidInputError,
    422: InvalidInputError,
    401: UnauthorizedError,
    403: UnauthorizedError,
    404: NotFoundError,
    429: OverloadedError,
    503: OverloadedError,
    504: OverloadedError,
    507: InsufficientStorageError,
}
