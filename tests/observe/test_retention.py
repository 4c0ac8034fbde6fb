"""Retention: old traces and the excess over ``max_traces`` go, oldest first, in batches."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlalchemy import func, select

from trellis.observe.retention import RetentionJob
from trellis.observe.tracing import Trace
from trellis.observe.writer import TraceWriter
from trellis.settings import TracingSettings
from trellis.store import Database
from trellis.store.tables import scores, spans, traces

DAY_NS = 86_400 * 10**9


def aged_trace(age_days: float, now_ns: int) -> Trace:
    trace = Trace(kind="chat", name="t")
    start = now_ns - int(age_days * DAY_NS)
    for span in trace.spans:
        span.start_ns = start
    child = trace.start_span("child")
    child.start_ns = start
    trace.scores.append({"name": "s", "value": 1.0})
    trace.finish()
    return trace


async def counts(db: Database) -> tuple[int, int, int]:
    async with db.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            [
                (await conn.execute(select(func.count()).select_from(t))).scalar_one()
                for t in (traces, spans, scores)
            ]
        )


async def write(db: Database, batch: list[Trace]) -> None:
    writer = TraceWriter(db, TracingSettings(flush_interval=0.01))
    await writer.start()
    for trace in batch:
        writer.submit(trace)
    await writer.close()
    assert writer.written_traces == len(batch)


async def oldest_start(db: Database) -> int:
    async with db.engine.connect() as conn:
        return (await conn.execute(select(func.min(traces.c.start_ns)))).scalar_one()  # type: ignore[no-any-return]


async def test_old_traces_are_deleted_in_batches(db: Database) -> None:
    now = time.time_ns()
    await write(db, [aged_trace(age, now) for age in [40, 35, 31, 31, 31, 29, 10, 0]])
    job = RetentionJob(db, TracingSettings(retention_days=30, retention_batch_size=2))
    assert await job.run_once(now_ns=now) == 5
    assert await counts(db) == (3, 6, 3)
    assert job.stats() == {
        "deleted_traces": 5,
        "deleted_spans": 10,
        "deleted_scores": 5,
        "runs": 1,
        "errors": 0,
    }
    assert await oldest_start(db) == now - 29 * DAY_NS
    assert await job.run_once(now_ns=now) == 0  # nothing left to do


async def test_max_traces_keeps_the_newest(db: Database) -> None:
    now = time.time_ns()
    await write(db, [aged_trace(age, now) for age in range(10, 0, -1)])
    job = RetentionJob(db, TracingSettings(retention_days=0, max_traces=4, retention_batch_size=3))
    assert await job.run_once(now_ns=now) == 6
    assert await counts(db) == (4, 8, 4)
    assert await oldest_start(db) == now - 4 * DAY_NS


async def test_zero_disables_both_limits(db: Database) -> None:
    now = time.time_ns()
    await write(db, [aged_trace(400, now), aged_trace(1, now)])
    job = RetentionJob(db, TracingSettings(retention_days=0, max_traces=0))
    assert await job.run_once(now_ns=now) == 0
    assert (await counts(db))[0] == 2


async def test_background_job_runs_at_start_and_stops_cleanly(db: Database) -> None:
    now = time.time_ns()
    await write(db, [aged_trace(100, now), aged_trace(0, now)])
    job = RetentionJob(db, TracingSettings(retention_days=30, retention_interval=3600))
    await job.start()
    deadline = time.monotonic() + 5
    while job.runs == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert job.deleted_traces == 1
    started = time.monotonic()
    await job.close()  # must not wait out the hour-long interval
    assert time.monotonic() - started < 1
    assert (await counts(db))[0] == 1


async def test_the_runtime_runs_retention_at_start(tmp_path: Path) -> None:
    from trellis.runtime import Trellis
    from trellis.settings import Settings

    now = time.time_ns()
    settings = Settings(
        data_dir=tmp_path, include_local_models=False, tracing={"retention_days": 30}
    )
    tmp_path.mkdir(exist_ok=True)
    setup = Database(settings.resolved_database_url)
    await setup.connect()
    await write(setup, [aged_trace(90, now), aged_trace(0, now)])
    await setup.close()
    async with Trellis(settings) as runtime:
        assert runtime.retention is not None and runtime.db is not None
        deadline = time.monotonic() + 5
        while runtime.retention.runs == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert runtime.retention.deleted_traces >= 1
        assert (await counts(runtime.db))[0] == 1
