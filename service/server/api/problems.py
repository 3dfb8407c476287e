"""The HTTP layer's own exception: a status and RFC 9457 problem details, rendered by errors.py."""

from __future__ import annotations

from typing import Any

from service.values.text import clipped, shown  # the HTTP layer's messages clip as every room's do

__all__ = ["ProblemError", "clipped", "shown"]


class ProblemError(Exception):
    """An HTTP error with problem details, raised by the HTTP layer."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers
        self.nonfinite_fields: list[str] = []
