"""The deadline (service/server/api/guards/deadline.py): it cancels its block once it passes, and swallows
only its own cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.server.api.guards.deadline import Deadline

pytestmark = pytest.mark.anyio


@pytest.mark.anyio
async def test_a_deadline_cancels_the_block_once_it_passes_and_swallows_only_its_own_cancellation() -> None:
    with Deadline(0.01) as passed:
        await asyncio.sleep(1)
    assert passed.expired
    with Deadline(1) as kept:
        await asyncio.sleep(0.01)
    assert not kept.expired
    with Deadline(0.01) as stopped:
        stopped.stop()  # a response under way is left to finish
        await asyncio.sleep(0.03)
    assert not stopped.expired

    async def failing() -> None:
        with Deadline(0.01):
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                raise ValueError("the block's own") from None  # an error of its own: not swallowed

    with pytest.raises(ValueError, match="the block's own"):
        await failing()


@pytest.mark.anyio
async def test_a_cancellation_requested_elsewhere_goes_on_through_a_deadline() -> None:
    """A server shutting down cancels the request's task; the deadline must not eat that, whether
    or not it passed too."""

    async def guarded(seconds: float) -> str:
        with Deadline(seconds):
            time.sleep(0.03)  # the loop is busy: both timers below come due meanwhile
            await asyncio.sleep(0)  # they fire here, the shutdown's first, then the deadline's if it is due
            await asyncio.sleep(1)
        return "swallowed"

    loop = asyncio.get_running_loop()
    for seconds in (10.0, 0.01):  # the deadline far off; passed alongside the other cancellation
        task = asyncio.ensure_future(guarded(seconds))
        loop.call_later(0.005, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
