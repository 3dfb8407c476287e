"""Reading request headers straight from the ASGI scope, and those that carry a size."""

from __future__ import annotations

from starlette.types import Scope


def request_header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (given in lower case, as servers pass names), or None.

    Starlette's `request.headers` copies the header list to build its mapping, and a header that
    is absent costs it a KeyError, for what one loop finds."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def byte_count(value: str | None) -> int | None:
    """A header holding a size in bytes (Content-Length, Inference-Header-Content-Length) as an int;
    None when absent or not plain ASCII digits (`int` would also take "+1", " 1" or "١")."""
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    return int(value)
