"""Every failure becomes RFC 9457 `application/problem+json`; no traceback reaches a client."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from service.engine import LIBRARIES, LossInputError, UnknownLossError, catalogue, libraries
from service.server.api.access import AccessRefusedError, audit, retry_after
from service.server.api.arrays import NON_FINITE
from service.server.api.policy import Dialect, RequestContext, context_of
from service.server.api.problems import ProblemError, clipped, shown
from service.server.api.schemas import UNKNOWN_KEYS, loss_names
from service.store import StoreFailureError, StoreFullError
from service.usecases.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    QuotaError,
    StoreUnavailableError,
    UseCaseError,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("service.api")


def problem_response(
    status: int, detail: str, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def refusal_response(
    dialect: Dialect,
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> Response:
    """A refusal in the shape the route's protocol promises (its policy's `dialect`): Open
    Inference Protocol routes answer `{"error": "..."}` as the protocol requires, every other
    route problem details."""
    if dialect == "oip":
        return Response(
            orjson.dumps({"error": detail}), status_code=status, media_type="application/json", headers=headers
        )
    return problem_response(status, detail, errors, headers)


def _summary(errors: list[dict[str, Any]], total: int | None = None) -> str:
    """The first error, and how many more there are of `total` (default: those listed)."""
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"][1:]) or "body"
    total = len(errors) if total is None else total
    more = f" (and {total - 1} more)" if total > 1 else ""
    return f"{where}: {first['msg']}{more}"


# Pydantic's names for the branches of a union it tried: "constrained-float", "list[float]", ...
_BRANCH = re.compile(r"^(constrained-)?(float|int|str|bool|list|dict)(\[.*\])?$")


def _union_branches_that_fit(raw: list[Any]) -> list[Any]:
    """Errors of a union's branches, without those saying only that the input is not of that
    branch's type when another branch got further (`{"1": -1.0}` for `list[float] | dict[str, float]`
    is "must be >= 0", not "should be a valid list").

    Linear in the errors: every prefix of where the other errors were found is put in a set, and a
    wrong-type error is dropped when its place is in it (thousands of unknown option keys make
    thousands of errors, and comparing each with each would take seconds)."""

    def branch_of(error: Any) -> tuple[Any, ...]:
        return tuple(part for part in error["loc"] if not (isinstance(part, str) and _BRANCH.match(part)))

    def wrong_type(error: Any) -> bool:
        return str(error["type"]).endswith("_type") and any(
            isinstance(p, str) and _BRANCH.match(p) for p in error["loc"]
        )

    wrong = [wrong_type(error) for error in raw]
    reached: set[tuple[Any, ...]] = set()
    for error, is_wrong in zip(raw, wrong, strict=True):
        if not is_wrong:
            place = branch_of(error)
            reached.update(place[:end] for end in range(len(place) + 1))
    return [error for error, is_wrong in zip(raw, wrong, strict=True) if not (is_wrong and branch_of(error) in reached)]


# A problem lists at most this many errors; its detail counts the rest ("(and 4,095 more)").
MAX_REPORTED_ERRORS = 20


def _client_loc(error: Any, tags: frozenset[str]) -> list[Any]:
    """Where Pydantic found `error`, as the client wrote the body: without the loss name a tagged
    union adds and the branch names a plain union adds, echoed keys clipped."""
    loc = list(error["loc"])
    loc = [part for i, part in enumerate(loc) if not (part in tags and i < len(loc) - 1)]
    loc = [part for part in loc if not (isinstance(part, str) and _BRANCH.match(part))]
    return [clipped(part) if isinstance(part, str) else part for part in loc]


def _unknown_loss(tag: str) -> str:
    """Why the loss union found no branch for `tag`: a catalogue name, or "<library>:<metric>"."""
    library, colon, metric = tag.partition(":")
    if colon and library in LIBRARIES:
        try:
            libraries.lookup(library, metric)
        except LossInputError as exc:
            return exc.reason
    names = ", ".join(repr(name) for spec in catalogue() for name in (spec.name, *spec.aliases))
    hint = ""
    found = libraries.find(tag)
    if found is not None:
        title = libraries.LIBRARY_TITLES[found.library]
        hint = f" ({shown(tag)} is {title}'s metric: it takes convention {found.library!r})"
    return f"unknown loss {shown(tag)}{hint}; valid names: {names}"


def validation_problem(exc: ValidationError) -> ProblemError:
    """Pydantic errors as problem details; malformed JSON is a 400, everything else a 422. The
    first MAX_REPORTED_ERRORS errors are listed, and the detail counts them all."""
    raw = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in raw):
        detail = next(e["msg"] for e in raw if e["type"] == "json_invalid")
        return ProblemError(400, f"malformed JSON: {detail.removeprefix('Invalid JSON: ')}")
    tags = frozenset(loss_names())
    kept = _union_branches_that_fit(raw)
    errors = []
    for e in kept[:MAX_REPORTED_ERRORS]:
        loc = _client_loc(e, tags)
        if e["type"] == UNKNOWN_KEYS and e["loc"] and e["loc"][-1] in tags:
            loc.pop()  # raised by the object a tagged union chose: its tag is no key of the body
        msg = e["msg"]
        if e["type"] == "union_tag_invalid":
            loc.append("loss")
            msg = _unknown_loss(str(e["ctx"]["tag"]))
        elif e["type"] == "union_tag_not_found":
            loc.append("loss")
            msg = "field required: the loss to compute"
        index = (e.get("ctx") or {}).get("index")
        if index:
            loc.extend(index)
        errors.append({"loc": ["body", *loc], "msg": msg})
    problem = ProblemError(422, _summary(errors, len(kept)), errors=errors)
    problem.nonfinite_fields = [str(_client_loc(e, tags)[0]) for e in kept if e["type"] == NON_FINITE]
    return problem


def use_case_response(exc: UseCaseError, context: RequestContext, path: str) -> Response:
    """A use case's error as HTTP, in the route's dialect: its status, detail and error list."""
    status, detail, errors, headers = 400, exc.message, None, None
    if isinstance(exc, InvalidInputError):
        status, errors = 422, [{"loc": [exc.part, *_field_path(exc.field), *exc.index], "msg": exc.reason}]
        detail = exc.detail or _summary(errors)
    elif isinstance(exc, NotFoundError):
        status = 404
    elif isinstance(exc, ConflictError):
        status = 409
    elif isinstance(exc, QuotaError):
        # Counted as a `quota` refusal and audited as the keys' refusals are. No Retry-After:
        # usage falls only when rows expire or a model is deleted, which waiting does not bring.
        status, errors = 429, [{"loc": exc.loc, "msg": exc.message}]
        context.refusal = "quota"
        audit(429, context.key or "unknown", path, exc.model, exc.reason)
    elif isinstance(exc, StoreUnavailableError):
        status = 507 if exc.full else 503
        detail = f"{exc.reason}; nothing of this request was stored; retry after {exc.retry_after} s"
        headers = {"Retry-After": str(exc.retry_after)}
    return refusal_response(context.policy.dialect, status, detail, headers, errors)


def _field_path(field: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in field.split(".")]


def engine_problem(exc: LossInputError) -> ProblemError:
    path = [int(part) if part.isdigit() else part for part in exc.field.split(".")]
    loc = ["body", *path, *exc.index]
    errors = [{"loc": loc, "msg": exc.reason}]
    return ProblemError(422, _summary(errors), errors=errors)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at this path (asked of the routes, which may be nested)."""
    allowed = []
    for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def _dialect(request: Request) -> Dialect:
    return context_of(request.scope).policy.dialect


