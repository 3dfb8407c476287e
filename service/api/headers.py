"""Reading request headers that carry a size."""

from __future__ import annotations


def byte_count(value: str | None) -> int | None:
    """A header holding a size in bytes (Content-Length, Inference-Header-Content-Length) as an int;
    None when absent or not plain ASCII digits (`int` would also take "+1", " 1" or "١")."""
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    return int(value)
