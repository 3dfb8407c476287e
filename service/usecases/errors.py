"""The use cases' errors: one hierarchy, each kind saying what went wrong in the domain's words;
the transports decide the status and the shape (`service.server.api.errors` renders them)."""

from __future__ import annotations

from collections.abc import Sequence


class UseCaseError(Exception):
    """A request the use case refuses; `message` says why, in words a client can act on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(UseCaseError):
    """Bad input at `field` (dotted, as the client wrote the body) and `index`, for `reason`.
    `detail`: the one-line summary, when it is not "<field>.<index>: <reason>". `part`: where the
    field is, "body" or "query" (a query parameter)."""

    def __init__(
        self, field: str, reason: str, index: Sequence[int] = (), detail: str | None = None, part: str = "body"
    ) -> None:
        super().__init__(reason)
        self.field, self.reason, self.index, self.detail, self.part = field, reason, tuple(index), detail, part


class ConflictError(UseCaseError):
    """The request contradicts what the store keeps (a segment key that history is kept by)."""


class NotFoundError(UseCaseError):
    """What the request names does not exist."""


class QuotaError(UseCaseError):
    """A bound on what a key or a model may hold: `reason` names it (a quota or `max_pending`),
    `loc` where the error list points, `model` the model it concerns. Waiting frees nothing."""

    def __init__(self, message: str, reason: str, loc: Sequence[str], model: str) -> None:
        super().__init__(message)
        self.reason, self.loc, self.model = reason, list(loc), model


class StoreUnavailableError(UseCaseError):
    """The store cannot take the request now (`full`: out of space); retry after `retry_after` s."""

    def __init__(self, reason: str, retry_after: int, full: bool) -> None:
        super().__init__(reason)
        self.reason, self.retry_after, self.full = reason, retry_after, full