def _logged(request: Request) -> str:
    """The request's decoded path for a log line: quoted, escaped (a CR or LF in it cannot start
    a line of its own) and clipped to 200 characters."""
    return shown(request.scope["path"], 200)


async def _on_problem(request: Request, exc: Exception) -> Response:
    """A refusal the HTTP layer raised, answered in the route's dialect (OIP routes promise `{"error"}`)."""
    assert isinstance(exc, ProblemError)
    return refusal_response(_dialect(request), exc.status, exc.detail, exc.headers, exc.errors)


async def _on_loss_input(_: Request, exc: Exception) -> Response:
    """The engine's refusal of an input, as a 422 naming the field and index the client wrote."""
    assert isinstance(exc, LossInputError)
    problem = engine_problem(exc)
    return problem_response(problem.status, problem.detail, problem.errors)


async def _on_unknown_loss(_: Request, exc: Exception) -> Response:
    """A loss the catalogue does not hold, as a 404 listing the names it does, so a typo is easy to fix."""
    assert isinstance(exc, UnknownLossError)
    return problem_response(404, f"no loss named {shown(exc.name)}; valid names: {', '.join(exc.valid)}")


async def _on_http(request: Request, exc: Exception) -> Response:
    """Starlette's own 404s and 405s as problem details, a 405's Allow naming every method of the path."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; several routes share
        # /v1/models/{model} (GET, PUT, DELETE), and Allow must list them all.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem_response(exc.status_code, str(exc.detail), headers=headers)


async def _on_request_validation(_: Request, exc: Exception) -> Response:
    """FastAPI's checks of query and path parameters, as a 422 listing each, like a body's errors."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    return problem_response(422, _summary(errors) if errors else "invalid request", errors)


