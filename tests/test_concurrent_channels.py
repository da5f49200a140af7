"""How the pipeline runs an event's channels at the same time (``_concurrently``): every
result in order, and no channel's send left running once the event's own task has ended."""

from __future__ import annotations

import asyncio

import pytest

from worker.delivery import _concurrently


async def _after(delay: float, result: str, log: list[str]) -> str:
    try:
        await asyncio.sleep(delay)
    except asyncio.CancelledError:
        await asyncio.sleep(0.01)  # cleanup that takes a moment, like closing a connection
        log.append(f"{result} cancelled")
        raise
    log.append(result)
    return result


async def _failing() -> str:
    await asyncio.sleep(0.01)
    raise RuntimeError("a bug in the first channel")


async def test_the_results_come_in_the_order_of_the_sends() -> None:
    """Each channel's result is in its place, whichever finishes first, and they overlap."""
    log: list[str] = []
    started = asyncio.get_running_loop().time()
    results = await _concurrently([_after(0.1, "email", log), _after(0.05, "sms", log)])
    assert results == ["email", "sms"]
    assert log == ["sms", "email"]
    assert asyncio.get_running_loop().time() - started < 0.15


async def test_when_the_first_send_raises_the_others_are_cancelled_and_awaited() -> None:
    """An error in the first channel cancels the second, which has finished cancelling by
    the time the error reaches the caller."""
    log: list[str] = []
    with pytest.raises(RuntimeError, match="a bug"):
        await _concurrently([_failing(), _after(5, "sms", log)])
    assert log == ["sms cancelled"]


async def test_a_cancelled_event_cancels_and_awaits_every_channel() -> None:
    """Cancelling the event's task cancels the channel in its own task and waits for it."""
    log: list[str] = []
    task = asyncio.create_task(_concurrently([_after(5, "email", log), _after(5, "sms", log)]))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(log) == ["email cancelled", "sms cancelled"]
