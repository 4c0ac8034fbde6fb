"""Read side of the trace tables, for the API and the web UI.

Rows come back as plain dicts with the column names of ``traces`` and
``spans`` (timestamps in epoch nanoseconds), ready to serialise as JSON.
"""

from __future__ import annotations

import builtins
import os
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, cast, exists, or_, select

from trellis.observe.query import GUARD_FILTERS, TraceQuery, decode_cursor, encode_cursor
from trellis.store.db import Database
from trellis.store.tables import scores, spans, traces

__all__ = ["TraceStore", "TracePage", "TraceQuery", "GuardCounts", "MAX_LIST_LIMIT"]

MAX_LIST_LIMIT = 1000
#: ``guard_counts`` reads at most this many traces (newest first) of its window.
MAX_GUARD_COUNT = 20_000


@dataclass(slots=True)
class GuardCounts:
    """How often the guards acted in a window: traces, and counts per kind of action."""

    traces: int = 0
    #: PII kind -> traces that carried it.
    pii: dict[str, int] = field(default_factory=dict)
    #: Output-check action (redact, block, flag, ...) -> how many times it was taken.
    output: dict[str, int] = field(default_factory=dict)
    #: Traces the input guard flagged as prompt injection.
    input_flagged: int = 0
    #: More than ``MAX_GUARD_COUNT`` traces matched: the counts are of the newest ones.
    truncated: bool = False


@dataclass(slots=True)
class TracePage:
    rows: list[dict[str, Any]]
    #: Pass back as ``cursor`` for the next (older) page; None on the last page.
    next_cursor: str | None