async def _on_access_refused(request: Request, exc: Exception) -> Response:
    """A key refused by a route (its model or its rate), audited and counted as the guard's refusals are."""
    assert isinstance(exc, AccessRefusedError)
    context = context_of(request.scope)
    if exc.status == 429:
        context.refusal = "rate_limited"
    audit(exc.status, context.key or "unknown", request.scope["path"], exc.model, exc.reason)
    headers = {"Retry-After": retry_after(exc.retry_after)} if exc.retry_after else None
    return refusal_response(context.policy.dialect, exc.status, exc.detail, headers)


async def _on_disconnect(request: Request, _: Exception) -> Response:
    """A client gone before its body arrived: a 400 that nobody reads, logged as info, not as a fault."""
    # No fault of the service: a traceback here would page someone for a closed laptop.
    log.info("client disconnected before its request body arrived: %s %s", request.method, _logged(request))
    return problem_response(400, "the client closed the connection before the request body arrived")


async def _on_use_case(request: Request, exc: Exception) -> Response:
    """A use case's error, or a store failure outside one, as the HTTP status it stands for."""
    # A store failure is logged by the store once per episode (service.store.health), not
    # once per request; one that reaches here outside a use case is rendered as one.
    if isinstance(exc, StoreFailureError):
        exc = StoreUnavailableError(exc.reason, exc.retry_after, isinstance(exc, StoreFullError))
    assert isinstance(exc, UseCaseError)
    return use_case_response(exc, context_of(request.scope), request.scope["path"])


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    """Anything else: its traceback into the log, a 500 without it to the client."""
    log.exception("unhandled error on %s %s", request.method, _logged(request))
    return problem_response(500, "internal error; the request was logged")


# Each exception class and its handler, in the order the app registers them; an exception is
# handled by the handler of the nearest class in its MRO.
HANDLERS: tuple[tuple[type[Exception], Callable[[Request, Exception], Awaitable[Response]]], ...] = (
    (ProblemError, _on_problem),
    (AccessRefusedError, _on_access_refused),
    (LossInputError, _on_loss_input),
    (UnknownLossError, _on_unknown_loss),
    (StarletteHTTPException, _on_http),
    (RequestValidationError, _on_request_validation),
    (ClientDisconnect, _on_disconnect),
    (UseCaseError, _on_use_case),
    (StoreFailureError, _on_use_case),
    (Exception, _on_unexpected),
)


def install_error_handlers(app: FastAPI) -> None:
    """Register `HANDLERS` with the app: every failure is answered as problem details (or OIP's `{"error"}`)."""
    for exception, handler in HANDLERS:
        app.add_exception_handler(exception, handler)
