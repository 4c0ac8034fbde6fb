"""kill -9 of a process in the middle of a run: another process continues it from the last
completed step; no completed step runs again and no recorded effect is repeated."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from trellis.orchestration import RunStatus, Workflow, Workflows
from trellis.store import Database

HERE = Path(__file__).parent
SRC = HERE.parent.parent / "src"


def _crash_flow(name: str = "crash") -> Workflow:  # type: ignore[type-arg]
    """The child's workflow, loaded from the same file (tests run with --import-mode=importlib)."""
    spec = importlib.util.spec_from_file_location("orch_flows", HERE / "orch_flows.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FLOWS[name]  # type: ignore[no-any-return]


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_kill_9_mid_run_then_recover_without_rerunning_steps(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}"
    # Migrate first, so the child's start-up is quick.
    async with Database(url):
        pass
    (tmp_path / "block").touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
    child = subprocess.Popen(
        [sys.executable, str(HERE / "orch_flows.py"), url, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while "three" not in _lines(tmp_path / "ran"):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never reached step three"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    (run_id,) = _lines(tmp_path / "run_id")
    assert _lines(tmp_path / "ran") == ["one", "two", "three"]
    assert _lines(tmp_path / "charges") == ["5"]

    (tmp_path / "block").unlink()
    async with Database(url) as db, Workflows(db, flows=[_crash_flow()]) as workflows:
        before = await workflows.get(run_id)
        assert before.status == RunStatus.RUNNING and before.seq == 2
        # The child's worker is on this host and its pid is dead: no waiting for the lease.
        assert await workflows.recover() == [run_id]
        run = await workflows.wait(run_id)
        steps = await workflows.steps(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.state["n"] == 4 and run.state["charge_id"] == "ch-5"
    assert run.recoveries == 1 and run.lease_epoch == 2
    # Steps one and two ran once (in the child); three re-ran after the crash, four once.
    assert _lines(tmp_path / "ran") == ["one", "two", "three", "three", "four"]
    # The charge recorded done before the crash was not made again.
    assert _lines(tmp_path / "charges") == ["5"]
    assert [(s.seq, s.step) for s in steps] == [(1, "one"), (2, "two"), (3, "three"), (4, "four")]


def _branch_rows(db_path: Path, run_id: str) -> int:
    """Branch outcomes recorded done for the run (read with the stdlib, as a bystander)."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM workflow_effects WHERE run_id = ? AND key LIKE '%:@branch:%' "
            "AND status = 'done'",
            (run_id,),
        ).fetchone()
    return int(count)


async def test_kill_9_mid_parallel_step_reruns_only_the_unfinished_branch(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}"
    async with Database(url):
        pass
    (tmp_path / "block").touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
    child = subprocess.Popen(
        [sys.executable, str(HERE / "orch_flows.py"), url, str(tmp_path), "fanout"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never journaled the quick branch"
            ids = _lines(tmp_path / "run_id")
            ran = _lines(tmp_path / "ran")
            if ids and "slow" in ran and _branch_rows(tmp_path / "trellis.db", ids[0]) == 1:
                break
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    (run_id,) = _lines(tmp_path / "run_id")
    assert sorted(_lines(tmp_path / "ran")) == ["quick", "slow"]

    (tmp_path / "block").unlink()
    async with Database(url) as db, Workflows(db, flows=[_crash_flow("fanout")]) as workflows:
        assert (await workflows.get(run_id)).seq == 0  # the parallel step never checkpointed
        assert await workflows.recover() == [run_id]
        run = await workflows.wait(run_id)
        steps = await workflows.steps(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.state["quick"] == 1 and run.state["slow"] == 2
    # The quick branch finished before the kill: it did not run again; the slow one did.
    assert sorted(_lines(tmp_path / "ran")) == ["quick", "slow", "slow"]
    assert [(s.seq, s.step) for s in steps] == [(1, "fan")]
    assert steps[0].output["branches"] == {"quick": {"quick": 1}, "slow": {"slow": 2}}
