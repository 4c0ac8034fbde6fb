"""Tracing for application code: ``trace``, ``span``, ``@traced`` and ``score``.

Application code and workflows record their own steps into the same store as the
gateway's traces::

    from trellis.observe.api import trace, span, traced, score

    with trace("answer-question", user="u1"):
        with span("retrieve"):
            ...
        score("groundedness", 0.92)

The current trace and span live in context variables, so nesting works across
``await`` and in concurrent tasks (each task sees its own copy). A finished trace
goes to the sink set with :func:`configure`; :class:`trellis.Trellis` installs its
:class:`~trellis.observe.writer.TraceWriter` there at start. Without a sink the
traces are built and dropped, so instrumented code runs unchanged outside a server.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, TypeVar, cast

from trellis.observe.tracing import NullSink, Span, Trace, TraceSink

__all__ = [
    "configure",
    "current_trace",
    "current_span",
    "trace",
    "span",
    "traced",
    "score",
    "SCORE_SOURCES",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Where a score came from (the ``scores.source`` column).
SCORE_SOURCES = ("api", "user", "eval")

_sink: TraceSink = NullSink()
_current_trace: ContextVar[Trace | None] = ContextVar("trellis_current_trace", default=None)
_current_span: ContextVar[Span | None] = ContextVar("trellis_current_span", default=None)


def configure(sink: TraceSink | None) -> TraceSink:
    """Send finished traces to ``sink`` (None: drop them). Returns the previous sink.

    Process-wide on purpose: instrumented library code cannot be handed a writer, and
    one process serves one store.
    """
    global _sink
    previous = _sink
    _sink = sink if sink is not None else NullSink()
    return previous


#: Sinks of the runtimes started in this process, oldest first (see ``_attach``).
_runtime_sinks: list[TraceSink] = []
#: The sink in place before the first of them was attached.
_outer_sink: TraceSink = _sink


def _attach(sink: TraceSink) -> None:
    """A starting runtime records application traces into its own store (``Trellis.start``)."""
    global _sink, _outer_sink
    if not _runtime_sinks:
        _outer_sink = _sink
    _runtime_sinks.append(sink)
    _sink = sink


def _detach(sink: TraceSink) -> None:
    """A closing runtime hands over to the newest one still open, else to the sink in
    place before any was started, whatever order the runtimes close in."""
    global _sink
    for index in range(len(_runtime_sinks) - 1, -1, -1):
        if _runtime_sinks[index] is sink:
            del _runtime_sinks[index]
            break
    if _sink is sink:
        _sink = _runtime_sinks[-1] if _runtime_sinks else _outer_sink


def current_trace() -> Trace | None:
    """The trace the calling code runs in, if any."""
    return _current_trace.get()


def current_span() -> Span | None:
    """The innermost open span (the trace's root span at the top level), if any."""
    return _current_span.get()


def _set_attributes(target: Span, attributes: dict[str, Any]) -> None:
    for key, value in attributes.items():
        target.set(key, value)


class trace:  # noqa: N801 - used like a function: ``with trace(...)``
    """A new trace around a block, submitted to the sink when the block exits.

    Works as ``with trace(...)`` and ``async with trace(...)``: it does no I/O
    (``submit`` only queues), so both forms behave the same. Nested inside another
    trace it still starts a new, separate trace (then restores the outer one).
    """

    def __init__(self, name: str, kind: str = "custom", **attributes: Any) -> None:
        self.trace = Trace(kind=kind, name=name)
        assert self.trace.root is not None
        _set_attributes(self.trace.root, attributes)
        self._tokens: list[tuple[Token[Trace | None], Token[Span | None]]] = []

    def __enter__(self) -> Trace:
        self._tokens.append((_current_trace.set(self.trace), _current_span.set(self.trace.root)))
        return self.trace

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        trace_token, span_token = self._tokens.pop()
        _current_span.reset(span_token)
        _current_trace.reset(trace_token)
        if exc is not None:
            assert self.trace.root is not None
            self.trace.root.record_error(exc)
        self.trace.finish()
        _sink.submit(self.trace)

    async def __aenter__(self) -> Trace:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


class span:  # noqa: N801 - used like a function: ``with span(...)``
    """A child of the current span (sync or async ``with``).

    Outside any trace it opens a trace of its own named like the span, so a decorated
    function called from plain code is still recorded.
    """

    def __init__(self, name: str, **attributes: Any) -> None:
        self.name = name
        self.attributes = attributes
        self._own: trace | None = None
        self._span: Span | None = None
        self._token: Token[Span | None] | None = None

    def __enter__(self) -> Span:
        owner = _current_trace.get()
        if owner is None:
            self._own = trace(self.name, **self.attributes)
            root = self._own.__enter__().root
            assert root is not None
            return root
        self._span = owner.start_span(self.name, _current_span.get(), self.attributes)
        self._token = _current_span.set(self._span)
        return self._span

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._own is not None:
            own, self._own = self._own, None
            own.__exit__(exc_type, exc, tb)
            return
        assert self._span is not None and self._token is not None
        _current_span.reset(self._token)
        if exc is not None:
            self._span.record_error(exc)
        self._span.end()

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


def traced(name: str | None = None, **attributes: Any) -> Callable[[F], F]:
    """Decorate a sync or async function so each call runs in a span (or a new trace).

    ``name`` defaults to the function's qualified name.
    """

    def decorate(func: F) -> F:
        label = name or func.__qualname__
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with span(label, **attributes):
                    return await func(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with span(label, **attributes):
                return func(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def validate_score(name: str, value: Any) -> float:
    """The score as a float, or ValueError: names are non-empty, values finite numbers."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ValueError("a score needs a name of 1 to 200 characters")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"score value must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("score value must be finite")
    return number


def score(name: str, value: float, comment: str | None = None) -> None:
    """Attach a score to the current trace; it is written together with the trace.

    Raises RuntimeError outside a trace (a score without a trace would be lost
    silently) and ValueError for a bad name or value.
    """
    owner = _current_trace.get()
    if owner is None:
        raise RuntimeError("score() must be called inside trellis.trace(...)")
    owner.scores.append(
        {
            "name": name,
            "value": validate_score(name, value),
            "comment": comment,
            "source": "api",
            "created_at": time.time(),
        }
    )
