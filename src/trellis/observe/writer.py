"""The background trace writer: the request path hands traces over, never waits for the database.

``submit`` puts a finished :class:`~trellis.observe.tracing.Trace` on a bounded
queue and returns. One task drains the queue in batches (up to ``batch_size``
traces, or whatever arrived within ``flush_interval``) and inserts them with
``executemany`` in one transaction. A full queue drops the trace and counts it
(a warning at most every 10 s) rather than slow requests down; ``close()``
writes everything still queued, so a clean stop loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError

from trellis.guard.redact import redact, redact_messages
from trellis.observe.tracing import GenAI, Span, Trace
from trellis.settings import TracingSettings
from trellis.store.bulk import BulkInsert
from trellis.store.db import Database
from trellis.store.tables import scores as scores_table
from trellis.store.tables import spans as spans_table
from trellis.store.tables import traces as traces_table

__all__ = ["TraceWriter", "trace_rows", "score_rows", "SUMMARY_COLUMNS", "BODY_ATTRIBUTES"]

logger = logging.getLogger(__name__)

#: Trace summary keys that have their own column; the rest go to ``attributes``.
SUMMARY_COLUMNS = (
    "model",
    "response_model",
    "provider",
    "key_id",
    "project_id",
    "input_tokens",
    "output_tokens",
    "cost",
    "cache_hit",
    "ttft_ms",
)
#: Prompt and completion text: left out when ``bodies`` is ``none``, redacted when ``redacted``.
BODY_ATTRIBUTES = frozenset(
    {GenAI.INPUT_MESSAGES, GenAI.OUTPUT_MESSAGES, "trellis.retrieval.query"}
)
#: Chat messages: the request path may leave them as pydantic models (see ``_plain_messages``).
MESSAGE_ATTRIBUTES = frozenset({GenAI.INPUT_MESSAGES, GenAI.OUTPUT_MESSAGES})
#: Free-text attributes that can quote user input (exception messages often do).
TEXT_ATTRIBUTES = frozenset({"error.message", "trellis.retrieval.query"})

BodiesMode = Literal["full", "redacted", "none"]

_DROP_LOG_INTERVAL = 10.0


class _Flush:
    """A marker in the queue: everything before it is written when ``done`` resolves."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class _Stop:
    """The last item the writer task reads."""


_Item = Trace | _Flush | _Stop


def _duration_ms(start_ns: int, end_ns: int | None) -> float | None:
    return None if end_ns is None else (end_ns - start_ns) / 1e6


def _redact_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """A copy with message bodies and error texts redacted (the span itself is left as is)."""
    out = dict(attributes)
    for key in BODY_ATTRIBUTES.difference(TEXT_ATTRIBUTES).intersection(attributes):
        out[key] = redact_messages(attributes[key])
    for key in TEXT_ATTRIBUTES.intersection(attributes):
        if isinstance(attributes[key], str):
            out[key] = redact(attributes[key])
    return out


