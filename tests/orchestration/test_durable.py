"""Durability on SQLite and Postgres: a checkpoint per step, lease fencing, claims, effects,
human pause/resume, recovery of expired leases. Every test runs on each store: SqlRunStore on
SQLite and on Postgres, and SqliteRunStore (the direct writer, SQLite's default)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select

from trellis.errors import ConflictError, InvalidRequestError
from trellis.orchestration import (
    END,
    Backoff,
    Context,
    FunctionStep,
    Lease,
    Outcome,
    Policy,
    RunRecord,
    RunStatus,
    SqliteRunStore,
    SqlRunStore,
    StepRecord,
    Usage,
    Workflow,
    Workflows,
    human,
    parallel,
    tool,
)
from trellis.orchestration.parallel import branch_key, dump_outcome, state_hash
from trellis.orchestration.records import Checkpoint, Effect
from trellis.store import Database
from trellis.store.tables import workflow_effects, workflow_runs, workflow_steps


@pytest.fixture(
    params=["sqlite", "sqlite-direct", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def store(request: pytest.FixtureRequest) -> SqlRunStore:
    """The store under test, on a fresh database (``db`` below is its database)."""
    database = request.getfixturevalue(
        "postgres_db" if request.param == "postgres" else "sqlite_db"
    )
    return SqliteRunStore(database) if request.param == "sqlite-direct" else SqlRunStore(database)


@pytest.fixture
def db(store: SqlRunStore) -> Database:
    return store.db


class S(BaseModel):
    x: int = 0
    approval: dict[str, Any] | None = None
    receipt: str | None = None


class Approval(BaseModel):
    approved: bool
    by: str


async def _count(db: Database, table: Any, run_id: str) -> int:
    async with db.engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).where(table.c.run_id == run_id))).scalar_one()
        )


async def test_a_checkpoint_is_committed_after_every_step(db: Database, store: SqlRunStore) -> None:
    flow = Workflow("per-step", state=S)
    seen: list[tuple[int, int, int]] = []

    async def observe(s: S, ctx: Context) -> dict[str, int]:
        # Before this step runs, every earlier step's row and the cursor are committed.
        async with db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(workflow_runs.c.seq, workflow_runs.c.state).where(
                        workflow_runs.c.id == ctx.run_id
                    )
                )
            ).one()
        seen.append((ctx.seq, await _count(db, workflow_steps, ctx.run_id), row.state["x"]))
        return {"x": s.x + 1}

    for name in ("a", "b", "c"):
        flow.add(FunctionStep(observe, name=name))
    async with Workflows(db, store=store) as workflows:
        run = await workflows.run(flow, {})
        steps = await workflows.steps(run.id)
    assert seen == [(1, 0, 0), (2, 1, 1), (3, 2, 2)]
    assert (
        run.status == RunStatus.SUCCEEDED
        and run.seq == 3
        and run.state
        == {
            "x": 3,
            "approval": None,
            "receipt": None,
        }
    )
    assert [(r.seq, r.step, r.state["x"] if r.state else None) for r in steps] == [
        (1, "a", 1),
        (2, "b", 2),
        (3, "c", 3),
    ]
    assert run.lease_owner is None and run.finished_at is not None


def _record(run_id: str, owner: str | None, epoch: int, until: float | None) -> RunRecord:
    now = time.time()
    return RunRecord(
        id=run_id,
        workflow="w",
        workflow_version="v",
        status=RunStatus.RUNNING.value,
        input={},
        state={"x": 0},
        trace_id="t" * 32,
        created_at=now,
        updated_at=now,
        next_step="a",
        lease_owner=owner,
        lease_epoch=epoch,
        lease_until=until,
    )


def _checkpoint(run_id: str, seq: int, x: int) -> Checkpoint:
    step = StepRecord(
        run_id=run_id,
        seq=seq,
        step="a",
        kind="function",
        status="ok",
        attempts=1,
        span_id="s" * 16,
        start_ns=1,
        end_ns=2,
    )
    return Checkpoint(step=step, state={"x": x}, status="running", next_step="a")


async def test_lease_fencing_refuses_a_stale_owner(db: Database, store: SqlRunStore) -> None:
    now = time.time()
    await store.create(_record("r1", "old", 1, now - 1))  # the old owner's lease ran out
    assert await store.checkpoint(Lease("r1", "old", 1), _checkpoint("r1", 1, 1), now)
    (new,) = await store.claim("new", now, now + 30)
    assert new == Lease("r1", "new", 2)
    # The old owner wakes up and tries to checkpoint: refused, nothing written.
    assert await store.checkpoint(Lease("r1", "old", 1), _checkpoint("r1", 2, 99), now) is None
    assert not await store.finish(Lease("r1", "old", 1), "failed", None, now)
    run = await store.get("r1")
    assert run is not None and run.state == {"x": 1} and run.seq == 1 and run.recoveries == 1
    assert [s.seq for s in await store.steps("r1")] == [1]
    # The new owner's checkpoint goes through.
    committed = await store.checkpoint(new, _checkpoint("r1", 2, 2), now)
    assert committed is not None and not committed.cancel_requested
    # A live lease is not claimable, by anyone.
    assert await store.claim("third", now, now + 30) == []


async def test_two_claimers_never_both_win(db: Database, store: SqlRunStore) -> None:
    now = time.time()
    for i in range(6):
        await store.create(_record(f"run{i}", "dead", 1, now - 5))
    first, second = await asyncio.gather(
        store.claim("w1", now, now + 30), store.claim("w2", now, now + 30)
    )
    ids = [lease.run_id for lease in first + second]
    assert sorted(ids) == [f"run{i}" for i in range(6)]


async def test_expired_lease_is_recovered_from_the_last_completed_step(
    db: Database, store: SqlRunStore
) -> None:
    flow = Workflow("resume-after-expiry", state=S)
    ran: list[str] = []

    @flow.step
    async def a(s: S) -> dict[str, int]:
        ran.append("a")
        return {"x": s.x + 1}

    @flow.step
    async def b(s: S) -> dict[str, int]:
        ran.append("b")
        return {"x": s.x + 10}

    now = time.time()
    record = _record("orphan", "gone", 3, now - 1)
    record.workflow, record.next_step = flow.name, "b"
    record.state, record.seq = {"x": 1}, 1
    await store.create(record)
    async with Workflows(db, store=store, flows=[flow]) as workflows:
        assert await workflows.recover() == ["orphan"]
        run = await workflows.wait("orphan")
    assert ran == ["b"]
    assert run.status == RunStatus.SUCCEEDED and run.state["x"] == 11
    assert run.lease_epoch == 4 and run.recoveries == 1


async def test_human_step_pauses_durably_and_resumes(db: Database, store: SqlRunStore) -> None:
    flow = Workflow("approve", state=S)

    @flow.step
    async def prepare(s: S) -> dict[str, int]:
        return {"x": 1}

    flow.add(human("ask", into="approval", input=Approval, prompt="Approve the refund?"))
    flow.route("ask")(lambda s: "pay" if s.approval and s.approval.get("approved") else END)

    @flow.step(next=END)
    async def pay(s: S) -> dict[str, int]:
        return {"x": s.x + 100}

    async with Workflows(db, store=store, flows=[flow]) as workflows:
        run = await workflows.run(flow, {})
        assert run.status == RunStatus.WAITING and run.lease_owner is None
        assert run.waiting_for is not None
        assert run.waiting_for["prompt"] == "Approve the refund?"
        assert run.waiting_for["schema"]["required"] == ["approved", "by"]
        with pytest.raises(InvalidRequestError):
            await workflows.resume(run.id, {"approved": "maybe?"})
    # A new process (no memory of the run) resumes it from the database.
    async with Workflows(db, store=store, flows=[flow]) as workflows:
        done = await workflows.resume(run.id, {"approved": True, "by": "ana"})
        with pytest.raises(ConflictError):
            await workflows.resume(run.id, {"approved": True, "by": "ana"})
        steps = await workflows.steps(run.id)
    assert done.status == RunStatus.SUCCEEDED and done.state["x"] == 101
    assert done.state["approval"] == {"approved": True, "by": "ana"}
    assert [(r.step, r.status) for r in steps] == [
        ("prepare", "ok"),
        ("ask", "waiting"),
        ("ask", "ok"),
        ("pay", "ok"),
    ]


async def test_cancel_a_waiting_run(db: Database, store: SqlRunStore) -> None:
    flow = Workflow("wait-cancel", state=S)
    flow.add(human("ask", into="approval"))
    async with Workflows(db, store=store, flows=[flow]) as workflows:
        run = await workflows.run(flow, {})
        cancelled = await workflows.cancel(run.id)
        assert cancelled.status == RunStatus.CANCELLED
        with pytest.raises(ConflictError):
            await workflows.resume(run.id, {})


calls: list[int] = []


@tool(side_effect=True)
async def refund(order: str, amount: int, *, ctx: Context) -> str:
    """Refund an order (counts its calls)."""
    calls.append(amount)
    if len(calls) == 1:
        raise ConnectionError("the payment API hung up")
    return f"{order}:{amount}:{ctx.idempotency_key()}"


async def test_side_effect_is_journaled_and_not_repeated(db: Database, store: SqlRunStore) -> None:
    calls.clear()
    flow = Workflow("refund", state=S)

    @flow.step(policy=Policy(attempts=2, backoff=Backoff(0.001, 0.001)))
    async def pay(s: S, ctx: Context) -> dict[str, object]:
        first = await refund(ctx, order="o1", amount=5)
        # The same call again within the step (a retry of the caller's own loop): journaled.
        again = await refund(ctx, order="o1", amount=5)
        assert first == again
        with pytest.raises(ConflictError):
            await refund(ctx, order="o1", amount=6)
        return {"receipt": first}

    async with Workflows(db, store=store) as workflows:
        run = await workflows.run(flow, {})
    assert run.status == RunStatus.SUCCEEDED, run.error
    key = f"{run.id}:1:pay:refund"
    assert run.state["receipt"] == f"o1:5:{run.id}:1:pay"
    assert calls == [5, 5]  # the failed attempt, then the one that succeeded; never a third
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(select(workflow_effects).where(workflow_effects.c.key == key))
        ).one()
    assert row.status == "done" and row.attempts == 2 and row.result == run.state["receipt"]
    assert await _count(db, workflow_effects, run.id) == 1


async def test_workers_register_and_unregister_on_a_clean_shutdown(
    db: Database, store: SqlRunStore
) -> None:
    flow = Workflow("workers", state=S)
    flow.add(human("ask", into="approval"))
    async with Workflows(db, store=store, flows=[flow]) as workflows:
        await workflows.run(flow, {})
        (worker,) = await store.workers(workflows.hostname)
        assert worker.id == workflows.worker_id and worker.pid == os.getpid()
    assert await store.workers(workflows.hostname) == []


async def test_heartbeat_keeps_a_long_step_owned(db: Database, store: SqlRunStore) -> None:
    flow = Workflow("long-step", state=S)

    @flow.step
    async def slow(s: S) -> dict[str, int]:
        await asyncio.sleep(0.8)
        return {"x": 1}

    options: dict[str, Any] = {"lease_seconds": 0.3, "heartbeat_seconds": 0.05}
    async with (
        Workflows(db, store=store, flows=[flow], **options) as owner,
        Workflows(db, store=store, flows=[flow], **options) as other,
    ):
        run_id = await owner.start(flow, {})
        claimed: list[str] = []
        for _ in range(8):  # well past the lease: renewals keep it owned
            await asyncio.sleep(0.1)
            claimed += await other.recover()
        run = await owner.wait(run_id)
    assert claimed == []
    assert run.status == RunStatus.SUCCEEDED and run.lease_epoch == 1 and run.recoveries == 0


async def _done_effects(db: Database, run_id: str) -> list[Any]:
    query = select(workflow_effects).where(
        workflow_effects.c.run_id == run_id, workflow_effects.c.status == "done"
    )
    async with db.engine.connect() as conn:
        return list((await conn.execute(query)).all())


class Part(BaseModel):
    name: str
    qty: int


class Fan(BaseModel):
    part: Part | None = None
    total: int = 0
    note: str = ""


async def test_a_recovered_parallel_step_reruns_only_unfinished_branches(db: Database) -> None:
    """The owner stops while one branch finished and the other is still running; another
    worker claims the run: the finished branch's outcome comes from the journal (its
    function ran once in all), the unfinished one runs again, and the join sees both."""
    ran: list[str] = []
    quick_done, slow_started, unblock = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def quick(s: Fan) -> Outcome:
        ran.append("quick")
        quick_done.set()
        return Outcome(
            update={"part": Part(name="bolt", qty=3)},
            output={"found": "bolt"},
            usage=Usage(input_tokens=11, output_tokens=7, cost=0.5, model="m"),
            events=[{"name": "looked_up", "attributes": {"table": "parts"}}],
        )

    async def slow(s: Fan) -> dict[str, str]:
        ran.append("slow")
        slow_started.set()
        await unblock.wait()
        return {"note": "checked"}

    def join(state: Fan, updates: dict[str, Any]) -> dict[str, Any]:
        part = updates["quick"]["part"]
        assert isinstance(part, Part)  # typed again when read back from the journal
        return {**updates["quick"], **updates["slow"], "total": part.qty * 10}

    flow = Workflow("fan-recover", state=Fan)
    flow.add(
        parallel(
            "fan",
            {"quick": FunctionStep(quick), "slow": FunctionStep(slow)},
            reduce=join,
            next=END,
        )
    )
    first = Workflows(db, flows=[flow])
    run_id = await first.start(flow, {})
    await asyncio.wait_for(asyncio.gather(quick_done.wait(), slow_started.wait()), 10)
    # The quick branch's outcome is committed as soon as it ends (one journal row, done).
    store = SqlRunStore(db)
    for _ in range(500):
        rows = await _done_effects(db, run_id)
        if rows:
            break
        await asyncio.sleep(0.01)
    assert [row.step for row in rows] == ["fan/quick"]
    await first.aclose()  # the owner stops mid-step: the lease is given up, nothing checkpointed
    assert (await store.get(run_id)).seq == 0  # type: ignore[union-attr]
    unblock.set()
    async with Workflows(db, flows=[flow]) as second:
        assert await second.recover() == [run_id]
        run = await second.wait(run_id)
        (record,) = await second.steps(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    # Both branches start together on the first owner, so which one records its start first
    # is up to the scheduler; what matters is that the finished branch never ran again.
    assert sorted(ran) == ["quick", "slow", "slow"]
    assert run.state == {"part": {"name": "bolt", "qty": 3}, "total": 30, "note": "checked"}
    assert run.recoveries == 1
    # The restored branch's usage, output and events round-tripped into the step.
    assert (run.input_tokens, run.output_tokens, run.cost) == (11, 7, 0.5)
    assert record.output["branches"] == {"quick": {"found": "bolt"}, "slow": {"note": "checked"}}
    names = [(e["name"], e["attributes"].get("branch")) for e in record.events or []]
    assert ("branch_restored", "quick") in names and ("branch_done", "slow") in names
    looked_up = [e for e in record.events or [] if e["name"] == "looked_up"]
    assert looked_up[0]["attributes"] == {"table": "parts", "trellis.branch": "quick"}
    assert await _count(db, workflow_effects, run_id) == 2


async def test_a_branch_journaled_meanwhile_by_a_stale_owner_is_not_reused(
    db: Database,
) -> None:
    """A worker whose lease expired may still finish a branch and journal it between this
    owner's lookup and its own record: this owner's join uses its own outcome, and the row
    is left ``started`` (not reused: the branch would run again), never a mix."""

    async def contested(s: Fan, ctx: Context) -> dict[str, str]:
        assert ctx.store is not None
        now = time.time()
        await ctx.store.begin_effect(
            Effect(
                key=branch_key(ctx, state_hash(s)),
                run_id=ctx.run_id,
                step=ctx.step,
                seq=ctx.seq,
                args_hash=state_hash(s),
                status="done",
                started_at=now,
                result=dump_outcome(Outcome(update={"note": "stale owner"})),
                finished_at=now,
            )
        )
        return {"note": "this owner"}

    async def other(s: Fan) -> dict[str, int]:
        return {"total": 1}

    flow = Workflow("fan-race", state=Fan)
    flow.add(parallel("fan", {"a": FunctionStep(contested), "b": FunctionStep(other)}, next=END))
    async with Workflows(db) as workflows:
        run = await workflows.run(flow, {})
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.state["note"] == "this owner" and run.state["total"] == 1
    key = branch_key(
        Context(run_id=run.id, workflow=flow.name, step="fan/a", seq=1), state_hash(Fan())
    )
    found = await SqlRunStore(db).effect(key)
    assert found is not None and found.status == "started" and found.attempts == 2


async def test_branch_checkpoints_can_be_turned_off(db: Database) -> None:
    async def one(s: Fan) -> dict[str, int]:
        return {"total": 1}

    flow = Workflow("fan-light", state=Fan)
    flow.add(parallel("fan", {"a": FunctionStep(one)}, next=END, checkpoint_branches=False))
    async with Workflows(db) as workflows:
        run = await workflows.run(flow, {})
    assert run.status == RunStatus.SUCCEEDED and run.state["total"] == 1
    assert await _count(db, workflow_effects, run.id) == 0
