"""Data retention: finished runs (with steps and effects), idle sessions and old memories
go by age, oldest first, in batches; queued, running and waiting runs always stay."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import Table, func, insert, select

from trellis.settings import MemorySettings, OrchestrationSettings
from trellis.store import Database
from trellis.store.retention import DataRetentionJob
from trellis.store.tables import (
    memories,
    memory_sessions,
    memory_turns,
    workflow_effects,
    workflow_runs,
    workflow_steps,
)

DAY = 86_400.0


async def count(db: Database, table: Table) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def ids(db: Database, table: Table) -> set[Any]:
    async with db.engine.connect() as conn:
        return set((await conn.execute(select(table.c.id))).scalars())


async def add_run(db: Database, run_id: str, status: str, age_days: float, now: float) -> None:
    at = now - age_days * DAY
    finished = status in ("succeeded", "failed", "cancelled")
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(workflow_runs).values(
                id=run_id,
                workflow="w",
                workflow_version="v",
                status=status,
                input={},
                state={},
                trace_id=run_id.ljust(32, "0"),
                created_at=at,
                updated_at=at,
                finished_at=at if finished else None,
            )
        )
        for seq in (1, 2):
            await conn.execute(
                insert(workflow_steps).values(
                    run_id=run_id,
                    seq=seq,
                    step="s",
                    kind="function",
                    status="ok",
                    attempts=1,
                    span_id="0" * 16,
                    start_ns=int(at * 1e9),
                    end_ns=int(at * 1e9),
                )
            )
        await conn.execute(
            insert(workflow_effects).values(
                key=f"{run_id}:1:s",
                run_id=run_id,
                step="s",
                seq=1,
                args_hash="0" * 64,
                status="done",
                started_at=at,
            )
        )


async def test_finished_runs_past_retention_go_with_their_steps_and_effects(
    db: Database,
) -> None:
    now = time.time()
    for run_id, status, age in [
        ("old-ok", "succeeded", 40),
        ("old-failed", "failed", 35),
        ("old-cancelled", "cancelled", 31),
        ("recent-ok", "succeeded", 5),
        ("old-running", "running", 90),
        ("old-waiting", "waiting", 90),
        ("old-queued", "queued", 90),
    ]:
        await add_run(db, run_id, status, age, now)
    job = DataRetentionJob(db, OrchestrationSettings(retention_days=30), batch_size=2)
    deleted = await job.run_once(now)
    assert deleted == {"runs": 3, "sessions": 0, "memories": 0}
    assert await ids(db, workflow_runs) == {
        "recent-ok",
        "old-running",
        "old-waiting",
        "old-queued",
    }
    assert await count(db, workflow_steps) == 8 and await count(db, workflow_effects) == 4
    stats = job.stats()
    assert stats["deleted_runs"] == 3 and stats["deleted_steps"] == 6
    assert stats["deleted_effects"] == 3
    # Nothing else is old enough: a second pass deletes nothing.
    assert (await job.run_once(now))["runs"] == 0


async def test_idle_sessions_and_old_memories_go_only_when_configured(db: Database) -> None:
    now = time.time()
    async with db.engine.begin() as conn:
        for pk, (session_id, age) in enumerate([("idle", 100), ("active", 1)], 1):
            at = now - age * DAY
            await conn.execute(
                insert(memory_sessions).values(
                    id=pk, owner="k", session_id=session_id, created_at=at, updated_at=at
                )
            )
            await conn.execute(
                insert(memory_turns).values(
                    session_pk=pk,
                    role="user",
                    message={"role": "user", "content": "hi"},
                    tokens=1,
                    created_at=at,
                )
            )
        for memory_id, age in [("m-old", 400), ("m-new", 3)]:
            at = now - age * DAY
            await conn.execute(
                insert(memories).values(
                    id=memory_id,
                    owner="k",
                    user_id="u",
                    text="likes tea",
                    embedding=b"\0\0\0\0",
                    embedder="e",
                    created_at=at,
                    updated_at=at,
                )
            )
    # Without settings nothing is deleted, and the periodic job does not even start.
    idle = DataRetentionJob(db)
    assert not idle.enabled
    assert await idle.run_once(now) == {"runs": 0, "sessions": 0, "memories": 0}
    assert await count(db, memory_sessions) == 2 and await count(db, memories) == 2
    # Sessions only: memories stay.
    job = DataRetentionJob(db, memory=MemorySettings(session_retention_days=30))
    assert (await job.run_once(now))["sessions"] == 1
    async with db.engine.connect() as conn:
        left = list((await conn.execute(select(memory_sessions.c.session_id))).scalars())
    assert left == ["active"] and await count(db, memory_turns) == 1
    assert await count(db, memories) == 2
    # Memories when a setting says so.
    settings = MemorySettings(session_retention_days=30, memory_retention_days=365)
    assert (await DataRetentionJob(db, memory=settings).run_once(now))["memories"] == 1
    assert await ids(db, memories) == {"m-new"}


async def test_the_periodic_job_runs_a_pass_at_start_and_stops(db: Database) -> None:
    now = time.time()
    await add_run(db, "old", "succeeded", 10, now)
    job = DataRetentionJob(db, OrchestrationSettings(retention_days=1), interval=3600)
    await job.start()
    for _ in range(100):
        if job.stats()["runs"]:
            break
        await asyncio.sleep(0.02)
    await job.close()
    assert await ids(db, workflow_runs) == set()
