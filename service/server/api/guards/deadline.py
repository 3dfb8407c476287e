"""A deadline for one request's task."""

from __future__ import annotations

import asyncio
from typing import Any


class Deadline:
    """`asyncio.timeout` for less: one timer, no async context manager (anyio's CancelScope costs
    more than either).

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
