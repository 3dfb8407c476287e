"""Request guards, as pure ASGI middleware: API keys, body limits (gzip included) and bounds on
heavy requests in number and time. (Request ids and access logs are monitoring's.)

Each refuses before the body is read in full: with RFC 9457 problem details, or on the Open
Inference Protocol's /v2 routes with its `{"error": "..."}` body.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from typing import Any

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.access import PRINCIPAL, KeyRing, audit, path_model, required_scope, retry_after
from service.api.errors import refusal_response
from service.api.headers import byte_count, request_header
from service.api.problems import ProblemError, shown

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
HEAVY_PREFIXES = ("/v1/loss", "/v1/evaluate", "/v1/models/", "/v2/models/")
PROTECTED_PREFIXES = ("/v1/", "/v2")


def _refused(status: int, detail: str, headers: dict[str, str] | None = None) -> ProblemError:
    # Raised while a route reads the body, a ProblemError reaches the app's own handler (a
    # generic exception would become a 500); raised before the app runs, it is sent by `_refuse`.
    return ProblemError(status, detail, headers=headers)


async def _refuse(send: Send, refusal: ProblemError, scope: Scope) -> None:
    response = refusal_response(scope["path"], refusal.status, refusal.detail, refusal.headers)
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class ApiKeys:
    """Bearer API keys on /v1 and /v2 (and /metrics if asked); health endpoints stay open.

    A valid key must hold the scope its route needs and may name only its models in the path;
    its requests-per-second bucket is taken from here. Models named in a body, and the values a
    body carries, are checked once the route has parsed it (`access.authorize`).
    """

    def __init__(self, app: ASGIApp, keys: KeyRing, protect_metrics: bool, router: Router) -> None:
        self.app = app
        self.keys = keys
        self.protect_metrics = protect_metrics
        self.router = router

    def _routed(self, scope: Scope) -> bool:
        """A route answers this method at this path; otherwise the router's 404 or 405 is the answer."""
        return any(route.matches(scope)[0] == Match.FULL for route in self.router.routes)

    def _protected(self, path: str) -> bool:
        if path.startswith("/v2/health/"):
            return False  # probes stay open, as /livez and /readyz do
        return path.startswith(PROTECTED_PREFIXES) or (self.protect_metrics and path == "/metrics")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or not self._protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        path, state = scope["path"], scope.setdefault("state", {})
        header = request_header(scope, b"authorization") or ""
        scheme, _, token = header.partition(" ")
        principal = self.keys.match(token.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            challenge = 'Bearer realm="loss-service"' + ("" if not header else ', error="invalid_token"')
            detail = "an API key is required: Authorization: Bearer <key>" if not header else "the API key is not valid"
            audit(401, "unknown", path, None, "missing_key" if not header else "invalid_key")
            await _refuse(send, _refused(401, detail, {"WWW-Authenticate": challenge}), scope)
            return
        state["key"] = principal.name
        if not self._routed(scope):
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["method"], path)
        model = path_model(path)
        refusal = None
        if needed is not None and needed not in principal.scopes:
            refusal = _refused(403, f"the API key {principal.name!r} lacks the scope {needed!r} this route needs")
            reason = "scope"
        elif model is not None and not principal.may_use(model):
            refusal = _refused(403, f"the API key {principal.name!r} may not use model {shown(model)}")
            reason = "model"
        elif principal.requests is not None and (wait := principal.requests.take(1)):
            rate = f"{principal.requests.rate:g}"
            refusal = _refused(429, f"the API key {principal.name!r} is over its {rate} requests per second", None)
            refusal.headers = {"Retry-After": retry_after(wait)}
            reason, state["refusal"] = "requests_rate", "rate_limited"
        if refusal is not None:
            audit(refusal.status, principal.name, path, model, reason)
            await _refuse(send, refusal, scope)
            return
        state[PRINCIPAL] = principal
        await self.app(scope, receive, send)


