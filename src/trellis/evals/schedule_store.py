"""Claims and outcomes of scheduled eval runs (table ``eval_schedule_runs``).

A row is inserted for a (schedule, due time) before anything runs; the pair is unique, so
when several replicas reach the same due time only the one whose insert wins runs it (the
others see the conflict and skip). The row then records the eval run, the baseline it was
compared with and the outcome: ``passed``, ``regressed`` or ``failed`` (with the reason).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from trellis.store.db import Database
from trellis.store.tables import eval_schedule_runs

__all__ = ["ScheduleRun", "ScheduleStore", "FINISHED", "TRIGGERS"]

#: The outcomes of a finished scheduled run.
FINISHED = ("passed", "regressed", "failed")
TRIGGERS = ("cron", "missed", "manual")


@dataclass(slots=True)
class ScheduleRun:
    id: str
    schedule: str
    due_at: float
    trigger: str
    status: str
    run_id: str | None
    baseline_run_id: str | None
    reason: str | None
    comparison: dict[str, Any] | None
    regressions: list[dict[str, Any]] | None
    claimed_at: float
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "eval.schedule_run",
            "id": self.id,
            "schedule": self.schedule,
            "due_at": self.due_at,
            "trigger": self.trigger,
            "status": self.status,
            "run_id": self.run_id,
            "baseline_run_id": self.baseline_run_id,
            "reason": self.reason,
            "regressions": self.regressions or [],
            "comparison": self.comparison,
            "claimed_at": self.claimed_at,
            "finished_at": self.finished_at,
        }


def _record(row: Any) -> ScheduleRun:
    return ScheduleRun(**{name: row[name] for name in ScheduleRun.__slots__})  # type: ignore[attr-defined]


class ScheduleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, schedule: str, due_at: float, trigger: str) -> ScheduleRun | None:
        """The new ``running`` row for (schedule, due time), or None when another process
        (or an earlier life of this one) claimed it first."""
        now = time.time()
        row = {
            "id": "sched_" + os.urandom(10).hex(),
            "schedule": schedule,
            "due_at": float(due_at),
            "trigger": trigger,
            "status": "running",
            "run_id": None,
            "baseline_run_id": None,
            "reason": None,
            "comparison": None,
            "regressions": None,
            "claimed_at": now,
            "finished_at": None,
        }
        try:
            async with self.db.write() as conn:
                await conn.execute(sa.insert(eval_schedule_runs), [row])
        except IntegrityError:
            return None
        return _record(row)

    async def set_run(self, claim_id: str, run_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                sa.update(eval_schedule_runs)
                .where(eval_schedule_runs.c.id == claim_id)
                .values(run_id=run_id)
            )

    async def finish(
        self,
        claim_id: str,
        status: str,
        *,
        reason: str | None = None,
        baseline_run_id: str | None = None,
        comparison: dict[str, Any] | None = None,
        regressions: list[dict[str, Any]] | None = None,
    ) -> ScheduleRun:
        """Record the outcome once: a claim already finished (judged by another process
        that adopted it at the same time) keeps its first outcome."""
        assert status in FINISHED, status
        async with self.db.write() as conn:
            await conn.execute(
                sa.update(eval_schedule_runs)
                .where(
                    eval_schedule_runs.c.id == claim_id, eval_schedule_runs.c.status == "running"
                )
                .values(
                    status=status,
                    reason=reason,
                    baseline_run_id=baseline_run_id,
                    comparison=comparison,
                    regressions=regressions,
                    finished_at=time.time(),
                )
            )
        return await self.get(claim_id)

    async def get(self, claim_id: str) -> ScheduleRun:
        query = sa.select(eval_schedule_runs).where(eval_schedule_runs.c.id == claim_id)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().one()
        return _record(row)

    async def history(
        self, schedule: str, *, limit: int = 50, status: str | None = None
    ) -> list[ScheduleRun]:
        """The schedule's runs, latest due time first."""
        query = (
            sa.select(eval_schedule_runs)
            .where(eval_schedule_runs.c.schedule == schedule)
            .order_by(eval_schedule_runs.c.due_at.desc())
            .limit(limit)
        )
        if status is not None:
            query = query.where(eval_schedule_runs.c.status == status)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_record(row) for row in rows]

    async def latest_due(self, schedule: str) -> float | None:
        """The latest due time claimed for the schedule (by any trigger), if any."""
        query = sa.select(sa.func.max(eval_schedule_runs.c.due_at)).where(
            eval_schedule_runs.c.schedule == schedule
        )
        async with self.db.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        return None if value is None else float(value)

    async def last_finished(self, schedule: str) -> ScheduleRun | None:
        """The schedule's most recently finished run (its current outcome)."""
        return await self._last(schedule, FINISHED)

    async def baseline(self, schedule: str) -> ScheduleRun | None:
        """The schedule's most recently finished run that passed: the next run's baseline."""
        return await self._last(schedule, ("passed",))

    async def _last(self, schedule: str, statuses: tuple[str, ...]) -> ScheduleRun | None:
        query = (
            sa.select(eval_schedule_runs)
            .where(
                eval_schedule_runs.c.schedule == schedule,
                eval_schedule_runs.c.status.in_(statuses),
            )
            .order_by(eval_schedule_runs.c.finished_at.desc(), eval_schedule_runs.c.due_at.desc())
            .limit(1)
        )
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _record(row)

    async def unfinished(self) -> list[ScheduleRun]:
        """Rows still ``running`` (a run in flight, or one whose process stopped)."""
        query = sa.select(eval_schedule_runs).where(eval_schedule_runs.c.status == "running")
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_record(row) for row in rows]