def _redact_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events whose error/message attributes (retry reasons...) are redacted."""
    out = []
    for event in events:
        attrs = event.get("attributes")
        if isinstance(attrs, dict) and any(
            isinstance(v, str) and ("error" in k or "message" in k) for k, v in attrs.items()
        ):
            attrs = {
                k: redact(v) if isinstance(v, str) and ("error" in k or "message" in k) else v
                for k, v in attrs.items()
            }
            event = {**event, "attributes": attrs}
        out.append(event)
    return out


def _plain_messages(attributes: dict[str, Any]) -> dict[str, Any]:
    """The attributes with message lists the request path kept as pydantic models dumped
    to JSON-ready dicts: the dumping is the writer's work, not the request's."""
    for key in MESSAGE_ATTRIBUTES.intersection(attributes):
        value = attributes[key]
        if isinstance(value, list) and any(isinstance(item, BaseModel) for item in value):
            dumped = [
                item.model_dump(exclude_none=True) if isinstance(item, BaseModel) else item
                for item in value
            ]
            attributes = {**attributes, key: dumped}
    return attributes


def _span_row(span: Span, bodies: BodiesMode) -> dict[str, Any]:
    attributes = span.attributes
    events = span.events
    if bodies != "none":
        attributes = _plain_messages(attributes)
    if bodies == "none" and not BODY_ATTRIBUTES.isdisjoint(attributes):
        attributes = {k: v for k, v in attributes.items() if k not in BODY_ATTRIBUTES}
    elif bodies == "redacted":
        if not (BODY_ATTRIBUTES.isdisjoint(attributes) and TEXT_ATTRIBUTES.isdisjoint(attributes)):
            attributes = _redact_attributes(attributes)
        if events:
            events = _redact_events(events)
    return {
        "trace_id": span.trace_id,
        "id": span.span_id,
        "parent_id": span.parent_id,
        "name": span.name,
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "duration_ms": _duration_ms(span.start_ns, span.end_ns),
        "status": span.status,
        "attributes": attributes or None,
        "events": events or None,
    }


def trace_rows(
    trace: Trace, *, store_bodies: bool = True, bodies: BodiesMode | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``traces`` row and the ``spans`` rows for one trace.

    ``bodies`` (``full``, ``redacted``, ``none``) wins over the older ``store_bodies``.
    Redaction happens here, in the writer's task, so requests never pay for it.
    """
    if bodies is None:
        bodies = "full" if store_bodies else "none"
    root = trace.root
    spans = trace.spans
    start_ns = root.start_ns if root else min(s.start_ns for s in spans)
    end_ns = root.end_ns if root else None
    if end_ns is None:
        # An unfinished root: the trace lasted as long as its latest finished span.
        ends = [s.end_ns for s in spans if s.end_ns is not None]
        end_ns = max(ends) if ends else None
    summary = trace.summary
    extra = {k: v for k, v in summary.items() if k not in SUMMARY_COLUMNS}
    if bodies == "none":
        extra = {k: v for k, v in extra.items() if k not in BODY_ATTRIBUTES}
    elif bodies == "redacted" and extra:
        extra = _redact_attributes(extra)
    row = {
        "id": trace.trace_id,
        "kind": trace.kind,
        "name": trace.name,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "duration_ms": _duration_ms(start_ns, end_ns),
        "status": trace.status,
        "model": summary.get("model"),
        "response_model": summary.get("response_model"),
        "provider": summary.get("provider"),
        "key_id": summary.get("key_id"),
        "project_id": summary.get("project_id") or "default",
        "input_tokens": summary.get("input_tokens"),
        "output_tokens": summary.get("output_tokens"),
        "cost": summary.get("cost"),
        "cache_hit": bool(summary.get("cache_hit", False)),
        "ttft_ms": summary.get("ttft_ms"),
        "attributes": extra or None,
    }
    return row, [_span_row(span, bodies) for span in spans]


def score_rows(trace: Trace, *, bodies: BodiesMode = "full") -> list[dict[str, Any]]:
    """The ``scores`` rows of the scores a trace carries (comments treated like bodies)."""
    rows = []
    for score in trace.scores:
        comment = score.get("comment")
        if bodies == "none":
            comment = None  # free text from users, kept out like the bodies
        elif isinstance(comment, str) and bodies == "redacted":
            comment = redact(comment)
        rows.append(
            {
                "id": score.get("id") or os.urandom(16).hex(),
                "trace_id": trace.trace_id,
                "name": score["name"],
                "value": float(score["value"]),
                "comment": comment,
                "source": score.get("source", "api"),
                "created_at": score.get("created_at") or time.time(),
                "project_id": trace.summary.get("project_id") or "default",
            }
        )
    return rows