class TraceStore:
    """Queries over stored traces. Writing is :class:`~trellis.observe.writer.TraceWriter`'s job."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, trace_id: str) -> dict[str, Any] | None:
        """One trace with its spans (oldest first), or None."""
        async with self.db.engine.connect() as conn:
            row = (
                (await conn.execute(select(traces).where(traces.c.id == trace_id)))
                .mappings()
                .first()
            )
            if row is None:
                return None
            span_rows = (
                (
                    await conn.execute(
                        select(spans)
                        .where(spans.c.trace_id == trace_id)
                        .order_by(spans.c.start_ns, spans.c.id)
                    )
                )
                .mappings()
                .all()
            )
            score_rows = (
                (
                    await conn.execute(
                        select(scores)
                        .where(scores.c.trace_id == trace_id)
                        .order_by(scores.c.created_at, scores.c.id)
                    )
                )
                .mappings()
                .all()
            )
        result = dict(row)
        result["spans"] = [dict(span) for span in span_rows]
        result["scores"] = [dict(score) for score in score_rows]
        return result

    async def owner(self, trace_id: str) -> tuple[bool, str | None, str | None]:
        """Whether the trace exists, the API key id that made it (None: no key) and its
        project."""
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(traces.c.key_id, traces.c.project_id).where(traces.c.id == trace_id)
                )
            ).first()
        return (False, None, None) if row is None else (True, row[0], row[1])

    async def add_score(
        self,
        trace_id: str,
        name: str,
        value: float,
        comment: str | None = None,
        source: str = "user",
        project_id: str = "default",
    ) -> dict[str, Any]:
        """Store one score for an existing trace (the caller checks it exists); the new row."""
        row = {
            "id": os.urandom(16).hex(),
            "trace_id": trace_id,
            "name": name,
            "value": float(value),
            "comment": comment,
            "source": source,
            "created_at": time.time(),
            "project_id": project_id,
        }
        async with self.db.write() as conn:
            await conn.execute(scores.insert(), [row])
        return row

    async def list(
        self,
        limit: int = 50,
        model: str | None = None,
        key_id: str | None = None,
        status: str | None = None,
        **filters: Any,
    ) -> builtins.list[dict[str, Any]]:
        """Trace rows without spans, newest first, optionally filtered (see :class:`TraceQuery`)."""
        query = TraceQuery(model=model, key_id=key_id, status=status, **filters)
        return (await self.page(query, limit=limit)).rows

    async def page(
        self, query: TraceQuery | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> TracePage:
        """One page of matching traces, newest first, and the cursor of the next page.

        Keyset pagination on ``(start_ns, id)``: pages stay consistent while new traces
        arrive, and a deep page costs the same as the first (the start_ns index serves it).
        """
        query = query or TraceQuery()
        limit = max(1, min(int(limit), MAX_LIST_LIMIT))
        statement = (
            select(traces)
            .where(*self._conditions(query))
            .order_by(traces.c.start_ns.desc(), traces.c.id.desc())
            .limit(limit + 1)
        )
        if cursor is not None:
            after_ns, after_id = decode_cursor(cursor)
            statement = statement.where(
                or_(
                    traces.c.start_ns < after_ns,
                    and_(traces.c.start_ns == after_ns, traces.c.id < after_id),
                )
            )
        async with self.db.engine.connect() as conn:
            rows = [dict(row) for row in (await conn.execute(statement)).mappings().all()]
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1]["start_ns"], rows[-1]["id"])
        return TracePage(rows, next_cursor)

    async def guard_counts(self, query: TraceQuery) -> GuardCounts:
        """Counts per kind of what the guards did to the traces ``query`` matches (give it
        a ``guard`` filter and a window): read from the trace rows' summary attributes."""
        statement = (
            select(traces.c.attributes)
            .where(*self._conditions(query))
            .order_by(traces.c.start_ns.desc())
            .limit(MAX_GUARD_COUNT + 1)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(statement)).scalars().all()
        counts = GuardCounts(truncated=len(rows) > MAX_GUARD_COUNT)
        for attributes in rows[:MAX_GUARD_COUNT]:
            counts.traces += 1
            attributes = attributes or {}
            for kind in attributes.get("pii_kinds") or ():
                counts.pii[str(kind)] = counts.pii.get(str(kind), 0) + 1
            for action, number in (attributes.get("guard_output") or {}).items():
                if isinstance(number, int | float):
                    counts.output[str(action)] = counts.output.get(str(action), 0) + int(number)
            if attributes.get("guard_flagged"):
                counts.input_flagged += 1
        return counts

    async def guard_spans(
        self, trace_ids: builtins.list[str]
    ) -> dict[str, builtins.list[dict[str, Any]]]:
        """The spans that say what a guard did, by trace: root spans (output-check hits,
        guard events), ``privacy`` and ``guard`` spans; for a page of guarded traces."""
        if not trace_ids:
            return {}
        statement = (
            select(spans.c.trace_id, spans.c.name, spans.c.parent_id, spans.c.attributes)
            .add_columns(spans.c.events)
            .where(
                spans.c.trace_id.in_(trace_ids),
                or_(spans.c.parent_id.is_(None), spans.c.name.in_(("privacy", "guard"))),
            )
            .order_by(spans.c.trace_id, spans.c.start_ns)
        )
        found: dict[str, builtins.list[dict[str, Any]]] = {}
        async with self.db.engine.connect() as conn:
            for row in (await conn.execute(statement)).mappings():
                found.setdefault(row["trace_id"], []).append(dict(row))
        return found

    @staticmethod
    def _conditions(query: TraceQuery) -> builtins.list[ColumnElement[bool]]:
        t = traces.c
        conditions: builtins.list[ColumnElement[bool]] = []
        if query.since_ns is not None:
            conditions.append(t.start_ns >= query.since_ns)
        if query.until_ns is not None:
            conditions.append(t.start_ns < query.until_ns)
        for column, value in (
            (t.model, query.model),
            (t.key_id, query.key_id),
            (t.status, query.status),
            (t.kind, query.kind),
            (t.project_id, query.project_id),
        ):
            if value is not None:
                conditions.append(column == value)
        if query.min_latency_ms is not None:
            conditions.append(t.duration_ms >= query.min_latency_ms)
        if query.guard is not None:
            # A key in the summary attributes (JSON): ->> on Postgres, json_extract on
            # SQLite; the start_ns index bounds the rows a window reads.
            conditions.append(
                or_(
                    *(
                        t.attributes[name].as_string().is_not(None)
                        for name in GUARD_FILTERS[query.guard]
                    )
                )
            )
        if query.has_error is not None:
            failed = exists().where(spans.c.trace_id == t.id, spans.c.status == "error")
            conditions.append(failed if query.has_error else ~failed)
        if query.text is not None:
            # Prompts, responses and error messages live in the root span's attributes.
            # A LIKE over the stored JSON text: no full-text index, but bounded by the
            # other filters and the page size, and identical on SQLite and Postgres.
            conditions.append(
                exists().where(
                    spans.c.trace_id == t.id,
                    spans.c.parent_id.is_(None),
                    cast(spans.c.attributes, Text).icontains(query.text, autoescape=True),
                )
            )
        return conditions
