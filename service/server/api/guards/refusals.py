"""What the guards answer when they refuse: the refusals each route may meet, and how one is sent."""

from __future__ import annotations

from starlette.types import Message, Scope, Send

from service.server.api.errors import refusal_response
from service.server.api.policy import context_of
from service.server.api.problems import ProblemError

# What each guard's refusal means, for the routes' OpenAPI responses.
KEY_REFUSALS = {
    401: "Missing or invalid API key (when API keys are configured)",
    403: "The API key lacks the scope this route needs, or may not use the model named",
    429: "The API key is over its requests or values per second; see Retry-After",
}
REFUSALS = {
    **KEY_REFUSALS,
    408: "The body did not arrive within LOSS_SERVICE_REQUEST_TIMEOUT (the connection is closed)",
    413: "Body larger than LOSS_SERVICE_MAX_BODY_BYTES (after gzip inflation) or than half of "
    "LOSS_SERVICE_MEMORY_BUDGET, an array over LOSS_SERVICE_MAX_ELEMENTS numbers, or a request estimated to need "
    "more than LOSS_SERVICE_MEMORY_BUDGET",
    503: "Overloaded: more than LOSS_SERVICE_MAX_CONCURRENT heavy requests, not enough of LOSS_SERVICE_MEMORY_BUDGET "
    "free (for the body as it arrives, or for the request), too many bodies arriving or connections open; see "
    "Retry-After",
    504: "The loss was not computed within LOSS_SERVICE_REQUEST_TIMEOUT",
}


def refused(status: int, detail: str, headers: dict[str, str] | None = None) -> ProblemError:
    # Raised while a route reads the body, a ProblemError reaches the app's own handler (a
    # generic exception would become a 500); raised before the app runs, it is sent by `refuse`.
    return ProblemError(status, detail, headers=headers)


async def refuse(send: Send, refusal: ProblemError, scope: Scope) -> None:
    response = refusal_response(context_of(scope).policy.dialect, refusal.status, refusal.detail, refusal.headers)
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    # A refusal's plain response never calls receive: no mutant of this line can be observed.
    return {"type": "http.disconnect"}  # pragma: no mutate


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"
