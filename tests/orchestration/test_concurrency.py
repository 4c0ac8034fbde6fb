"""The concurrency limit (runs beyond it are ``queued`` and start oldest first as slots
free, here or on another replica), the queue bound, and the cap on recoveries; on SQLite,
Postgres and in memory."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel

from trellis.errors import OverloadedError
from trellis.orchestration import (
    FunctionStep,
    MemoryRunStore,
    RunRecord,
    RunStatus,
    SqliteRunStore,
    SqlRunStore,
    Workflow,
    Workflows,
    human,
)
from trellis.orchestration.store import RunStore
from trellis.store import Database


class S(BaseModel):
    n: int = 0
    hold: bool = False
    answer: str | None = None


class Gauge:
    """Counts the runs inside a step at once, and the order they entered it."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self.entered: list[int] = []
        self.gate = asyncio.Event()

    async def step(self, s: S) -> dict[str, int]:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.entered.append(s.n)
        try:
            if s.hold:
                await self.gate.wait()
            await asyncio.sleep(0.02)
        finally:
            self.now -= 1
        return {"n": s.n}


def gauged(name: str, gauge: Gauge, steps: int = 2) -> Workflow[S]:
    flow = Workflow(name, state=S)
    for i in range(steps):
        flow.add(_function(gauge.step, f"s{i}"))
    return flow


def _function(fn: Any, name: str) -> FunctionStep:
    return FunctionStep(fn, name=name)


@pytest.fixture(
    params=[
        "sqlite",
        "sqlite-direct",
        pytest.param("postgres", marks=pytest.mark.postgres),
        "memory",
    ]
)
def store(request: pytest.FixtureRequest) -> RunStore:
    """SqlRunStore on SQLite and Postgres, the direct SQLite store (the default on a file),
    and the memory store, each on a fresh database."""
    if request.param == "memory":
        return MemoryRunStore()
    database = request.getfixturevalue(
        "postgres_db" if request.param == "postgres" else "sqlite_db"
    )
    return SqliteRunStore(database) if request.param == "sqlite-direct" else SqlRunStore(database)


async def test_a_limit_of_two_runs_five_runs_two_at_a_time_in_order(store: RunStore) -> None:
    gauge = Gauge()
    flow = gauged("limited", gauge)
    async with Workflows(store=store, flows=[flow], max_concurrent_runs=2) as workflows:
        ids = [await workflows.start(flow, {"n": i}) for i in range(5)]
        queued = await workflows.list(status=RunStatus.QUEUED.value)
        assert sorted(r.id for r in queued) == sorted(ids[2:])
        assert all(r.lease_owner is None for r in queued)
        runs = await asyncio.gather(*(workflows.wait(i) for i in ids))
        assert workflows.driving == 0
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 5
    assert gauge.peak == 2
    # Two started at once; the queued ones started oldest first as slots freed.
    firsts = [n for i, n in enumerate(gauge.entered) if n not in gauge.entered[:i]]
    assert sorted(firsts[:2]) == [0, 1] and firsts[2:] == [2, 3, 4]
    assert [r.recoveries for r in runs] == [0] * 5


async def test_without_a_limit_nothing_queues(store: RunStore) -> None:
    gauge = Gauge()
    flow = gauged("unlimited", gauge, steps=1)
    async with Workflows(store=store, flows=[flow], max_concurrent_runs=0) as workflows:
        ids = await asyncio.gather(
            *(workflows.start(flow, {"n": i, "hold": True}) for i in range(20))
        )
        assert workflows.driving == 20
        assert await workflows.list(status=RunStatus.QUEUED.value) == []
        gauge.gate.set()
        runs = await asyncio.gather(*(workflows.wait(i) for i in ids))
    assert {r.status for r in runs} == {RunStatus.SUCCEEDED}


