"""Export finished traces over OTLP/HTTP (protobuf) to a collector, Jaeger, Tempo, Phoenix...

The exporter is a :class:`~trellis.observe.tracing.TraceSink` like the database writer:
``submit`` only appends to a bounded queue, and a background task sends batches (one
``ExportTraceServiceRequest`` per batch), so the request path never waits for the
network. Spans go out exactly as stored — the same GenAI attribute names, and the same
privacy treatment of bodies (``tracing.bodies``) — because they are built from the
writer's rows. A full queue or a collector that stays down drops spans and counts them
instead of growing without bound; ``close()`` sends what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from trellis.observe.outbound import request_options
from trellis.observe.tracing import GenAI, Trace, TraceSink
from trellis.observe.writer import trace_rows
from trellis.settings import TracingSettings

__all__ = [
    "OtlpExporter",
    "TeeSink",
    "export_request",
    "any_value",
    "traces_url",
    "decode_spans",
    "plain_value",
    "plain_attributes",
]

logger = logging.getLogger(__name__)

_RETRYABLE = frozenset({429, 502, 503, 504})
_ATTEMPTS = 3
_DROP_LOG_INTERVAL = 10.0


def traces_url(endpoint: str) -> str:
    """OTLP/HTTP's rule: a bare ``http://host:4318`` means ``.../v1/traces``."""
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def any_value(value: Any) -> AnyValue:
    """A Python value as an OTLP ``AnyValue`` (lists and dicts nest; others become text)."""
    if isinstance(value, bool):  # before int: bool is an int
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list | tuple):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, Mapping):
        return AnyValue(kvlist_value=KeyValueList(values=_key_values(value)))
    return AnyValue(string_value=str(value))


def plain_value(value: AnyValue) -> Any:
    """The inverse of :func:`any_value`: what a receiver (or a test) reads back."""
    field = value.WhichOneof("value")
    if field is None:
        return None
    if field == "array_value":
        return [plain_value(v) for v in value.array_value.values]
    if field == "kvlist_value":
        return plain_attributes(value.kvlist_value.values)
    return getattr(value, field)


def plain_attributes(key_values: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: plain_value(kv.value) for kv in key_values}