# The most a gzip body inflates to in one step: one ASGI message of the inflated body.
INFLATED_PIECE = 256 * 1024


class BodyLimit:
    """Refuses bodies over `max_bytes` (413): by Content-Length at once, else while streaming.

    `Content-Encoding: gzip` bodies are inflated here, with the limit applied to the inflated
    size, so a small compressed bomb is refused after at most `max_bytes` of output. They are
    passed on in pieces of at most INFLATED_PIECE bytes, however little was sent: the memory
    budget (`HeavyRequests`) counts each piece before the next is inflated, so 58 KB that inflate
    to 60 MB are never 60 MB in one step.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = byte_count(request_header(scope, b"content-length"))
        if length is not None and length > self.max_bytes:
            await _refuse(send, _refused(413, self._too_large(length)), scope)
            return
        encoding = (request_header(scope, b"content-encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            await _refuse(send, _refused(415, f"Content-Encoding {encoding!r} is not supported; use gzip"), scope)
            return
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
        if inflater is not None:
            # Downstream sees the inflated body: its length and encoding are no longer those headers.
            scope = {
                **scope,
                "headers": [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"content-encoding")],
            }
        received = 0
        started = False
        pending = b""  # compressed bytes not inflated yet (the inflater's unconsumed tail)
        full = done = False  # the last piece filled its size (more may come out); the last message is in

        async def limited() -> Message:
            nonlocal received, pending, full, done
            if inflater is None:
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_bytes:
                        raise _refused(413, self._too_large(received, streaming=True))
                return message
            if done and not pending and not full:  # the body was passed on whole: as the server's receive
                return await receive()
            while True:
                if not pending and not full and not done:
                    message = await receive()
                    if message["type"] != "http.request":
                        return message
                    pending, done = message.get("body", b""), not message.get("more_body", False)
                most = min(INFLATED_PIECE, self.max_bytes - received + 1)
                piece = self._inflate(inflater, pending, most)
                # A piece short of `most` took all the inflater had; a full one may leave more inside it.
                pending, full = inflater.unconsumed_tail, len(piece) == most and not inflater.eof
                received += len(piece)
                if received > self.max_bytes:
                    raise _refused(413, self._too_large(received, streaming=True))
                more = not done or bool(pending) or full
                if not more and not inflater.eof:
                    raise _refused(400, "malformed gzip body: it ends before the gzip stream does")
                if piece or not more:
                    return {"type": "http.request", "body": piece, "more_body": more}

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except ProblemError as refusal:
            if started:
                raise
            await _refuse(send, refusal, scope)

    @staticmethod
    def _inflate(inflater: Any, chunk: bytes, most: int) -> bytes:
        try:
            out: bytes = inflater.decompress(chunk, most)
        except zlib.error as exc:
            raise _refused(400, f"malformed gzip body: {exc}") from None
        return out

    def _too_large(self, size: int, streaming: bool = False) -> str:
        what = "more than " if streaming else ""
        return (
            f"the request body is {what}{size:,} bytes; the limit is {self.max_bytes:,} (LOSS_SERVICE_MAX_BODY_BYTES)"
        )


class Deadline:
    """`asyncio.timeout` for less: one timer, no async context manager. In-process, a 32 x 10
    /v1/loss request took ~138 us under it against ~145 us under `asyncio.timeout` (three
    alternating runs each); anyio's CancelScope cost more still.

    Once `seconds` pass, the current task is cancelled: it sees a CancelledError at its next
    await. Leaving the block, that CancelledError is swallowed when the deadline alone asked for
    it; one requested elsewhere too (a server shutting down) goes on. As in `asyncio.timeout`,
    the task's count of cancellation requests tells them apart. `expired` says whether it passed.
    """

    __slots__ = ("cancelling", "expired", "handle", "task")

    def __init__(self, seconds: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline needs a running task")
        self.task = task
        self.cancelling = task.cancelling()
        self.expired = False
        self.handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        self.expired, self.handle = True, None
        self.task.cancel()

    def stop(self) -> None:
        """Let the block run to its end whatever the time (a response under way is left to finish)."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> bool:
        self.stop()
        if not self.expired:
            return False
        return self.task.uncancel() <= self.cancelling and kind is asyncio.CancelledError


