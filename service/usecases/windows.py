"""The time windows the history, the export and the comparisons read: query times as Unix
seconds or RFC 3339, a window's defaults, and its buckets, refused as query problems."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from service.usecases.errors import InvalidInputError

DEFAULT_WINDOW_SECONDS = 86400.0
DEFAULT_STEP_SECONDS = 3600.0
MAX_BUCKETS = 10_000


def query_problem(field: str, reason: str) -> InvalidInputError:
    return InvalidInputError(field, reason, part="query")


def parse_time(text: str, field: str) -> float:
    """Unix seconds (a number) or an RFC 3339 date-time with its offset."""
    try:
        seconds = float(text)
    except ValueError:
        return _rfc3339(text, field)
    if not math.isfinite(seconds) or abs(seconds) > 1e13:
        raise query_problem(field, f"expected Unix seconds, got {text[:64]!r}")
    return seconds


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise query_problem("step", f"expected a number of seconds, got {text[:64]!r}") from None
    if not math.isfinite(seconds):
        raise query_problem("step", f"expected a number of seconds, got {text[:64]!r}")
    return seconds


def _rfc3339(text: str, field: str) -> float:
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise query_problem(
            field, f"expected Unix seconds or an RFC 3339 date-time (2026-01-31T12:00:00Z), got {text[:64]!r}"
        ) from None
    if parsed.tzinfo is None:
        raise query_problem(field, f"an RFC 3339 date-time needs its offset (Z or +hh:mm), got {text[:64]!r}")
    return parsed.timestamp()


@dataclass(frozen=True)
class Window:
    """The buckets asked for: `count` buckets of `step` seconds from `start`."""

    start: float
    end: float
    step: float
    count: int


def window(start: str | None, end: str | None, step: str | None, now: float) -> Window:
    """The query's window: `end` default now; `start` default 24 h before `end`, floored to a
    multiple of the step (so the default reads rollups); buckets are whole steps, the last one
    reaching past `end` where the window is no multiple of the step."""
    width = DEFAULT_STEP_SECONDS if step is None else _seconds(step)
    if width < 1:
        raise query_problem("step", f"must be at least 1 second, got {step}")
    last = now if end is None else parse_time(end, "end")
    first = math.floor((last - DEFAULT_WINDOW_SECONDS) / width) * width if start is None else parse_time(start, "start")
    if last <= first:
        raise query_problem("end", f"must be after start ({first:g}), got {last:g}")
    count = math.ceil((last - first) / width)
    if count > MAX_BUCKETS:
        raise query_problem(
            "step", f"makes {count:,} buckets of {width:g} s from start to end; at most {MAX_BUCKETS:,} per answer"
        )
    return Window(first, last, width, count)