def decode_spans(body: bytes) -> list[Span]:
    """Every span in one serialized ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest.FromString(body)
    return [
        span
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def _key_values(attributes: Mapping[str, Any] | None) -> list[KeyValue]:
    if not attributes:
        return []
    return [
        KeyValue(key=str(k), value=any_value(v)) for k, v in attributes.items() if v is not None
    ]


def _span(row: Mapping[str, Any]) -> Span:
    attributes: Mapping[str, Any] = row["attributes"] or {}
    error = row["status"] == "error"
    status = Status(
        code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_OK,
        message=str(attributes.get("error.message", "")) if error else "",
    )
    # A span that called a model provider is a client span in the GenAI conventions.
    kind = Span.SPAN_KIND_CLIENT if GenAI.PROVIDER in attributes else Span.SPAN_KIND_INTERNAL
    end_ns = row["end_ns"] if row["end_ns"] is not None else row["start_ns"]
    return Span(
        trace_id=bytes.fromhex(row["trace_id"]),
        span_id=bytes.fromhex(row["id"]),
        parent_span_id=bytes.fromhex(row["parent_id"]) if row["parent_id"] else b"",
        name=row["name"],
        kind=kind,
        start_time_unix_nano=row["start_ns"],
        end_time_unix_nano=end_ns,
        attributes=_key_values(attributes),
        events=[
            Span.Event(
                name=event.get("name", ""),
                time_unix_nano=int(event.get("time_ns") or row["start_ns"]),
                attributes=_key_values(event.get("attributes")),
            )
            for event in row["events"] or ()
        ],
        status=status,
    )


def export_request(
    traces: Iterable[Trace],
    *,
    bodies: Literal["full", "redacted", "none"] = "full",
    service_name: str = "trellis",
) -> ExportTraceServiceRequest:
    """One OTLP request with the spans of ``traces`` (bodies kept, redacted or left out)."""
    spans: list[Span] = []
    for trace in traces:
        _, span_rows = trace_rows(trace, bodies=bodies)
        spans.extend(_span(row) for row in span_rows)
    resource = Resource(attributes=_key_values({"service.name": service_name}))
    scope = InstrumentationScope(name="trellis", version="0.1.0")
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(resource=resource, scope_spans=[ScopeSpans(scope=scope, spans=spans)])
        ]
    )


class TeeSink:
    """Hands every trace to several sinks (the database writer and the exporter)."""

    def __init__(self, *sinks: TraceSink) -> None:
        self.sinks = sinks

    def submit(self, trace: Trace) -> None:
        for sink in self.sinks:
            sink.submit(trace)


class OtlpExporter:
    """A :class:`TraceSink` that batches traces and POSTs them to an OTLP/HTTP endpoint.

    Counters: ``exported_spans``, ``dropped`` (traces: queue full, closed, or given up on
    after retries), ``requests`` (POSTs made) and ``failures`` (batches given up on).
    """

    def __init__(self, settings: TracingSettings) -> None:
        if not settings.otlp_endpoint:
            raise ValueError("tracing.otlp_endpoint is not set")
        self.settings = settings
        self.url = traces_url(settings.otlp_endpoint)
        self._options = request_options(self.url)
        self._queue: list[Trace] = []
        # One wake-up when the queue stops being empty, one when a batch is full: idle
        # exporters sleep, and requests in between set no event at all.
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._last_drop_log = float("-inf")
        self.exported_spans = 0
        self.dropped = 0
        self.requests = 0
        self.failures = 0

    def submit(self, trace: Trace) -> None:
        """Queue ``trace`` for export. Never blocks, never raises."""
        if self._closed or len(self._queue) >= self.settings.queue_size:
            self._drop(1, "queue full" if not self._closed else "exporter closed")
            return
        self._queue.append(trace)
        if len(self._queue) == 1:
            self._arrived.set()
        if len(self._queue) >= self.settings.batch_size:
            self._full.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trellis-otlp-exporter")

    async def close(self, timeout: float = 30.0) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        self._full.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                await asyncio.wait([self._task])
                self._drop(len(self._queue), "shutdown timeout")
                self._queue.clear()
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            if not self._queue and not self._closed:
                await self._arrived.wait()
            self._arrived.clear()
            if len(self._queue) < self.settings.batch_size and not self._closed:
                # Timing out is the normal case: the interval is up, send what has come.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.settings.flush_interval)
            self._full.clear()
            batch = self._queue[: self.settings.batch_size]
            del self._queue[: len(batch)]
            if batch:
                await self._send(batch)
            if self._closed and not self._queue:
                return

    async def _send(self, batch: list[Trace]) -> None:
        request = export_request(
            batch, bodies=self.settings.bodies, service_name=self.settings.otlp_service_name
        )
        body = request.SerializeToString()
        spans = sum(len(t.spans) for t in batch)
        delay = 0.5
        problem = ""
        for attempt in range(1, _ATTEMPTS + 1):
            self.requests += 1
            try:
                async with self._client().post(self.url, data=body, **self._options) as response:
                    if response.status < 300:
                        self.exported_spans += spans
                        return
                    problem = f"HTTP {response.status}"
                    if response.status not in _RETRYABLE:
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < _ATTEMPTS and not self._closed:
                await asyncio.sleep(delay)
                delay *= 2
        self.failures += 1
        self._drop(len(batch), f"export failed: {problem}")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Content-Type": "application/x-protobuf", **self.settings.otlp_headers}
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.settings.otlp_timeout),
            )
        return self._session

    def _drop(self, traces: int, reason: str) -> None:
        self.dropped += traces
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            self._last_drop_log = now
            logger.warning(
                "dropping %d trace(s) from the OTLP export (%s); %d dropped so far",
                traces,
                reason,
                self.dropped,
            )
