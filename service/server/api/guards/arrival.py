"""A request body's hold on the worker's memory budget while it arrives."""

from __future__ import annotations

from starlette.types import Scope

from service.server.api.guards.budget import Budget
from service.server.api.guards.refusals import mib, refused
from service.server.api.headers import byte_count, request_header
from service.server.api.problems import ProblemError

# A body that arrives whole in one message of at most this size is not counted as it arrives: a
# connection reads this much ahead of the app in any case (uvicorn's high-water mark), and the
# route counts the body with its parse next. Small requests take no lock for their body.
SMALL_BODY = 64 * 1024


class Arrival:
    """One request body's hold on the worker's memory budget while it arrives.

    A body of several messages holds what has arrived so far (inflated, for gzip), counted before
    the next message is read, and counts among the bodies arriving; all bodies still arriving may
    hold at most half of the budget together (`Budget.body_share`), the other half stays
    for requests whose bodies are in. Once whole, it holds twice its size (its pieces and the
    body joined from them) and leaves the bodies arriving; a heavy request's `Slot` then takes
    that hold over, and turns it into its parse's estimate (which counts the body again: one
    hold, replaced, never two). What is held is given back when the request ends, unless a slot
    took it.
    """

    __slots__ = ("arriving", "counted", "held", "limiter", "received", "scope")

    def __init__(self, limiter: Budget, scope: Scope) -> None:
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
                    f"the request body has reached {mib(self.received)} and {mib(free)} of this worker's memory "
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
                    f"putting this body of {mib(size)} together needs {mib(nbytes)} of memory and {mib(free)} "
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
        return refused(
            413,
            f"the request body is {what}{size:,} bytes; bodies may take {share:,} bytes of a worker's memory "
            "while they arrive (half of LOSS_SERVICE_MEMORY_BUDGET)",
        )

    def _busy(self, why: str) -> ProblemError:
        return refused(503, f"{why}; retry shortly", {"Retry-After": str(self.limiter.retry_after)})