HEAVY_SLOT = "heavy_slot"  # scope state key: the request's `Slot`, for work that outlives it
BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))  # the requests whose bodies are counted as they arrive
# A body that arrives whole in one message of at most this size is not counted as it arrives: a
# connection reads this much ahead of the app in any case (uvicorn's high-water mark), and the
# route counts the body with its parse next. Small requests take no lock for their body.
SMALL_BODY = 64 * 1024
# Connections per worker, and bodies arriving at once: one per this many bytes of the budget.
CONNECTION_BUDGET_BYTES = 1024 * 1024
MIN_CONNECTIONS = 64


def connection_limit(memory_budget: int) -> int:
    """How many connections one worker keeps open, and how many bodies it lets arrive at once:
    one per MiB of its memory budget, at least 64.

    Each connection may hold up to ~320 KiB that the budget does not see: uvicorn reads up to
    64 KiB of a body ahead of the app before it stops reading, plus one socket read of up to
    256 KiB. At one per MiB, all of them together hold at most about a third of the budget
    beside it (1,024 connections and ~320 MiB beside the default 1 GiB budget, in a 2 GiB pod).
    """
    return max(MIN_CONNECTIONS, memory_budget // CONNECTION_BUDGET_BYTES)


class Slot:
    """One heavy request's claim on the concurrency bound, shared with any thread it starts.

    A timed-out request answers 504 at once, but its thread cannot be stopped; the thread holds
    the slot until it finishes, so abandoned work still counts against the bound.
    """

    def __init__(self, limiter: HeavyRequests, reserved: int = 0) -> None:
        self.limiter = limiter
        self.holders = 1
        self.reserved = reserved  # bytes of the worker's memory budget (its body's, at first)

    def hold(self) -> None:
        with self.limiter.lock:
            self.holders += 1

    def release(self) -> None:
        with self.limiter.lock:
            self.holders -= 1
            if self.holders == 0:
                self.limiter.busy -= 1
                self.limiter.reserved -= self.reserved
                self.reserved = 0

    def reserve(self, nbytes: int, purpose: str) -> None:
        """Hold `nbytes` of the worker's memory budget for this request, in place of what it held
        (at first, what its body held as it arrived).

        More than the whole budget: 413, the request can never run here. More than is free beside
        the other requests: 503 with Retry-After. Shrinking always succeeds.
        """
        limiter = self.limiter
        if nbytes > limiter.memory_budget:
            raise _refused(
                413,
                f"{purpose} needs an estimated {_mib(nbytes)} of memory; one worker's requests may hold "
                f"{_mib(limiter.memory_budget)} (LOSS_SERVICE_MEMORY_BUDGET): send fewer samples, or fewer losses",
            )
        with limiter.lock:
            if nbytes > self.reserved and limiter.reserved - self.reserved + nbytes > limiter.memory_budget:
                free = limiter.memory_budget - limiter.reserved
                detail = (
                    f"{purpose} needs an estimated {_mib(nbytes)} of memory and {_mib(free)} of this worker's "
                    "budget is free; retry shortly"
                )
                raise _refused(503, detail, {"Retry-After": str(limiter.retry_after)})
            limiter.reserved += nbytes - self.reserved
            self.reserved = nbytes


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


class Arrival:
    """One request body's hold on the worker's memory budget while it arrives.

    A body of several messages holds what has arrived so far (inflated, for gzip), counted before
    the next message is read, and counts among the bodies arriving; all bodies still arriving may
    hold at most half of the budget together (`HeavyRequests.body_share`), the other half stays
    for requests whose bodies are in. Once whole, it holds twice its size (its pieces and the
    body joined from them) and leaves the bodies arriving; a heavy request's `Slot` then takes
    that hold over, and turns it into its parse's estimate (which counts the body again: one
    hold, replaced, never two). What is held is given back when the request ends, unless a slot
    took it.
    """

    __slots__ = ("arriving", "counted", "held", "limiter", "received", "scope")

    def __init__(self, limiter: HeavyRequests, scope: Scope) -> None:
        self.limiter = limiter
        self.scope = scope
        self.received = 0  # body bytes so far
        self.arriving = 0  # bytes held among the bodies arriving
        self.held = 0  # bytes held of the whole budget (these included)
        self.counted = False  # among the bodies arriving

    def take(self, size: int, more: bool) -> None:
        """Count a message of `size` body bytes (`more`: others follow), or refuse the body: 413
        if it alone is more than the bodies may hold, 503 with Retry-After if it does not fit
        beside the others."""
        if not more and not self.counted:  # the whole body, in one message
            if size > SMALL_BODY:
                self._whole(size, size)
            return
        self.received += size
        if more:
            self._arrive()
        else:
            self._whole(self.received, 2 * self.received)

    def _arrive(self) -> None:
        limiter = self.limiter
        if not self.counted:
            declared = byte_count(request_header(self.scope, b"content-length"))
            if declared is not None and declared > limiter.body_share:
                raise self._too_large(declared, streaming=False)
            with limiter.lock:
                if limiter.bodies >= limiter.max_bodies:
                    raise self._busy(f"{limiter.max_bodies} request bodies are already arriving at this worker")
                limiter.bodies += 1
            self.counted = True
        if self.received > limiter.body_share:
            raise self._too_large(self.received, streaming=True)
        grow = self.received - self.arriving
        with limiter.lock:
            if limiter.arriving + grow > limiter.body_share or limiter.reserved + grow > limiter.memory_budget:
                others = limiter.body_share - (limiter.arriving - self.arriving)
                free = max(0, min(others, limiter.memory_budget - (limiter.reserved - self.held)))
                raise self._busy(
                    f"the request body has reached {_mib(self.received)} and {_mib(free)} of this worker's memory "
                    "budget is free for bodies still arriving"
                )
            limiter.arriving += grow
            limiter.reserved += grow
        self.arriving += grow
        self.held += grow

    def _whole(self, size: int, nbytes: int) -> None:
        """The body is in: it leaves the bodies arriving and holds `nbytes`."""
        limiter = self.limiter
        if size > limiter.body_share:
            raise self._too_large(size, streaming=False)
        with limiter.lock:
            if self.counted:
                limiter.bodies -= 1
                limiter.arriving -= self.arriving
                self.counted, self.arriving = False, 0
            if nbytes > self.held and limiter.reserved - self.held + nbytes > limiter.memory_budget:
                free = max(0, limiter.memory_budget - limiter.reserved)
                raise self._busy(
                    f"putting this body of {_mib(size)} together needs {_mib(nbytes)} of memory and {_mib(free)} "
                    "of this worker's budget is free"
                )
            limiter.reserved += nbytes - self.held
            self.held = nbytes

    def release(self) -> None:
        """Give back what the body holds (nothing if a slot took it over)."""
        if self.held or self.counted:
            limiter = self.limiter
            with limiter.lock:
                limiter.reserved -= self.held
                limiter.arriving -= self.arriving
                if self.counted:
                    limiter.bodies -= 1
            self.held = self.arriving = 0
            self.counted = False

    def _too_large(self, size: int, streaming: bool) -> ProblemError:
        share = self.limiter.body_share
        what = "more than " if streaming else ""
        return _refused(
            413,
            f"the request body is {what}{size:,} bytes; bodies may take {share:,} bytes of a worker's memory "
            "while they arrive (half of LOSS_SERVICE_MEMORY_BUDGET)",
        )

    def _busy(self, why: str) -> ProblemError:
        return _refused(503, f"{why}; retry shortly", {"Retry-After": str(self.limiter.retry_after)})


class HeavyRequests:
    """Bounds heavy requests (loss computations) per worker in number, memory and time, and
    every request body in memory and time while it arrives.

    Beyond `limit` at once, counted from when a body has fully arrived, or beyond
    `memory_budget` bytes of estimated memory held at once (`Slot.reserve`): 503 with
    Retry-After, never a queue. Bodies (of POST, PUT and PATCH requests) hold their bytes of the
    same budget as they arrive (`Arrival`), at most `connection_limit(memory_budget)` of them at
    once. Past `timeout` seconds: 408 if the body has not fully arrived (a slow client, answered
    with Connection: close), else 504 for a heavy request; a request that is not heavy has the
    deadline for its body alone. A response already started is left to finish.
    """

    def __init__(
        self, app: ASGIApp, limit: int, timeout: float, memory_budget: int = 2**62, retry_after: int = 1
    ) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout
        self.memory_budget = memory_budget
        self.body_share = memory_budget // 2  # what bodies still arriving may hold together
        self.max_bodies = connection_limit(memory_budget)
        self.retry_after = retry_after
        self.busy = 0
        self.reserved = 0  # bytes of the budget held: by slots, and by bodies no slot holds yet
        self.arriving = 0  # of which bodies still arriving hold this much
        self.bodies = 0  # bodies arriving in several messages
        self.lock = threading.Lock()  # worker threads release slots too

    def _claim(self, arrival: Arrival | None = None) -> Slot | None:
        with self.lock:
            if self.busy >= self.limit:
                return None
            self.busy += 1
        if arrival is None:
            return Slot(self)
        slot = Slot(self, arrival.held)  # the body's hold becomes the slot's
        arrival.held = 0
        return slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        # A model's configuration (PUT) is parsed as a loss request is: its parse holds its estimate.
        heavy = (scope["method"] == "POST" and scope["path"].startswith(HEAVY_PREFIXES)) or (
            scope["method"] == "PUT" and scope["path"].startswith("/v1/models/")
        )
        state = scope.setdefault("state", {})
        arrival = Arrival(self, scope)
        slot: Slot | None = None
        body_received = responding = False

        async def receiving() -> Message:
            # The slot is claimed when the body's last byte is in, not when its headers are: a
            # client that sends headers and a byte, and then nothing, holds no slot (eight such
            # connections kept every other request at 503 until their deadline).
            nonlocal body_received, slot
            message = await receive()
            if message["type"] == "http.request" and not body_received:
                more = message.get("more_body", False)
                arrival.take(len(message.get("body", b"")), more)
                if not more:
                    body_received = True
                    if not heavy:
                        deadline.stop()  # the deadline of a request that is not heavy is its body's
                        return message
                    slot = self._claim(arrival)
                    if slot is None:
                        detail = f"{self.limit} requests are already being computed; retry shortly"
                        raise _refused(503, detail, {"Retry-After": str(self.retry_after)})
                    state[HEAVY_SLOT] = slot
            return message

        async def sending(message: Message) -> None:
            nonlocal responding
            if message["type"] == "http.response.start" and not deadline.expired:
                responding = True
                deadline.stop()  # a response under way is left to finish
            if responding:  # past the deadline (the loop was busy), the 504 answers instead
                await send(message)

        try:
            with Deadline(self.timeout) as deadline:
                await self.app(scope, receiving, sending)
        finally:
            arrival.release()  # the body's pieces are gone with the app's frames by now
            if slot is not None:
                slot.release()
        if deadline.expired and not responding:
            await _refuse(send, self._timed_out(body_received), scope)

    def _timed_out(self, body_received: bool) -> ProblemError:
        limit = f"{self.timeout:g} s (LOSS_SERVICE_REQUEST_TIMEOUT)"
        if not body_received:
            return _refused(408, f"the request body did not arrive within {limit}", {"Connection": "close"})
        return _refused(504, f"the loss was not computed within {limit}; try a smaller batch")
