"""Deadlines on reading request bodies, kept by one timer per event loop.

A client that declares a ``Content-Length`` and sends less (a slow or stalled
body, "slowloris") would otherwise hold its connection and its request task
forever. An ``asyncio.timeout`` scope around every read would bound it, but
costs each request a timer armed and cancelled (a few µs on the gateway's hot
path, which counts microseconds). Here a read registers its task and deadline in
a dict; one timer per loop, armed for the earliest pending deadline and only when
none is armed, cancels the tasks whose deadline passed. Most reads finish before
any timer fires, so the common cost is a dict insert and delete.
"""

from __future__ import annotations

import asyncio
import threading

__all__ = ["BodyDeadlines", "body_deadlines"]


class BodyDeadlines:
    """The body reads in progress on one event loop, and the timer that bounds them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._reading: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def enter(self, timeout: float) -> asyncio.Task[object]:
        """Start bounding the current task's read; pair with ``leave``."""
        task = asyncio.current_task(self.loop)
        if task is None:  # pragma: no cover - a read always runs in a task
            raise RuntimeError("a body read must run in an asyncio task")
        deadline = self.loop.time() + timeout
        self._reading[task] = deadline
        if deadline < self._timer_at:  # no timer, or one for later (a longer timeout)
            self._arm(deadline)
        return task

    def leave(self, task: asyncio.Task[object]) -> None:
        self._reading.pop(task, None)  # gone already when its deadline passed
        if self._expired:
            self._expired.discard(task)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """Whether the ``CancelledError`` ``task`` caught is this deadline's, and no other
        cancellation is pending (then it is withdrawn: the caller answers 408)."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(deadline, self._expire)
        self._timer_at = deadline

    def _expire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = self.loop.time()
        earliest: float | None = None
        for task, deadline in list(self._reading.items()):
            if deadline <= now:
                del self._reading[task]
                self._expired.add(task)
                task.cancel()
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._arm(earliest)


_local = threading.local()


def body_deadlines() -> BodyDeadlines:
    """The running loop's ``BodyDeadlines`` (kept per thread: one loop runs in each)."""
    loop = asyncio.get_running_loop()
    current: BodyDeadlines | None = getattr(_local, "deadlines", None)
    if current is None or current.loop is not loop:
        current = _local.deadlines = BodyDeadlines(loop)
    return current
