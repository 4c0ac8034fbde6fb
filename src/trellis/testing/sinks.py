"""A trace sink that keeps what it is given, for tests of code that records traces."""

from __future__ import annotations

from trellis.observe.tracing import Trace

__all__ = ["ListSink"]


class ListSink:
    """Collects submitted traces in order (a fake at the sink boundary, like the writer's
    queue): pass it as a ``Gateway``'s sink or to ``trellis.observe.api.configure``."""

    def __init__(self) -> None:
        self.traces: list[Trace] = []

    def submit(self, trace: Trace) -> None:
        self.traces.append(trace)