async def test_queued_runs_survive_a_restart(db: Database) -> None:
    gauge = Gauge()
    flow = gauged("restart", gauge, steps=1)
    async with Workflows(db, flows=[flow], max_concurrent_runs=1) as first:
        ids = [await first.start(flow, {"n": i, "hold": True}) for i in range(4)]
        await asyncio.sleep(0.05)
        assert gauge.entered == [0]
    # The process stopped: the held run was given up, three runs are still queued.
    store = SqlRunStore(db)
    assert [(await store.get(i)).status for i in ids] == ["running"] + ["queued"] * 3  # type: ignore[union-attr]
    gauge.gate.set()
    async with Workflows(db, flows=[flow], max_concurrent_runs=2) as second:
        claimed = await second.recover()
        assert claimed == ids[:2]  # oldest first, within the limit
        runs = [await second.wait(i) for i in ids]
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 4
    # 0 and 1 first (claimed oldest first, above); 2 and 3 only once those freed their
    # slots. When both slots free at once, 2 and 3 are claimed in one batch and start
    # together, so which enters the step first is up to the database round trips.
    assert sorted(gauge.entered[1:3]) == [0, 1] and sorted(gauge.entered[3:]) == [2, 3]
    assert gauge.peak <= 2
    assert [r.recoveries for r in runs] == [1, 0, 0, 0]  # queued runs were never recovered


async def test_waiting_for_a_run_another_replica_claims(db: Database) -> None:
    gauge = Gauge()
    flow = gauged("elsewhere", gauge, steps=1)
    async with (
        Workflows(db, flows=[flow], max_concurrent_runs=1) as busy,
        Workflows(db, flows=[flow]) as other,
    ):
        holder = await busy.start(flow, {"n": 0, "hold": True})
        queued = await busy.start(flow, {"n": 1})
        waiter = asyncio.create_task(busy.wait(queued))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        assert await other.recover() == [queued]
        run = await asyncio.wait_for(waiter, 5)
        assert run.status == RunStatus.SUCCEEDED and run.lease_epoch == 1
        gauge.gate.set()
        assert (await busy.wait(holder)).status == RunStatus.SUCCEEDED


async def test_resumed_runs_count_toward_the_limit(store: RunStore) -> None:
    gauge = Gauge()
    asking = Workflow("ask-then-work", state=S)
    asking.add(human("ask", into="answer", input=str))
    asking.add(_function(gauge.step, "work"))
    holding = gauged("hold", gauge, steps=1)
    flows = [asking, holding]
    async with Workflows(store=store, flows=flows, max_concurrent_runs=1) as workflows:
        paused = await workflows.run(asking, {"n": 1})
        assert paused.status == RunStatus.WAITING  # a waiting run holds no slot
        busy = await workflows.start(holding, {"n": 2, "hold": True})
        resumed = asyncio.create_task(workflows.resume(paused.id, "yes"))
        await asyncio.sleep(0.05)
        assert (await workflows.get(paused.id)).status == RunStatus.QUEUED
        assert workflows.driving == 1
        gauge.gate.set()
        done = await asyncio.wait_for(resumed, 5)
        assert (await workflows.wait(busy)).status == RunStatus.SUCCEEDED
    assert done.status == RunStatus.SUCCEEDED and done.state["answer"] == "yes"
    assert gauge.entered == [2, 1] and gauge.peak == 1


async def test_a_queued_run_is_cancelled_at_once(store: RunStore) -> None:
    gauge = Gauge()
    flow = gauged("cancel-queued", gauge, steps=1)
    async with Workflows(store=store, flows=[flow], max_concurrent_runs=1) as workflows:
        holder = await workflows.start(flow, {"n": 0, "hold": True})
        queued = await workflows.start(flow, {"n": 1})
        waiter = asyncio.create_task(workflows.wait(queued))
        cancelled = await workflows.cancel(queued)
        assert cancelled.status == RunStatus.CANCELLED
        assert (await asyncio.wait_for(waiter, 5)).status == RunStatus.CANCELLED
        gauge.gate.set()
        assert (await workflows.wait(holder)).status == RunStatus.SUCCEEDED
    assert gauge.entered == [0]


