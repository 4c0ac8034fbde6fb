"""The direct SQLite writer behind SqliteRunStore: group commit with per-run fences, the
same rows as SqlRunStore writes, sharing the file with SQLAlchemy, closing, and which store
Workflows picks."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import insert

from trellis.orchestration import (
    Lease,
    RunRecord,
    RunStatus,
    SqliteRunStore,
    SqlRunStore,
    StepRecord,
    Workflow,
    Workflows,
)
from trellis.orchestration.records import Checkpoint, Effect
from trellis.orchestration.store import Committed
from trellis.store import Database
from trellis.store.sqlite_writer import writer_for
from trellis.store.tables import workflow_workers

HERE = Path(__file__).parent
SRC = HERE.parent.parent / "src"


def _record(run_id: str, owner: str | None = "me", epoch: int = 1, **extra: Any) -> RunRecord:
    now = 1_700_000_000.25
    values: dict[str, Any] = {
        "id": run_id,
        "workflow": "w",
        "workflow_version": "v",
        "status": RunStatus.RUNNING.value,
        "input": {},
        "state": {"x": 0},
        "trace_id": "t" * 32,
        "created_at": now,
        "updated_at": now,
        "next_step": "a",
        "lease_owner": owner,
        "lease_epoch": epoch,
        "lease_until": now + 3600 if owner else None,
        **extra,
    }
    return RunRecord(**values)


def _checkpoint(run_id: str, seq: int, state: dict[str, Any], **extra: Any) -> Checkpoint:
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
        state=state,
    )
    return Checkpoint(step=step, state=state, status="running", next_step="a", **extra)


#: JSON that tells encoders apart: unicode, nesting, floats, a big integer, None inside.
ODD = {
    "text": 'héllo \u2028 \U0001f600 "q" \\',
    "nested": {"list": [1, 2.5, None, True, {"deep": []}]},
    "float": 0.1 + 0.2,
    "big": 2**70,
    "negative": -(2**63),
    "empty": {},
}


async def _exercise(store: SqlRunStore) -> None:
    """The same operations on either store, with fixed times so the rows can be compared."""
    now = 1_700_000_100.5
    await store.create(_record("r1", input=ODD, key_id="k1"))
    await store.create(_record("r2", input={"n": None}))
    lease = Lease("r1", "me", 1)
    committed = await store.checkpoint(lease, _checkpoint("r1", 1, {"x": 1, "odd": ODD}), now)
    assert committed == Committed(False)
    step = _checkpoint("r1", 2, {"x": 2}).step
    step.events = [{"name": "retry", "time_ns": 5, "attributes": {"attempt": 1}}]
    step.attributes = {"gate.verdict": "pass", "ids": ["a", "b"]}
    step.input_tokens, step.output_tokens, step.cost, step.model = 3, 4, 0.25, "m"
    step.error = {"type": "x", "message": "y"}
    waiting = Checkpoint(
        step=step,
        state={"x": 2},
        status=RunStatus.WAITING.value,
        next_step="a",
        waiting_for={"step": "a", "schema": None, "prompt": "ok?"},
        release=True,
    )
    assert await store.checkpoint(lease, waiting, now + 1) == Committed(False)
    done = Checkpoint(
        step=_checkpoint("r2", 1, {"x": 9}).step,
        state={"x": 9},
        status=RunStatus.SUCCEEDED.value,
        next_step=None,
        output=[ODD, None],
        release=True,
        finished=True,
    )
    assert await store.checkpoint(Lease("r2", "me", 1), done, now + 2) == Committed(False)
    await store.create(_record("r3"))
    assert await store.finish(Lease("r3", "me", 1), "failed", {"type": "boom"}, now + 3)
    assert not await store.finish(Lease("r3", "me", 1), "failed", None, now + 4)
    effect = Effect("r1:1:a:t", "r1", "a", 1, "h" * 64, "started", now, error={"why": 1})
    await store.begin_effect(effect)
    await store.begin_effect(effect)
    await store.finish_effect(effect.key, "done", ODD, None, now + 5)
    await store.begin_effect(Effect("r1:1:a:u", "r1", "a", 1, "h" * 64, "started", now))
    await store.finish_effect("r1:1:a:u", "failed", None, {"type": "t"}, now + 6)


def _raw(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("workflow_runs", "workflow_steps", "workflow_effects")
        }
    finally:
        conn.close()


async def _read_all(store: SqlRunStore) -> tuple[Any, ...]:
    return (
        [await store.get(run_id) for run_id in ("r1", "r2", "r3", "nope")],
        [await store.steps(run_id) for run_id in ("r1", "r2", "r3")],
        [await store.effect(key) for key in ("r1:1:a:t", "r1:1:a:u", "nope")],
    )


async def test_same_rows_and_values_as_sqlalchemy(tmp_path: Path) -> None:
    async with (
        Database(f"sqlite:///{tmp_path / 'sql.db'}") as a,
        Database(f"sqlite:///{tmp_path / 'direct.db'}") as b,
    ):
        await _exercise(SqlRunStore(a))
        await _exercise(SqliteRunStore(b))
        # Byte for byte the same rows, JSON text included.
        assert _raw(tmp_path / "sql.db") == _raw(tmp_path / "direct.db")
        # Each store reads what either wrote to the same values.
        reads = [
            await _read_all(store)
            for store in (SqlRunStore(a), SqliteRunStore(a), SqlRunStore(b), SqliteRunStore(b))
        ]
        assert all(read == reads[0] for read in reads)
        run = reads[0][0][0]
        assert run.input == ODD and run.waiting_for["prompt"] == "ok?"
        assert isinstance(run.cancel_requested, bool) and run.cost == 0.25
        assert reads[0][1][0][1].events == [
            {"name": "retry", "time_ns": 5, "attributes": {"attempt": 1}}
        ]


async def _hold(writer: Any) -> tuple[threading.Event, asyncio.Future[None]]:
    """Keep the writer thread busy (inside a transaction) until the event is set."""
    gate = threading.Event()

    def block(conn: sqlite3.Connection) -> None:
        gate.wait(10)

    blocked = asyncio.ensure_future(writer.write(block))
    await asyncio.sleep(0.05)  # the thread has taken the blocking job
    return gate, blocked


async def test_group_commit_fences_each_run_on_its_own(sqlite_db: Database) -> None:
    store = SqliteRunStore(sqlite_db)
    now = time.time()
    for run_id in ("a", "b", "c", "d"):
        await store.create(_record(run_id, "me", 1))
    await store.checkpoint(Lease("d", "me", 1), _checkpoint("d", 1, {"x": 1}), now)
    # b's lease is taken over: its old owner must not write, whatever else commits with it.
    await SqlRunStore(sqlite_db).release(Lease("b", "me", 1))
    assert await SqlRunStore(sqlite_db).claim("other", now, now + 30, run_id="b")
    writer = writer_for(sqlite_db)
    gate, blocked = await _hold(writer)
    batch_before = writer.stats.batches
    tasks = [
        asyncio.ensure_future(store.checkpoint(Lease(run_id, "me", 1), cp, now))
        for run_id, cp in [
            ("a", _checkpoint("a", 1, {"x": 1})),
            ("b", _checkpoint("b", 1, {"x": 1})),
            ("c", _checkpoint("c", 1, {"x": 1})),
            # seq 1 of d exists: the step insert fails after the run row was updated.
            ("d", _checkpoint("d", 1, {"x": 99})),
        ]
    ]
    await asyncio.sleep(0.05)  # all four are queued behind the blocking job
    gate.set()
    await blocked
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == Committed(False) and results[2] == Committed(False)
    assert results[1] is None
    assert isinstance(results[3], sqlite3.IntegrityError)
    # One transaction held all four (after the blocking job's own).
    assert writer.stats.batches == batch_before + 2 and writer.stats.largest_batch == 4
    sql = SqlRunStore(sqlite_db)
    a, b, c, d = [await sql.get(run_id) for run_id in "abcd"]
    assert a is not None and a.seq == 1 and a.state == {"x": 1}
    assert c is not None and c.seq == 1
    assert b is not None and b.lease_owner == "other" and b.seq == 0 and b.state == {"x": 0}
    assert await sql.steps("b") == []
    # d's failed step rolled its run update back too, and nothing else.
    assert (
        d is not None
        and d.state == {"x": 1}
        and [s.state for s in await sql.steps("d")] == [{"x": 1}]
    )


async def test_writer_waits_for_other_writers_of_the_file(sqlite_db: Database) -> None:
    """Another connection holding the write lock delays checkpoints; none fails 'locked'."""
    path = sqlite_db.sqlite_file
    assert path is not None
    store = SqliteRunStore(sqlite_db)
    await store.create(_record("r"))
    locked, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE workflow_runs SET updated_at = 1 WHERE id = 'r'")
        locked.set()
        release.wait(10)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    locked.wait(5)
    pending = asyncio.ensure_future(
        store.checkpoint(Lease("r", "me", 1), _checkpoint("r", 1, {"x": 1}), time.time())
    )
    await asyncio.sleep(0.3)
    assert not pending.done()  # waiting on the lock, not failing
    release.set()
    assert await pending == Committed(False)
    thread.join()


class Count(BaseModel):
    x: int = 0


def _counting_flow(steps: int) -> Workflow[Count]:
    flow = Workflow("count", state=Count)

    async def bump(s: Count) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"x": s.x + 1}

    for i in range(steps):
        flow.step(name=f"s{i}")(bump)
    return flow


async def test_concurrent_runs_beside_sqlalchemy_writers(sqlite_db: Database) -> None:
    """Runs checkpointing on the writer while SQLAlchemy writes the same file all along."""
    flow = _counting_flow(10)
    stop = asyncio.Event()
    sqlalchemy_writes = 0

    async def sqlalchemy_writer() -> None:
        nonlocal sqlalchemy_writes
        sql = SqlRunStore(sqlite_db)
        while not stop.is_set():
            async with sqlite_db.engine.begin() as conn:
                await conn.execute(
                    insert(workflow_workers).values(
                        id=f"w{sqlalchemy_writes}",
                        hostname="h",
                        pid=1,
                        started_at=0.0,
                        heartbeat_at=0.0,
                    )
                )
            await sql.heartbeat("nobody", time.time(), time.time() + 1)
            sqlalchemy_writes += 1

    async with Workflows(sqlite_db, flows=[flow]) as workflows:
        assert isinstance(workflows.store, SqliteRunStore)
        background = asyncio.create_task(sqlalchemy_writer())
        runs = await asyncio.gather(*(workflows.run(flow, {}) for _ in range(20)))
        stop.set()
        await background
    assert all(run.status == RunStatus.SUCCEEDED and run.state["x"] == 10 for run in runs)
    assert sqlalchemy_writes > 0
    assert writer_for(sqlite_db).stats.largest_batch > 1  # group commit happened


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("trellis-sqlite-writer")]


async def test_the_writer_thread_ends_with_the_database(tmp_path: Path) -> None:
    before = len(_writer_threads())
    db = Database(f"sqlite:///{tmp_path / 't.db'}")
    await db.connect()
    flow = _counting_flow(2)
    async with Workflows(db, flows=[flow]) as workflows:
        assert (await workflows.run(flow, {})).status == RunStatus.SUCCEEDED
    assert len(_writer_threads()) == before + 1  # kept for the database's other users
    store = SqliteRunStore(db)
    await db.close()
    assert len(_writer_threads()) == before
    with pytest.raises(RuntimeError):
        await store.get("anything")
    # Connected again, the database gets a new writer.
    await db.connect()
    try:
        assert await store.get("anything") is None
    finally:
        await db.close()
    assert len(_writer_threads()) == before


async def test_workflows_picks_the_store_by_database(tmp_path: Path) -> None:
    async with Database(f"sqlite:///{tmp_path / 'f.db'}") as file_db:
        assert type(Workflows(file_db).store) is SqliteRunStore
    # In-memory SQLite is one shared connection a second one could not see: SQLAlchemy.
    flow = _counting_flow(3)
    async with Database("sqlite://") as memory_db, Workflows(memory_db, flows=[flow]) as wf:
        assert type(wf.store) is SqlRunStore
        assert (await wf.run(flow, {})).state["x"] == 3
        with pytest.raises(ValueError):
            SqliteRunStore(memory_db)


@pytest.mark.postgres
async def test_postgres_keeps_sqlalchemy(postgres_db: Database) -> None:
    assert type(Workflows(postgres_db).store) is SqlRunStore


async def test_kill_9_mid_batch_leaves_only_whole_checkpoints(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    async with Database(url):
        pass  # migrated before the child starts
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
    child = subprocess.Popen(
        [sys.executable, str(HERE / "writer_crash_child.py"), url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    path = tmp_path / "crash.db"
    try:
        deadline = time.monotonic() + 60
        while True:  # until group commits are going on
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never got going"
            line = child.stdout.readline() if child.stdout else b""
            if line.startswith(b"batched"):
                break
        await asyncio.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    async with Database(url) as db:
        store = SqlRunStore(db)
        runs = await store.list_runs(limit=1000)
        assert len(runs) == 16
        assert sum(run.seq for run in runs) > 0
        for run in runs:
            steps = await store.steps(run.id)
            # The run row and its step log moved together: every step up to seq, no more.
            assert [s.seq for s in steps] == list(range(1, run.seq + 1))
            assert run.state["x"] == run.seq
            assert all(s.state is not None and s.state["x"] == s.seq for s in steps)
    assert path.exists()
