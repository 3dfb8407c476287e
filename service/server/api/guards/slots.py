"""A heavy request's slot: its claim on the concurrency bound and on the worker's memory budget."""

from __future__ import annotations

from service.server.api.guards.budget import Budget
from service.server.api.guards.refusals import mib, refused


class Slot:
    """One heavy request's claim on the concurrency bound, shared with any thread it starts.

    A timed-out request answers 504 at once, but its thread cannot be stopped; the thread holds
    the slot until it finishes, so abandoned work still counts against the bound.
    """

    def __init__(self, limiter: Budget, reserved: int = 0) -> None:
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
            raise refused(
                413,
                f"{purpose} needs an estimated {mib(nbytes)} of memory; one worker's requests may hold "
                f"{mib(limiter.memory_budget)} (LOSS_SERVICE_MEMORY_BUDGET): send fewer samples, or fewer losses",
            )
        with limiter.lock:
            if nbytes > self.reserved and limiter.reserved - self.reserved + nbytes > limiter.memory_budget:
                free = limiter.memory_budget - limiter.reserved
                detail = (
                    f"{purpose} needs an estimated {mib(nbytes)} of memory and {mib(free)} of this worker's "
                    "budget is free; retry shortly"
                )
                raise refused(503, detail, {"Retry-After": str(limiter.retry_after)})
            limiter.reserved += nbytes - self.reserved
            self.reserved = nbytes
