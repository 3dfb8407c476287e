"""How a value someone sent is shown back in a message: clipped, so an error never echoes a megabyte."""

from __future__ import annotations


def clipped(text: str, limit: int = 64) -> str:
    """`text` cut to `limit` characters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def shown(value: object, limit: int = 64) -> str:
    """`repr(value)`, clipped."""
    return clipped(repr(value), limit)
