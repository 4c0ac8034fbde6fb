"""Read side of the trace tables, for the API and the web UI.

Rows come back as plain dicts with the column names of ``traces`` and
``spans`` (timestamps in epoch nanoseconds), ready to serialise as JSON.
"""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import select

from trellis.store.db import Database
from trellis.store.tables import spans, traces

__all__ = ["TraceStore", "MAX_LIST_LIMIT"]

MAX_LIST_LIMIT = 1000


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
        result = dict(row)
        result["spans"] = [dict(span) for span in span_rows]
        return result

    async def list(
        self,
        limit: int = 50,
        model: str | None = None,
        key_id: str | None = None,
        status: str | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Trace rows without spans, newest first, optionally filtered."""
        limit = max(1, min(int(limit), MAX_LIST_LIMIT))
        query = select(traces).order_by(traces.c.start_ns.desc(), traces.c.id.desc()).limit(limit)
        if model is not None:
            query = query.where(traces.c.model == model)
        if key_id is not None:
            query = query.where(traces.c.key_id == key_id)
        if status is not None:
            query = query.where(traces.c.status == status)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [dict(row) for row in rows]