async def test_a_full_queue_refuses_a_start_with_retry_after(store: RunStore) -> None:
    gauge = Gauge()
    flow = gauged("bounded", gauge, steps=1)
    options: dict[str, Any] = {"max_concurrent_runs": 1, "max_queued_runs": 2}
    async with Workflows(store=store, flows=[flow], **options) as workflows:
        ids = [await workflows.start(flow, {"n": i, "hold": True}) for i in range(3)]
        with pytest.raises(OverloadedError) as refused:
            await workflows.start(flow, {"n": 3})
        assert refused.value.status_code == 429
        assert refused.value.headers["retry-after"] == "1"
        assert refused.value.to_body()["error"]["code"] == "too_many_runs"
        gauge.gate.set()
        runs = [await workflows.wait(i) for i in ids]
        # Room again once the queue drained.
        assert (await workflows.run(flow, {"n": 4})).status == RunStatus.SUCCEEDED
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 3


# --- the cap on recoveries ----------------------------------------------------------------


async def test_a_run_that_keeps_crashing_is_failed_after_max_recoveries(
    store: RunStore,
) -> None:
    """Each process that claims the run stops (here: closes) while the step still runs, as a
    crash would leave it; after two recoveries the third claim fails it instead."""
    started: list[int] = []
    flow = Workflow("crashy", state=S)

    @flow.step
    async def forever(s: S) -> dict[str, int]:
        started.append(1)
        await asyncio.Event().wait()
        return {"n": 1}

    async def step_started(count: int) -> None:
        while len(started) < count:
            await asyncio.sleep(0.005)

    options: dict[str, Any] = {"max_recoveries": 2}
    async with Workflows(store=store, flows=[flow], **options) as workflows:
        run_id = await workflows.start(flow, {})
        await asyncio.wait_for(step_started(1), 5)
    for expected in (1, 2):
        async with Workflows(store=store, flows=[flow], **options) as workflows:
            assert await workflows.recover() == [run_id]
            await asyncio.wait_for(step_started(1 + expected), 5)
            assert (await workflows.get(run_id)).recoveries == expected
    async with Workflows(store=store, flows=[flow], **options) as workflows:
        assert await workflows.recover() == []
        run = await workflows.get(run_id)
        steps = await workflows.steps(run_id)
        assert await workflows.recover() == []  # and it stays failed
    assert len(started) == 3
    assert run.status == RunStatus.FAILED and run.recoveries == 2
    assert run.error is not None and run.error["type"] == "too_many_recoveries"
    assert run.lease_owner is None and run.finished_at is not None and steps == []


async def test_queued_runs_are_not_recoveries(store: RunStore) -> None:
    """Queued runs claimed later are not crashes: a cap of 0 still runs them."""
    gauge = Gauge()
    flow = gauged("not-crashy", gauge, steps=1)
    options: dict[str, Any] = {"max_concurrent_runs": 1, "max_recoveries": 0}
    async with Workflows(store=store, flows=[flow], **options) as workflows:
        ids = [await workflows.start(flow, {"n": i}) for i in range(3)]
        runs = [await workflows.wait(i) for i in ids]
    assert [(r.status, r.recoveries) for r in runs] == [(RunStatus.SUCCEEDED, 0)] * 3


async def test_abandon_leaves_a_run_claimed_meanwhile_alone(db: Database) -> None:
    store = SqlRunStore(db)
    now = time.time()
    record = RunRecord(
        id="r",
        workflow="w",
        workflow_version="v",
        status=RunStatus.RUNNING.value,
        input={},
        state={},
        trace_id="t" * 32,
        created_at=now,
        updated_at=now,
        next_step="a",
        lease_owner="dead",
        lease_epoch=3,
        lease_until=now - 1,
        recoveries=2,
    )
    await store.create(record)
    error = {"type": "too_many_recoveries", "message": "x"}
    # Below the cap: claimable, not abandoned.
    assert await store.abandon(now, error, max_recoveries=3) == []
    assert await store.claim("w1", now, now + 30, max_recoveries=2) == []
    (lease,) = await store.claim("w1", now, now + 30, max_recoveries=3)
    assert lease.epoch == 4
    # Held now (recoveries 3): at the cap, but its lease is live, so not abandoned.
    assert await store.abandon(now, error, max_recoveries=3) == []
    # Its lease runs out: abandoned, once.
    later = now + 60
    assert await store.abandon(later, error, max_recoveries=3) == ["r"]
    assert await store.abandon(later, error, max_recoveries=3) == []
    run = await store.get("r")
    assert run is not None and run.status == "failed" and run.error == error
    assert await store.count_runs("failed") == 1
