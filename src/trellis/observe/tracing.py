"""In-memory traces and spans, built on the hot path and handed to a sink when done.

Spans carry OpenTelemetry GenAI semantic-convention attribute names
(``gen_ai.operation.name``, ``gen_ai.request.model``...). Building them costs a
few dict writes; persisting them is the background writer's job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from random import getrandbits
from types import TracebackType
from typing import Any, Protocol

__all__ = ["Span", "Trace", "TraceSink", "NullSink", "GenAI", "new_trace_id", "new_span_id"]


class GenAI:
    """Attribute names from the OpenTelemetry GenAI semantic conventions."""

    OPERATION = "gen_ai.operation.name"
    PROVIDER = "gen_ai.provider.name"
    REQUEST_MODEL = "gen_ai.request.model"
    RESPONSE_MODEL = "gen_ai.response.model"
    RESPONSE_ID = "gen_ai.response.id"
    FINISH_REASONS = "gen_ai.response.finish_reasons"
    INPUT_TOKENS = "gen_ai.usage.input_tokens"
    OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
    TEMPERATURE = "gen_ai.request.temperature"
    TOP_P = "gen_ai.request.top_p"
    MAX_TOKENS = "gen_ai.request.max_tokens"
    SEED = "gen_ai.request.seed"
    STOP = "gen_ai.request.stop_sequences"
    INPUT_MESSAGES = "gen_ai.input.messages"
    OUTPUT_MESSAGES = "gen_ai.output.messages"
    ERROR_TYPE = "error.type"
    TTFT = "gen_ai.server.time_to_first_token"


def new_trace_id() -> str:
    """128 random bits in hex, never all zero (W3C Trace Context). Like OpenTelemetry's
    SDK this uses ``random``, not ``os.urandom``: ids must be unique, not secret."""
    return f"{getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    return f"{getrandbits(64) or 1:016x}"


@dataclass(slots=True)
class Span:
    name: str
    trace_id: str
    span_id: str = field(default_factory=new_span_id)
    parent_id: str | None = None
    start_ns: int = field(default_factory=time.time_ns)
    end_ns: int | None = None
    status: str = "ok"
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def set(self, key: str, value: Any) -> None:
        if value is not None:
            self.attributes[key] = value

    def update(self, attributes: dict[str, Any]) -> None:
        """Set several attributes at once; None values are left out, as with ``set``."""
        self.attributes.update({k: v for k, v in attributes.items() if v is not None})

    def add_event(self, name: str, **attributes: Any) -> None:
        self.events.append({"name": name, "time_ns": time.time_ns(), "attributes": attributes})

    def record_error(self, exc: BaseException) -> None:
        self.status = "error"
        self.attributes[GenAI.ERROR_TYPE] = type(exc).__name__
        self.attributes["error.message"] = str(exc)[:2000]

    def end(self) -> None:
        if self.end_ns is None:
            self.end_ns = time.time_ns()

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Ends the span, recording the error that left the block, if any."""
        if exc is not None:
            self.record_error(exc)
        self.end()

    @property
    def duration_ms(self) -> float:
        end = self.end_ns if self.end_ns is not None else time.time_ns()
        return (end - self.start_ns) / 1e6


@dataclass(slots=True)
class Trace:
    """One request (or one user-defined unit of work) and all its spans."""

    kind: str
    name: str
    trace_id: str = field(default_factory=new_trace_id)
    spans: list[Span] = field(default_factory=list)
    root: Span | None = None
    #: Columns the trace store indexes: key_id, model, response_model, tokens, cost...
    summary: dict[str, Any] = field(default_factory=dict)
    #: Scores recorded during the trace (``trellis.observe.api.score``), written with it:
    #: dicts with ``name``, ``value``, ``comment``, ``source`` and ``created_at``.
    scores: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Span(name=self.name, trace_id=self.trace_id)
        self.spans.append(self.root)

    def start_span(
        self, name: str, parent: Span | None = None, attributes: dict[str, Any] | None = None
    ) -> Span:
        span = Span(
            name=name,
            trace_id=self.trace_id,
            parent_id=(parent or self.root).span_id,  # type: ignore[union-attr]
            attributes={k: v for k, v in attributes.items() if v is not None} if attributes else {},
        )
        self.spans.append(span)
        return span

    def span(
        self, name: str, parent: Span | None = None, attributes: dict[str, Any] | None = None
    ) -> Span:
        """A child span for a ``with`` block: it ends (recording the error, if any) when
        the block exits. (A span is its own context manager: cheaper than a generator.)"""
        return self.start_span(name, parent, attributes)

    def finish(self, status: str | None = None) -> None:
        assert self.root is not None
        if status:
            self.root.status = status
        now = time.time_ns()
        for span in self.spans:
            if span.end_ns is None:
                span.end_ns = now

    @property
    def status(self) -> str:
        return self.root.status if self.root else "ok"


class TraceSink(Protocol):
    """Where finished traces go. ``submit`` must never block or raise."""

    def submit(self, trace: Trace) -> None: ...


class NullSink:
    """Drops traces: used when tracing is disabled."""

    def submit(self, trace: Trace) -> None:
        return None
