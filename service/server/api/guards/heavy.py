"""The heavy requests guard: loss computations bounded per worker in number, memory and time, and
every request body in memory and time while it arrives."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.server.api.guards.arrival import Arrival
from service.server.api.guards.budget import Budget
from service.server.api.guards.deadline import Deadline
from service.server.api.guards.refusals import refuse, refused
from service.server.api.guards.slots import Slot
from service.server.api.policy import context_of
from service.server.api.problems import ProblemError

BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))  # the requests whose bodies are counted as they arrive


class HeavyRequests(Budget):
    """Bounds heavy requests (those whose route's policy says `heavy`: loss computations) per
    worker in number, memory and time, and every request body in memory and time while it arrives.

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
        super().__init__(limit, memory_budget, retry_after)
        self.app = app
        self.timeout = timeout

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
        context = context_of(scope)
        heavy = context.matched and context.policy.heavy  # declared by the route (`RoutePolicy.heavy`)
        arrival = Arrival(self, scope)
        slot: Slot | None = None
        body_received = responding = False

        async def receiving() -> Message:
            # The slot is claimed when the body's last byte is in, not when its headers are: a
            # client that sends headers and a byte, and then nothing, holds no slot (eight such
            # connections would keep every other request at 503 until their deadline).
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
                        raise refused(503, detail, {"Retry-After": str(self.retry_after)})
                    context.slot = slot
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
            await refuse(send, self._timed_out(body_received), scope)

    def _timed_out(self, body_received: bool) -> ProblemError:
        limit = f"{self.timeout:g} s (LOSS_SERVICE_REQUEST_TIMEOUT)"
        if not body_received:
            return refused(
                408,
                f"the request body did not arrive within {limit}",
                {"Connection": "close"},  # pragma: no mutate (Starlette lowercases header names)
            )
        return refused(504, f"the loss was not computed within {limit}; try a smaller batch")