def _is_connection_error(exc: BaseException) -> bool:
    """Errors after which writing the same rows one by one would fail the same way."""
    if isinstance(exc, DisconnectionError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class TraceWriter:
    """Implements :class:`~trellis.observe.tracing.TraceSink` over the ``traces``/``spans`` tables.

    Counters (read them for metrics): ``queued``, ``written_traces``, ``written_spans``,
    ``dropped`` (queue full or writer closed) and ``write_errors`` (traces lost to a
    database error).
    """

    def __init__(self, db: Database, settings: TracingSettings | None = None) -> None:
        self.db = db
        self.settings = settings or TracingSettings()
        # Unbounded underneath so the stop/flush markers always fit; submit() enforces the bound.
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        # Set when a batch is full or a flush/stop is asked for: the task then writes at
        # once instead of waiting out ``flush_interval``. Requests never wake the task.
        self._wake = asyncio.Event()
        self._pending = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_drop_log = float("-inf")
        self._bulk: tuple[BulkInsert, BulkInsert, BulkInsert] | None = None
        self.written_traces = 0
        self.written_spans = 0
        self.dropped = 0
        self.write_errors = 0
        self.batches = 0
        self.written_scores = 0

    # --- TraceSink --------------------------------------------------------------

    def submit(self, trace: Trace) -> None:
        """Queue ``trace`` for writing. Never blocks, never raises."""
        if self._closed or self._pending >= self.settings.queue_size:
            self._drop()
            return
        self._pending += 1
        self._queue.put_nowait(trace)
        if self._pending >= self.settings.batch_size:
            self._wake.set()

    # --- lifecycle ----------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Traces waiting to be written (including the batch being written)."""
        return self._pending

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def stats(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "written_traces": self.written_traces,
            "written_spans": self.written_spans,
            "dropped": self.dropped,
            "write_errors": self.write_errors,
        }

    async def start(self) -> None:
        """Launch the background task (once)."""
        if self._closed:
            raise RuntimeError("TraceWriter is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trellis-trace-writer")

    async def flush(self) -> None:
        """Wait until every trace submitted so far is written (or has failed)."""
        if not self.running:
            return
        marker = _Flush()
        self._queue.put_nowait(marker)
        self._wake.set()
        await marker.done

    async def close(self, timeout: float | None = 30.0) -> None:
        """Stop accepting traces, write all queued ones, and end the task.

        ``timeout`` bounds the wait (a hung database must not hang shutdown forever);
        traces still queued after it are counted as dropped and logged.
        """
        if self._closed:
            if self._task is not None:
                await asyncio.shield(self._task)
            return
        self._closed = True
        if self._task is None:
            if self._pending == 0:
                return
            self._task = asyncio.create_task(self._run(), name="trellis-trace-writer")
        self._queue.put_nowait(_Stop())
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            await asyncio.wait([self._task])  # let the cancelled batch settle its counters
            lost = self._pending
            self.dropped += lost
            self._pending = 0
            logger.error("trace writer did not finish within %.1fs; %d traces lost", timeout, lost)

    # --- the background task ----------------------------------------------------

    async def _run(self) -> None:
        stop = False
        while not stop:
            batch, markers, stop = await self._next_batch()
            if batch:
                await self._write(batch)
            for marker in markers:
                if not marker.done.done():
                    marker.done.set_result(None)

    async def _next_batch(self) -> tuple[list[Trace], list[_Flush], bool]:
        """Up to ``batch_size`` traces, waiting at most ``flush_interval`` after the first.

        The wait is one timer per batch, not one wake-up per trace: on the hot path a
        ``submit`` is a plain ``put_nowait``.
        """
        batch: list[Trace] = []
        markers: list[_Flush] = []
        item = await self._queue.get()
        if isinstance(item, Trace) and self._pending < self.settings.batch_size:
            # Timing out is the normal case: the interval is up, write what has come.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.flush_interval)
        self._wake.clear()
        while True:
            if isinstance(item, _Stop):
                return batch, markers, True
            if isinstance(item, _Flush):
                markers.append(item)
            else:
                batch.append(item)
                if len(batch) >= self.settings.batch_size:
                    if self._pending > len(batch):
                        self._wake.set()  # more are waiting: the next batch need not wait
                    return batch, markers, False
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return batch, markers, False

    async def _write(self, batch: list[Trace]) -> None:
        try:
            await self._insert(batch)
        except Exception as exc:  # logged and counted: the writer must outlive any one batch
            if len(batch) > 1 and not _is_connection_error(exc):
                # Probably one bad trace (a duplicate id, a value the database refuses):
                # write the others one by one instead of losing the whole batch.
                logger.warning("trace batch failed (%s); retrying traces one by one", exc)
                for trace in batch:
                    await self._write_one(trace)
            else:
                self._count_failure(len(batch), exc)
        finally:
            self._pending -= len(batch)

    async def _write_one(self, trace: Trace) -> None:
        try:
            await self._insert([trace])
        except Exception as exc:  # logged and counted: the writer must outlive any one batch
            self._count_failure(1, exc)

    def _count_failure(self, traces: int, exc: BaseException) -> None:
        self.write_errors += traces
        level = logging.ERROR if isinstance(exc, SQLAlchemyError) else logging.CRITICAL
        logger.log(level, "could not write %d trace(s): %s", traces, exc, exc_info=exc)

    async def _insert(self, batch: list[Trace]) -> None:
        bodies = self.settings.bodies
        trace_rows_: list[dict[str, Any]] = []
        span_rows: list[dict[str, Any]] = []
        score_rows_: list[dict[str, Any]] = []
        for trace in batch:
            row, rows = trace_rows(trace, bodies=bodies)
            trace_rows_.append(row)
            span_rows.extend(rows)
            if trace.scores:
                score_rows_.extend(score_rows(trace, bodies=bodies))
        inserts = self._inserts()
        async with self.db.write() as conn:
            for insert, rows in zip(inserts, (trace_rows_, span_rows, score_rows_), strict=True):
                await insert.run(conn, rows)
        self.batches += 1
        self.written_traces += len(trace_rows_)
        self.written_spans += len(span_rows)
        self.written_scores += len(score_rows_)

    def _inserts(self) -> tuple[BulkInsert, BulkInsert, BulkInsert]:
        if self._bulk is None:
            dialect = self.db.engine.dialect
            self._bulk = (
                BulkInsert(traces_table, dialect),
                BulkInsert(spans_table, dialect),
                BulkInsert(scores_table, dialect),
            )
        return self._bulk

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            self._last_drop_log = now
            reason = "writer closed" if self._closed else "queue full"
            logger.warning(
                "dropping traces (%s, queue_size=%d); %d dropped so far",
                reason,
                self.settings.queue_size,
                self.dropped,
            )
