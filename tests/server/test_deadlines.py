"""Body-read deadlines: one timer per loop cancels only the reads whose deadline passed."""

from __future__ import annotations

import asyncio

import pytest

from trellis.server.deadlines import BodyDeadlines, body_deadlines


async def _read(deadlines: BodyDeadlines, timeout: float, wait: float) -> str:
    """A read that takes ``wait`` seconds, bounded by ``timeout`` as ``read_json_body`` does."""
    task = deadlines.enter(timeout)
    try:
        await asyncio.sleep(wait)
    except asyncio.CancelledError:
        if not deadlines.expired(task):
            raise
        return "timed out"
    finally:
        deadlines.leave(task)
    return "read"


async def test_only_late_reads_are_cut_each_at_its_own_deadline() -> None:
    deadlines = body_deadlines()
    assert body_deadlines() is deadlines  # one per loop
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = asyncio.create_task(_read(deadlines, 5.0, 0.2))
    await asyncio.sleep(0)  # the 5 s deadline arms the timer first
    results = await asyncio.gather(
        _read(deadlines, 0.1, 10),  # a shorter deadline re-arms it earlier
        _read(deadlines, 0.3, 10),
        _read(deadlines, 1.0, 0.01),
        slow,
    )
    assert results == ["timed out", "timed out", "read", "read"]
    assert loop.time() - started < 1.0
    assert not deadlines._reading and not deadlines._expired


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    deadlines = body_deadlines()
    task = asyncio.create_task(_read(deadlines, 5.0, 10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._reading


async def test_a_cancellation_racing_the_deadline_still_cancels() -> None:
    """Both the deadline and the server cancel the task: it stays cancelled."""
    deadlines = body_deadlines()
    task = asyncio.create_task(_read(deadlines, 0.05, 10))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    loop.call_at(deadlines._reading[task], task.cancel)  # at the same moment
    with pytest.raises(asyncio.CancelledError):
        await task
