"""Data retention beside the trace retention: finished workflow runs, idle sessions and
old long-term memories, each deleted by age when its setting asks for it.

The sibling of ``observe.retention.RetentionJob`` and built the same way: bounded
batches, oldest first, each batch its own short transaction (so other writers, on SQLite
every writer, wait at most one batch), children deleted explicitly before their parent
rather than by ``ON DELETE CASCADE`` (SQLite enforces foreign keys only when asked).

- runs: ``orchestration.retention_days`` after ``finished_at``, only succeeded, failed and
  cancelled runs (queued, running and waiting runs are never touched), with their steps
  and effect records;
- sessions: ``memory.session_retention_days`` after their last turn (``updated_at``),
  with their turns and summary;
- memories: ``memory.memory_retention_days`` after they were last written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.exc import SQLAlchemyError

from trellis.settings import MemorySettings, OrchestrationSettings
from trellis.store.db import Database
from trellis.store.tables import (
    memories,
    memory_sessions,
    memory_turns,
    workflow_effects,
    workflow_runs,
    workflow_steps,
)

__all__ = ["DataRetentionJob", "FINISHED_STATUSES"]

logger = logging.getLogger(__name__)

#: Run statuses retention may delete (``orchestration.records.FINISHED``, which this
#: layer may not import).
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")

_DAY = 86_400.0


class DataRetentionJob:
    """Deletes finished runs, idle sessions and old memories past their retention.

    ``run_once()`` does one pass; ``start()`` runs a pass at once and then every
    ``interval`` seconds until ``close()``. Counters in ``stats()``.
    """

    def __init__(
        self,
        db: Database,
        orchestration: OrchestrationSettings | None = None,
        memory: MemorySettings | None = None,
        *,
        interval: float = 600.0,
        batch_size: int = 1000,
    ) -> None:
        self.db = db
        self.orchestration = orchestration or OrchestrationSettings()
        self.memory = memory or MemorySettings()
        self.interval = interval
        self.batch_size = batch_size
        self.counts = {
            "deleted_runs": 0,
            "deleted_steps": 0,
            "deleted_effects": 0,
            "deleted_sessions": 0,
            "deleted_turns": 0,
            "deleted_memories": 0,
            "runs": 0,
            "errors": 0,
        }
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def enabled(self) -> bool:
        """Whether any setting asks for deletion (the job does nothing otherwise)."""
        return (
            self.orchestration.retention_days > 0
            or self.memory.session_retention_days > 0
            or self.memory.memory_retention_days > 0
        )

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    # --- one pass -----------------------------------------------------------------

    async def run_once(self, now: float | None = None) -> dict[str, int]:
        """Apply every retention setting once; what this pass deleted, per kind."""
        now = time.time() if now is None else now
        deleted = {"runs": 0, "sessions": 0, "memories": 0}
        if self.orchestration.retention_days > 0:
            cutoff = now - self.orchestration.retention_days * _DAY
            deleted["runs"] = await self._until_done(self._runs_batch, cutoff)
        if self.memory.session_retention_days > 0:
            cutoff = now - self.memory.session_retention_days * _DAY
            deleted["sessions"] = await self._until_done(self._sessions_batch, cutoff)
        if self.memory.memory_retention_days > 0:
            cutoff = now - self.memory.memory_retention_days * _DAY
            deleted["memories"] = await self._until_done(self._memories_batch, cutoff)
        self.counts["runs"] += 1
        if any(deleted.values()):
            logger.info(
                "retention deleted %(runs)d run(s), %(sessions)d session(s), "
                "%(memories)d memor(y/ies)",
                deleted,
            )
        return deleted

    async def _until_done(self, batch: Any, cutoff: float) -> int:
        total = 0
        while not self._stop.is_set():
            n = await batch(cutoff)
            total += n
            if n < self.batch_size:
                break
        return total

    async def _delete(self, conn: Any, table: Table, condition: Any, counter: str) -> None:
        result = await conn.execute(delete(table).where(condition))
        self.counts[counter] += max(result.rowcount, 0)

    async def _runs_batch(self, cutoff: float) -> int:
        runs = workflow_runs.c
        chosen = (
            select(runs.id)
            .where(runs.status.in_(FINISHED_STATUSES), runs.finished_at < cutoff)
            .order_by(runs.finished_at, runs.id)
            .limit(self.batch_size)
        )
        async with self.db.write() as conn:
            ids = list((await conn.execute(chosen)).scalars())
            if not ids:
                return 0
            await self._delete(
                conn, workflow_steps, workflow_steps.c.run_id.in_(ids), "deleted_steps"
            )
            await self._delete(
                conn, workflow_effects, workflow_effects.c.run_id.in_(ids), "deleted_effects"
            )
            # The status again: a run is never deleted unless it is finished.
            await self._delete(
                conn,
                workflow_runs,
                runs.id.in_(ids) & runs.status.in_(FINISHED_STATUSES),
                "deleted_runs",
            )
        return len(ids)

    async def _sessions_batch(self, cutoff: float) -> int:
        sessions = memory_sessions.c
        chosen = (
            select(sessions.id)
            .where(sessions.updated_at < cutoff)
            .order_by(sessions.updated_at, sessions.id)
            .limit(self.batch_size)
        )
        async with self.db.write() as conn:
            ids = list((await conn.execute(chosen)).scalars())
            if not ids:
                return 0
            await self._delete(
                conn, memory_turns, memory_turns.c.session_pk.in_(ids), "deleted_turns"
            )
            await self._delete(
                conn,
                memory_sessions,
                sessions.id.in_(ids) & (sessions.updated_at < cutoff),
                "deleted_sessions",
            )
        return len(ids)

    async def _memories_batch(self, cutoff: float) -> int:
        chosen = (
            select(memories.c.id)
            .where(memories.c.updated_at < cutoff)
            .order_by(memories.c.updated_at, memories.c.id)
            .limit(self.batch_size)
        )
        async with self.db.write() as conn:
            ids = list((await conn.execute(chosen)).scalars())
            if not ids:
                return 0
            await self._delete(conn, memories, memories.c.id.in_(ids), "deleted_memories")
        return len(ids)

    # --- the periodic task --------------------------------------------------------

    async def start(self) -> None:
        """Run a pass now (in the background) and then every ``interval`` seconds; nothing
        when no setting asks for deletion or the interval is 0."""
        if self._task is None and self.enabled and self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="trellis-data-retention")

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except SQLAlchemyError as exc:  # logged and counted: retry at the next interval
                self.counts["errors"] += 1
                logger.error("data retention failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def close(self) -> None:
        """Stop after the current batch (each batch is atomic)."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
