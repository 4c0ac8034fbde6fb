"""Trace retention: a periodic job that keeps the trace store bounded by age and by count.

Deletes in bounded batches, oldest first, each batch its own short transaction, so
the writer (and, on SQLite, every other writer) is never locked out for long and a
crash mid-run loses nothing but progress. Scores and spans of a trace are deleted
explicitly before the trace row rather than relying on ``ON DELETE CASCADE``, so the
work per batch is visible and bounded on both backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from trellis.settings import TracingSettings
from trellis.store.db import Database
from trellis.store.tables import scores, spans, traces

__all__ = ["RetentionJob"]

logger = logging.getLogger(__name__)


class RetentionJob:
    """Deletes traces older than ``retention_days`` and beyond ``max_traces``.

    ``run_once()`` does one pass (tests and the CLI call it); ``start()`` runs a pass
    at once and then every ``retention_interval`` seconds until ``close()``.
    Counters: ``deleted_traces``, ``deleted_spans``, ``deleted_scores``, ``runs``,
    ``errors``.
    """

    def __init__(self, db: Database, settings: TracingSettings | None = None) -> None:
        self.db = db
        self.settings = settings or TracingSettings()
        self.deleted_traces = 0
        self.deleted_spans = 0
        self.deleted_scores = 0
        self.runs = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def stats(self) -> dict[str, int]:
        return {
            "deleted_traces": self.deleted_traces,
            "deleted_spans": self.deleted_spans,
            "deleted_scores": self.deleted_scores,
            "runs": self.runs,
            "errors": self.errors,
        }

    # --- one pass -----------------------------------------------------------------

    async def run_once(self, now_ns: int | None = None) -> int:
        """Enforce both limits once; returns the number of traces deleted."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        deleted = 0
        if self.settings.retention_days > 0:
            cutoff = now_ns - int(self.settings.retention_days * 86_400 * 1e9)
            deleted += await self._delete_older_than(cutoff)
        if self.settings.max_traces > 0:
            deleted += await self._enforce_max_traces(self.settings.max_traces)
        self.runs += 1
        if deleted:
            logger.info("retention deleted %d trace(s)", deleted)
        return deleted

    async def _delete_older_than(self, cutoff_ns: int) -> int:
        deleted = 0
        while not self._stop.is_set():
            n = await self._delete_batch(
                traces.c.start_ns < cutoff_ns, self.settings.retention_batch_size
            )
            deleted += n
            if n < self.settings.retention_batch_size:
                break
        return deleted

    async def _enforce_max_traces(self, max_traces: int) -> int:
        async with self.db.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(traces))).scalar_one()
        excess = total - max_traces
        deleted = 0
        while excess > 0 and not self._stop.is_set():
            n = await self._delete_batch(None, min(excess, self.settings.retention_batch_size))
            if n == 0:
                break
            deleted += n
            excess -= n
        return deleted

    async def _delete_batch(self, condition: Any, limit: int) -> int:
        """Delete up to ``limit`` oldest traces matching ``condition``, in one transaction."""
        chosen = select(traces.c.id).order_by(traces.c.start_ns, traces.c.id).limit(limit)
        if condition is not None:
            chosen = chosen.where(condition)
        async with self.db.write() as conn:
            ids = list((await conn.execute(chosen)).scalars())
            if not ids:
                return 0
            n_scores = (
                await conn.execute(delete(scores).where(scores.c.trace_id.in_(ids)))
            ).rowcount
            n_spans = (await conn.execute(delete(spans).where(spans.c.trace_id.in_(ids)))).rowcount
            n_traces = (await conn.execute(delete(traces).where(traces.c.id.in_(ids)))).rowcount
        self.deleted_scores += max(n_scores, 0)
        self.deleted_spans += max(n_spans, 0)
        self.deleted_traces += max(n_traces, 0)
        return len(ids)

    # --- the periodic task --------------------------------------------------------

    async def start(self) -> None:
        """Run a pass now (in the background) and then every ``retention_interval`` s."""
        if self._task is None and self.settings.retention_interval > 0:
            self._task = asyncio.create_task(self._run(), name="trellis-trace-retention")

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except SQLAlchemyError as exc:  # logged and counted: retry at the next interval
                self.errors += 1
                logger.error("trace retention failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.retention_interval)

    async def close(self) -> None:
        """Stop after the current batch (each batch is atomic, so nothing is half-deleted)."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
