"""A segment value as the service keeps it: a string of 1-64 printable characters, or null; an
integer (which KServe's inference requests may carry) is kept as its decimal text. One rule for
POST .../predictions and for inference events."""

from __future__ import annotations

MAX_SEGMENT_VALUE_LENGTH = 64
# JSON's names for the other values a request can hold.
_KINDS = {bool: "a boolean", float: "a number", list: "an array", dict: "an object"}


def segment_value(value: object) -> str | None:
    """`value` as a segment value (None: null), or ValueError naming why it cannot be one."""
    if value is None:
        return None
    if type(value) is int:
        value = str(value)
    if type(value) is not str:
        raise ValueError(
            f"a segment value is a string, an integer or null, got {_KINDS.get(type(value), type(value).__name__)}"
        )
    if not 1 <= len(value) <= MAX_SEGMENT_VALUE_LENGTH:
        raise ValueError(f"a segment value has 1 to {MAX_SEGMENT_VALUE_LENGTH} characters, this one {len(value):,}")
    if not value.isprintable():
        raise ValueError(f"a segment value holds printable characters only, got {value[:64]!r}")
    return value
