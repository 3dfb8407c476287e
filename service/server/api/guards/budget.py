"""One worker's budget: heavy requests at once, bytes of memory held, bodies arriving, connections."""

from __future__ import annotations

import threading

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


class Budget:
    """What one worker's heavy requests and arriving bodies hold, under one lock: each `Slot` and
    `Arrival` counts into it (`HeavyRequests` is the middleware that owns it)."""

    def __init__(self, limit: int, memory_budget: int, retry_after: int) -> None:
        self.limit = limit
        self.memory_budget = memory_budget
        self.body_share = memory_budget // 2  # what bodies still arriving may hold together
        self.max_bodies = connection_limit(memory_budget)
        self.retry_after = retry_after
        self.busy = 0
        self.reserved = 0  # bytes of the budget held: by slots, and by bodies no slot holds yet
        self.arriving = 0  # of which bodies still arriving hold this much
        self.bodies = 0  # bodies arriving in several messages
        self.lock = threading.Lock()  # worker threads release slots too
