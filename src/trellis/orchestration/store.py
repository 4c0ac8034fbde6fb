"""Where runs live: a small interface, an SQL implementation and an in-memory one.

The engine only talks to :class:`RunStore`, so a faster checkpoint writer (a direct
``sqlite3`` thread, a pipelined asyncpg connection) can replace :class:`SqlRunStore`
without touching the engine. Every write that changes a running run is *fenced*: it
applies only while the caller still holds the lease (owner and epoch) it claimed.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping

from trellis.orchestration.records import (
    Checkpoint,
    Effect,
    Lease,
    RunRecord,
    RunStatus,
    StepRecord,
)
from trellis.store.db import Database
from trellis.store.tables import workflow_effects, workflow_runs, workflow_steps, workflow_workers

__all__ = ["RunStore", "MemoryRunStore", "SqlRunStore", "Worker", "Committed"]

_CLAIMABLE = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


@dataclasses.dataclass(frozen=True, slots=True)
class Committed:
    """A checkpoint went through; ``cancel_requested`` tells the owner to stop the run."""

    cancel_requested: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Worker:
    id: str
    hostname: str
    pid: int
    started_at: float
    heartbeat_at: float


class RunStore(Protocol):
    """Persistence of runs, their step log, leases and idempotency records."""

    async def register_worker(self, worker: Worker) -> None: ...

    async def workers(self, hostname: str) -> list[Worker]: ...

    async def remove_workers(self, ids: Sequence[str]) -> None:
        """Forget workers (clean shutdown, or dead ones whose runs were claimed)."""
        ...

    async def heartbeat(self, owner: str, now: float, lease_until: float) -> int:
        """Renew every running run leased to ``owner``; the number renewed."""
        ...

    async def create(self, run: RunRecord) -> None: ...

    async def checkpoint(self, lease: Lease, cp: Checkpoint, now: float) -> Committed | None:
        """Commit state + step record + cursor in one transaction; None if the lease is lost."""
        ...

    async def claim(
        self,
        owner: str,
        now: float,
        lease_until: float,
        *,
        limit: int = 100,
        run_id: str | None = None,
        dead_owners: Sequence[str] = (),
        workflows: Sequence[str] | None = None,
        max_recoveries: int | None = None,
    ) -> list[Lease]:
        """Take queued runs and runs whose lease expired (or whose owner is dead), oldest
        first; an orphaned run recovered ``max_recoveries`` times already is left for
        :meth:`abandon`."""
        ...

    async def abandon(
        self,
        now: float,
        error: dict[str, Any],
        *,
        max_recoveries: int,
        dead_owners: Sequence[str] = (),
        workflows: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[str]:
        """Fail orphaned runs recovered ``max_recoveries`` times already (a run that keeps
        crashing its process) with ``error`` instead of claiming them again; their ids."""
        ...

    async def count_runs(self, status: str) -> int:
        """How many runs have ``status`` (every workflow, every replica)."""
        ...

    async def statuses(self, run_ids: Sequence[str]) -> dict[str, str]:
        """The status of each of these runs that exists (one query for many waiters)."""
        ...

    async def release(self, lease: Lease) -> None: ...

    async def apply_input(self, run_id: str, seq: int, cp: Checkpoint, now: float) -> bool:
        """Resume a waiting run at ``seq`` with ``cp`` (its state, step record and cursor, status
        queued, or finished); False if the run is not waiting there (already resumed)."""
        ...

    async def finish(
        self, lease: Lease, status: str, error: dict[str, Any] | None, now: float
    ) -> bool:
        """End a run without a step (cancelled between steps); fenced like a checkpoint."""
        ...

    async def request_cancel(self, run_id: str, now: float) -> bool:
        """Mark for cancel; a run nobody owns (queued, waiting) is cancelled at once."""
        ...

    async def get(self, run_id: str) -> RunRecord | None: ...

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        key_id: str | None = None,
        limit: int = 100,
        project_id: str | None = None,
    ) -> list[RunRecord]: ...

    async def steps(self, run_id: str) -> list[StepRecord]: ...

    async def effect(self, key: str) -> Effect | None: ...

    async def begin_effect(self, effect: Effect) -> None:
        """Record (or re-record, attempts + 1) a started effect, committed before it runs."""
        ...

    async def finish_effect(
        self, key: str, status: str, result: Any, error: dict[str, Any] | None, now: float
    ) -> None: ...


def _run_values(cp: Checkpoint, now: float) -> dict[str, Any]:
    step = cp.step
    values: dict[str, Any] = {
        "state": cp.state,
        "seq": step.seq,
        "next_step": cp.next_step,
        "status": cp.status,
        "output": cp.output,
        "error": cp.error,
        "waiting_for": cp.waiting_for,
        "updated_at": now,
    }
    if cp.finished:
        values["finished_at"] = now
    if cp.release:
        values.update(lease_owner=None, lease_until=None)
    return values


def _orphaned(run: RunRecord, now: float, dead_owners: Sequence[str]) -> bool:
    """Nobody holds the run: never leased (queued), lease ran out, or its owner is dead."""
    return run.lease_until is None or run.lease_until < now or run.lease_owner in dead_owners


def _spent(run: RunRecord, max_recoveries: int | None) -> bool:
    """An orphaned running run whose next claim would exceed ``max_recoveries``."""
    return (
        max_recoveries is not None
        and run.status == RunStatus.RUNNING
        and run.recoveries >= max_recoveries
    )


# --- in memory ---------------------------------------------------------------------------


class MemoryRunStore:
    """A :class:`RunStore` in a dict: for tests and library use without a database.

    Values are deep-copied in and out, as a database would, so callers can't alias state.
    """

    def __init__(self) -> None:
        self.runs: dict[str, RunRecord] = {}
        self.step_log: dict[str, list[StepRecord]] = {}
        self.effects: dict[str, Effect] = {}
        self._workers: dict[str, Worker] = {}

    async def register_worker(self, worker: Worker) -> None:
        self._workers[worker.id] = worker

    async def workers(self, hostname: str) -> list[Worker]:
        return [w for w in self._workers.values() if w.hostname == hostname]

    async def remove_workers(self, ids: Sequence[str]) -> None:
        for worker_id in ids:
            self._workers.pop(worker_id, None)

    async def heartbeat(self, owner: str, now: float, lease_until: float) -> int:
        if owner in self._workers:
            self._workers[owner] = dataclasses.replace(self._workers[owner], heartbeat_at=now)
        renewed = 0
        for run in self.runs.values():
            if run.lease_owner == owner and run.status == RunStatus.RUNNING:
                run.lease_until = lease_until
                renewed += 1
        return renewed

    async def create(self, run: RunRecord) -> None:
        self.runs[run.id] = copy.deepcopy(run)
        self.step_log[run.id] = []

    def _held(self, lease: Lease) -> RunRecord | None:
        run = self.runs.get(lease.run_id)
        if (
            run is None
            or run.lease_owner != lease.owner
            or run.lease_epoch != lease.epoch
            or run.status != RunStatus.RUNNING
        ):
            return None
        return run

    async def checkpoint(self, lease: Lease, cp: Checkpoint, now: float) -> Committed | None:
        run = self._held(lease)
        if run is None:
            return None
        for name, value in _run_values(copy.deepcopy(cp), now).items():
            setattr(run, name, value)
        step = cp.step
        run.input_tokens += step.input_tokens or 0
        run.output_tokens += step.output_tokens or 0
        run.cost += step.cost or 0.0
        self.step_log[run.id].append(copy.deepcopy(step))
        return Committed(run.cancel_requested)

    async def finish(
        self, lease: Lease, status: str, error: dict[str, Any] | None, now: float
    ) -> bool:
        run = self._held(lease)
        if run is None:
            return False
        run.status, run.error, run.next_step, run.finished_at = status, error, None, now
        run.lease_owner = run.lease_until = None
        return True

    async def claim(
        self,
        owner: str,
        now: float,
        lease_until: float,
        *,
        limit: int = 100,
        run_id: str | None = None,
        dead_owners: Sequence[str] = (),
        workflows: Sequence[str] | None = None,
        max_recoveries: int | None = None,
    ) -> list[Lease]:
        leases: list[Lease] = []
        for run in sorted(self.runs.values(), key=lambda r: (r.created_at, r.id)):
            if len(leases) >= limit:
                break
            if run_id is not None and run.id != run_id:
                continue
            if workflows is not None and run.workflow not in workflows:
                continue
            if run.status not in _CLAIMABLE or not _orphaned(run, now, dead_owners):
                continue
            if _spent(run, max_recoveries):
                continue
            if run.status == RunStatus.RUNNING:
                run.recoveries += 1
            run.status = RunStatus.RUNNING.value
            run.lease_owner, run.lease_epoch, run.lease_until = (
                owner,
                run.lease_epoch + 1,
                lease_until,
            )
            leases.append(Lease(run.id, owner, run.lease_epoch))
        return leases

    async def abandon(
        self,
        now: float,
        error: dict[str, Any],
        *,
        max_recoveries: int,
        dead_owners: Sequence[str] = (),
        workflows: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[str]:
        failed: list[str] = []
        for run in sorted(self.runs.values(), key=lambda r: (r.created_at, r.id)):
            if len(failed) >= limit:
                break
            if workflows is not None and run.workflow not in workflows:
                continue
            if run.status != RunStatus.RUNNING or not _orphaned(run, now, dead_owners):
                continue
            if _spent(run, max_recoveries):
                run.status, run.error = RunStatus.FAILED.value, copy.deepcopy(error)
                run.next_step, run.finished_at, run.updated_at = None, now, now
                run.lease_owner = run.lease_until = None
                failed.append(run.id)
        return failed

    async def count_runs(self, status: str) -> int:
        return sum(1 for run in self.runs.values() if run.status == status)

    async def statuses(self, run_ids: Sequence[str]) -> dict[str, str]:
        return {i: self.runs[i].status for i in run_ids if i in self.runs}

    async def release(self, lease: Lease) -> None:
        run = self.runs.get(lease.run_id)
        if run is not None and run.lease_owner == lease.owner and run.lease_epoch == lease.epoch:
            run.lease_until = 0.0

    async def apply_input(self, run_id: str, seq: int, cp: Checkpoint, now: float) -> bool:
        run = self.runs.get(run_id)
        if run is None or run.status != RunStatus.WAITING or run.seq != seq:
            return False
        for name, value in _run_values(copy.deepcopy(cp), now).items():
            setattr(run, name, value)
        run.lease_owner = run.lease_until = None
        self.step_log[run_id].append(copy.deepcopy(cp.step))
        return True

    async def request_cancel(self, run_id: str, now: float) -> bool:
        run = self.runs.get(run_id)
        if run is None:
            return False
        run.cancel_requested = True
        unowned = run.lease_owner is None or (run.lease_until or 0) < now
        if run.status == RunStatus.WAITING or (run.status == RunStatus.QUEUED and unowned):
            run.status, run.finished_at, run.next_step = RunStatus.CANCELLED.value, now, None
            run.lease_owner = None
        return True

    async def get(self, run_id: str) -> RunRecord | None:
        run = self.runs.get(run_id)
        return copy.deepcopy(run) if run is not None else None

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        key_id: str | None = None,
        limit: int = 100,
        project_id: str | None = None,
    ) -> list[RunRecord]:
        runs = [
            r
            for r in self.runs.values()
            if (workflow is None or r.workflow == workflow)
            and (status is None or r.status == status)
            and (key_id is None or r.key_id == key_id)
            and (project_id is None or r.project_id == project_id)
        ]
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return copy.deepcopy(runs[:limit])

    async def steps(self, run_id: str) -> list[StepRecord]:
        return copy.deepcopy(self.step_log.get(run_id, []))

    async def effect(self, key: str) -> Effect | None:
        found = self.effects.get(key)
        return copy.deepcopy(found) if found is not None else None

    async def begin_effect(self, effect: Effect) -> None:
        found = self.effects.get(effect.key)
        if found is None:
            self.effects[effect.key] = copy.deepcopy(effect)
        else:
            found.status, found.attempts, found.error = "started", found.attempts + 1, None

    async def finish_effect(
        self, key: str, status: str, result: Any, error: dict[str, Any] | None, now: float
    ) -> None:
        found = self.effects[key]
        found.status, found.result, found.error = status, copy.deepcopy(result), error
        found.finished_at = now


# --- SQL (SQLite or Postgres through trellis.store.Database) ----------------------------

_RUN_FIELDS = [f.name for f in dataclasses.fields(RunRecord)]
_STEP_FIELDS = [f.name for f in dataclasses.fields(StepRecord)]
_EFFECT_FIELDS = [f.name for f in dataclasses.fields(Effect)]


def _run(row: RowMapping) -> RunRecord:
    return RunRecord(**{name: row[name] for name in _RUN_FIELDS})


def _step(row: RowMapping) -> StepRecord:
    return StepRecord(**{name: row[name] for name in _STEP_FIELDS})


def _effect(row: RowMapping) -> Effect:
    return Effect(**{name: row[name] for name in _EFFECT_FIELDS})


class SqlRunStore:
    """A :class:`RunStore` on Trellis' own database (SQLAlchemy Core, SQLite or Postgres)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def register_worker(self, worker: Worker) -> None:
        async with self.db.write() as conn:
            await conn.execute(insert(workflow_workers).values(**dataclasses.asdict(worker)))

    async def workers(self, hostname: str) -> list[Worker]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                select(workflow_workers).where(workflow_workers.c.hostname == hostname)
            )
            return [Worker(**row) for row in rows.mappings()]

    async def remove_workers(self, ids: Sequence[str]) -> None:
        if ids:
            async with self.db.write() as conn:
                await conn.execute(
                    workflow_workers.delete().where(workflow_workers.c.id.in_(list(ids)))
                )

    async def heartbeat(self, owner: str, now: float, lease_until: float) -> int:
        async with self.db.write() as conn:
            await conn.execute(
                update(workflow_workers)
                .where(workflow_workers.c.id == owner)
                .values(heartbeat_at=now)
            )
            result = await conn.execute(
                update(workflow_runs)
                .where(
                    workflow_runs.c.lease_owner == owner,
                    workflow_runs.c.status == RunStatus.RUNNING.value,
                )
                .values(lease_until=lease_until)
            )
            return int(result.rowcount)

    async def create(self, run: RunRecord) -> None:
        async with self.db.write() as conn:
            await conn.execute(insert(workflow_runs).values(**dataclasses.asdict(run)))

    def _fence(self, lease: Lease) -> Any:
        return and_(
            workflow_runs.c.id == lease.run_id,
            workflow_runs.c.lease_owner == lease.owner,
            workflow_runs.c.lease_epoch == lease.epoch,
            workflow_runs.c.status == RunStatus.RUNNING.value,
        )

    async def checkpoint(self, lease: Lease, cp: Checkpoint, now: float) -> Committed | None:
        step = cp.step
        values = _run_values(cp, now)
        values.update(
            input_tokens=workflow_runs.c.input_tokens + (step.input_tokens or 0),
            output_tokens=workflow_runs.c.output_tokens + (step.output_tokens or 0),
            cost=workflow_runs.c.cost + (step.cost or 0.0),
        )
        async with self.db.engine.connect() as conn, conn.begin() as tx:
            # The fence: the run changes only while this lease is the current one.
            row = (
                await conn.execute(
                    update(workflow_runs)
                    .where(self._fence(lease))
                    .values(**values)
                    .returning(workflow_runs.c.cancel_requested)
                )
            ).first()
            if row is None:
                await tx.rollback()
                return None
            await conn.execute(insert(workflow_steps).values(**dataclasses.asdict(step)))
        return Committed(bool(row[0]))

    async def finish(
        self, lease: Lease, status: str, error: dict[str, Any] | None, now: float
    ) -> bool:
        async with self.db.write() as conn:
            result = await conn.execute(
                update(workflow_runs)
                .where(self._fence(lease))
                .values(
                    status=status,
                    error=error,
                    next_step=None,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_until=None,
                )
            )
            return bool(result.rowcount == 1)

    async def claim(
        self,
        owner: str,
        now: float,
        lease_until: float,
        *,
        limit: int = 100,
        run_id: str | None = None,
        dead_owners: Sequence[str] = (),
        workflows: Sequence[str] | None = None,
        max_recoveries: int | None = None,
    ) -> list[Lease]:
        runs = workflow_runs.c
        query = (
            select(runs.id, runs.lease_epoch)
            .where(runs.status.in_(_CLAIMABLE), self._orphaned(now, dead_owners))
            .order_by(runs.created_at, runs.id)
            .limit(limit)
        )
        if max_recoveries is not None:
            query = query.where(
                or_(runs.status != RunStatus.RUNNING.value, runs.recoveries < max_recoveries)
            )
        if run_id is not None:
            query = query.where(runs.id == run_id)
        if workflows is not None:
            query = query.where(runs.workflow.in_(list(workflows)))
        won = await self._compare_and_set(
            query,
            runs.status.in_(_CLAIMABLE),
            {
                "lease_owner": owner,
                "lease_epoch": runs.lease_epoch + 1,
                "lease_until": lease_until,
                "recoveries": runs.recoveries
                + case((runs.status == RunStatus.RUNNING.value, 1), else_=0),
                "status": RunStatus.RUNNING.value,
                "updated_at": now,
            },
        )
        return [Lease(run_id, owner, epoch + 1) for run_id, epoch in won]

    async def _compare_and_set(
        self, candidates: Any, still: Any, values: dict[str, Any]
    ) -> list[tuple[str, int]]:
        """Update each candidate run (``candidates`` selects id and epoch) to ``values`` if its
        epoch is unchanged and ``still`` holds: of two processes doing this at once, exactly
        one wins each run. The (id, epoch) pairs this one won."""
        runs = workflow_runs.c
        won: list[tuple[str, int]] = []
        async with self.db.engine.connect() as conn:
            found = (await conn.execute(candidates)).all()
            await conn.commit()
            for run_id, epoch in found:
                async with conn.begin():
                    result = await conn.execute(
                        update(workflow_runs)
                        .where(runs.id == run_id, runs.lease_epoch == epoch, still)
                        .values(**values)
                    )
                if result.rowcount == 1:
                    won.append((run_id, epoch))
        return won

    @staticmethod
    def _orphaned(now: float, dead_owners: Sequence[str]) -> Any:
        runs = workflow_runs.c
        expired = or_(runs.lease_until.is_(None), runs.lease_until < now)
        if dead_owners:
            expired = or_(expired, runs.lease_owner.in_(list(dead_owners)))
        return expired

    async def abandon(
        self,
        now: float,
        error: dict[str, Any],
        *,
        max_recoveries: int,
        dead_owners: Sequence[str] = (),
        workflows: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[str]:
        runs = workflow_runs.c
        query = (
            select(runs.id, runs.lease_epoch)
            .where(
                runs.status == RunStatus.RUNNING.value,
                runs.recoveries >= max_recoveries,
                self._orphaned(now, dead_owners),
            )
            .order_by(runs.created_at, runs.id)
            .limit(limit)
        )
        if workflows is not None:
            query = query.where(runs.workflow.in_(list(workflows)))
        won = await self._compare_and_set(
            query,
            runs.status == RunStatus.RUNNING.value,
            {
                "status": RunStatus.FAILED.value,
                "error": error,
                "next_step": None,
                "finished_at": now,
                "updated_at": now,
                "lease_owner": None,
                "lease_until": None,
            },
        )
        return [run_id for run_id, _ in won]

    async def count_runs(self, status: str) -> int:
        query = (
            select(func.count()).select_from(workflow_runs).where(workflow_runs.c.status == status)
        )
        async with self.db.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def statuses(self, run_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        ids = list(run_ids)
        async with self.db.engine.connect() as conn:
            for start in range(0, len(ids), 500):  # within every backend's parameter limit
                query = select(workflow_runs.c.id, workflow_runs.c.status).where(
                    workflow_runs.c.id.in_(ids[start : start + 500])
                )
                found.update({row[0]: row[1] for row in await conn.execute(query)})
        return found

    async def release(self, lease: Lease) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(workflow_runs)
                .where(
                    workflow_runs.c.id == lease.run_id,
                    workflow_runs.c.lease_owner == lease.owner,
                    workflow_runs.c.lease_epoch == lease.epoch,
                )
                .values(lease_until=0.0)
            )

    async def apply_input(self, run_id: str, seq: int, cp: Checkpoint, now: float) -> bool:
        values = _run_values(cp, now)
        values.update(lease_owner=None, lease_until=None)
        async with self.db.engine.connect() as conn, conn.begin() as tx:
            result = await conn.execute(
                update(workflow_runs)
                .where(
                    workflow_runs.c.id == run_id,
                    workflow_runs.c.status == RunStatus.WAITING.value,
                    workflow_runs.c.seq == seq,
                )
                .values(**values)
            )
            if result.rowcount != 1:
                await tx.rollback()
                return False
            await conn.execute(insert(workflow_steps).values(**dataclasses.asdict(cp.step)))
        return True

    async def request_cancel(self, run_id: str, now: float) -> bool:
        runs = workflow_runs.c
        async with self.db.write() as conn:
            result = await conn.execute(
                update(workflow_runs).where(runs.id == run_id).values(cancel_requested=True)
            )
            if result.rowcount != 1:
                return False
            unowned = or_(runs.lease_owner.is_(None), runs.lease_until < now)
            await conn.execute(
                update(workflow_runs)
                .where(
                    runs.id == run_id,
                    or_(
                        runs.status == RunStatus.WAITING.value,
                        and_(runs.status == RunStatus.QUEUED.value, unowned),
                    ),
                )
                .values(
                    status=RunStatus.CANCELLED.value,
                    finished_at=now,
                    updated_at=now,
                    next_step=None,
                    lease_owner=None,
                )
            )
        return True

    async def get(self, run_id: str) -> RunRecord | None:
        async with self.db.engine.connect() as conn:
            row = (
                (await conn.execute(select(workflow_runs).where(workflow_runs.c.id == run_id)))
                .mappings()
                .first()
            )
        return _run(row) if row is not None else None

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        key_id: str | None = None,
        limit: int = 100,
        project_id: str | None = None,
    ) -> list[RunRecord]:
        query = select(workflow_runs).order_by(workflow_runs.c.created_at.desc()).limit(limit)
        if workflow is not None:
            query = query.where(workflow_runs.c.workflow == workflow)
        if status is not None:
            query = query.where(workflow_runs.c.status == status)
        if key_id is not None:
            query = query.where(workflow_runs.c.key_id == key_id)
        if project_id is not None:
            query = query.where(workflow_runs.c.project_id == project_id)
        async with self.db.engine.connect() as conn:
            return [_run(row) for row in (await conn.execute(query)).mappings()]

    async def steps(self, run_id: str) -> list[StepRecord]:
        query = (
            select(workflow_steps)
            .where(workflow_steps.c.run_id == run_id)
            .order_by(workflow_steps.c.seq)
        )
        async with self.db.engine.connect() as conn:
            return [_step(row) for row in (await conn.execute(query)).mappings()]

    async def effect(self, key: str) -> Effect | None:
        async with self.db.engine.connect() as conn:
            row = (
                (await conn.execute(select(workflow_effects).where(workflow_effects.c.key == key)))
                .mappings()
                .first()
            )
        return _effect(row) if row is not None else None

    async def begin_effect(self, effect: Effect) -> None:
        async with self.db.write() as conn:
            result = await conn.execute(
                update(workflow_effects)
                .where(workflow_effects.c.key == effect.key)
                .values(
                    status="started",
                    error=None,
                    attempts=workflow_effects.c.attempts + 1,
                )
            )
            if result.rowcount == 0:
                await conn.execute(insert(workflow_effects).values(**dataclasses.asdict(effect)))

    async def finish_effect(
        self, key: str, status: str, result: Any, error: dict[str, Any] | None, now: float
    ) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(workflow_effects)
                .where(workflow_effects.c.key == key)
                .values(status=status, result=result, error=error, finished_at=now)
            )
