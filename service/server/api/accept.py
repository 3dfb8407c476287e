"""Content negotiation for answers that come in several media types (RFC 9110, section 12.5.1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from service.server.api.problems import ProblemError, clipped

T = TypeVar("T")


def negotiated(accept: str | None, offered: Mapping[T, str], default: T) -> T:
    """The offer the Accept header prefers (highest q, then the order it lists them), `default`
    for no header or for `*/*`; a 406 problem naming the header when it accepts none of them."""
    if accept is None or not accept.strip():
        return default
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        media, *parameters = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media and 0 < quality <= 1:
            ranked.append((-quality, position, media.lower()))
    for _, _, media in sorted(ranked):
        if media == "*/*":
            return default
        # A range (application/*) takes the default where it fits, else the first offer it fits.
        for choice in (default, *offered):
            offer = offered[choice]
            if media in (offer, f"{offer.split('/')[0]}/*"):
                return choice
    listed = ", ".join(offered.values())
    raise ProblemError(
        406,
        f"Accept {clipped(accept)!r} accepts none of the media types this route answers in: {listed}",
        errors=[{"loc": ["header", "accept"], "msg": f"accepts none of {listed}"}],
    )
