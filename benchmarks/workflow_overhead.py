"""Workflow engine overhead per step, checkpoint included: Trellis next to LangGraph.

The same workflow on both sides: five no-op steps (each adds one to a counter), run start
to end, many times. What a run costs divided by five is the engine's overhead per step,
with the checkpoint each step commits.

Rows:

* ``trellis``: ``Workflows`` on a SQLite file with its default store (the direct writer).
* ``trellis-sqlalchemy``: the same with ``SqlRunStore`` (SQLAlchemy + aiosqlite), for reference.
* ``trellis-memory``: ``MemoryRunStore``: the engine alone, nothing persisted.
* ``langgraph-sqlite``: a ``StateGraph`` of five nodes with ``SqliteSaver`` on a file
  (LangGraph's defaults: WAL, ``synchronous=FULL``).
* ``langgraph-sqlite-normal``: the same saver on a connection with ``synchronous=NORMAL``,
  the setting Trellis uses.
* ``langgraph-sqlite-normal-sync``: that, run with ``durability="sync"``: each step's
  checkpoint committed before the next step starts, as Trellis does (LangGraph's default,
  "async", writes it while the next step runs). The like-for-like row.
* ``langgraph-async-sqlite``: ``AsyncSqliteSaver``.
* ``langgraph-none``: no checkpointer (LangGraph's engine alone).

LangGraph runs in its own virtual environment (``bash benchmarks/setup_langgraph.sh``) as
a long-lived subprocess (``langgraph_side.py``); without it, its rows say how to set it up.
Both sides are measured in interleaved rounds, alternating which goes first, so drift on
the machine hits them alike. With ``--concurrency C`` the async rows also run C runs at a
time (per-step figure: wall time / steps). Usage::

    .venv/bin/python benchmarks/workflow_overhead.py            # 1-3 minutes
    .venv/bin/python benchmarks/workflow_overhead.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from trellis.orchestration import (
    MemoryRunStore,
    RunStatus,
    SqliteRunStore,
    SqlRunStore,
    Workflow,
    Workflows,
)
from trellis.orchestration.store import RunStore
from trellis.store import Database

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "workflow_overhead.json"
DEFAULT_LANGGRAPH_PYTHON = HERE / ".venv-langgraph" / "bin" / "python"
LANGGRAPH_SCRIPT = HERE / "langgraph_side.py"
SETUP_HINT = "skipped: `bash benchmarks/setup_langgraph.sh` installs LangGraph in its own venv"
STEPS = 5

TRELLIS_ROWS = ("trellis", "trellis-sqlalchemy", "trellis-memory")
LANGGRAPH_ROWS = {
    "langgraph-sqlite": "sqlite",
    "langgraph-sqlite-normal": "sqlite-normal",
    "langgraph-sqlite-normal-sync": "sqlite-normal-sync",
    "langgraph-async-sqlite": "async-sqlite",
    "langgraph-none": "none",
}
#: Rows that also run concurrently with --concurrency (async end to end).
CONCURRENT_ROWS = ("trellis", "trellis-sqlalchemy", "trellis-memory", "langgraph-async-sqlite")


@dataclass(frozen=True)
class BenchConfig:
    runs: int = 200  # measured runs per row per round
    rounds: int = 5
    warmup: int = 30  # unmeasured runs per row before the first round
    concurrency: int = 0  # 0: no concurrent rows
    concurrent_runs: int = 200  # runs per concurrent row per round
    langgraph: bool = True
    langgraph_python: Path = DEFAULT_LANGGRAPH_PYTHON
    json_path: Path | None = DEFAULT_JSON
    data_dir: Path | None = None  # SQLite files go here (a temporary directory if None)


@dataclass
class Row:
    name: str
    seconds: list[float] = field(default_factory=list)  # per run, sequential
    walls: list[float] = field(default_factory=list)  # per concurrent batch
    concurrent_runs: int = 0
    note: str | None = None

    def summary(self) -> dict[str, Any]:
        per_step = [s / STEPS * 1000 for s in self.seconds]
        out: dict[str, Any] = {"runs": len(per_step)}
        if per_step:
            out.update(
                ms_per_step_p50=round(statistics.median(per_step), 4),
                ms_per_step_mean=round(statistics.fmean(per_step), 4),
                ms_per_step_p95=round(percentile(per_step, 95), 4),
            )
        if self.walls:
            total = sum(self.walls)
            out["concurrent_ms_per_step"] = round(total / (self.concurrent_runs * STEPS) * 1000, 4)
            out["concurrent_runs"] = self.concurrent_runs
        if self.note:
            out["note"] = self.note
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- the Trellis side ---------------------------------------------------------------


class S(BaseModel):
    x: int = 0


def five_steps() -> Workflow[S]:
    """Five no-op steps in a row: each adds one to ``x``."""
    flow = Workflow("overhead", state=S)

    async def bump(s: S) -> dict[str, int]:
        return {"x": s.x + 1}

    for i in range(1, STEPS + 1):
        flow.step(name=f"s{i}")(bump)
    return flow


class TrellisSide:
    """One ``Workflows`` per row, each on its own store (and SQLite file)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.flow = five_steps()
        self.dbs: list[Database] = []
        self.workflows: dict[str, Workflows] = {}

    async def open(self, rows: Sequence[str]) -> None:
        for name in rows:
            store: RunStore
            if name == "trellis-memory":
                store = MemoryRunStore()
            else:
                db = Database(f"sqlite+aiosqlite:///{self.data / (name + '.db')}")
                await db.connect()
                self.dbs.append(db)
                if name == "trellis":
                    # What Workflows picks by itself on a SQLite file.
                    self.workflows[name] = Workflows(db, flows=[self.flow])
                    assert isinstance(self.workflows[name].store, SqliteRunStore)
                    continue
                store = SqlRunStore(db)
            self.workflows[name] = Workflows(store=store, flows=[self.flow])

    async def close(self) -> None:
        for workflows in self.workflows.values():
            await workflows.aclose()
        for db in self.dbs:
            await db.close()

    async def _one(self, workflows: Workflows) -> float:
        start = time.perf_counter()
        run = await workflows.run(self.flow, {})
        elapsed = time.perf_counter() - start
        if run.status != RunStatus.SUCCEEDED or run.state["x"] != STEPS:
            raise RuntimeError(f"benchmark run ended {run.status}: {run.error}")
        return elapsed

    async def sequential(self, name: str, runs: int) -> list[float]:
        workflows = self.workflows[name]
        return [await self._one(workflows) for _ in range(runs)]

    async def concurrent(self, name: str, runs: int, concurrency: int) -> float:
        workflows = self.workflows[name]
        left = runs

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await self._one(workflows)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


# --- the LangGraph side (a subprocess in its own venv) ----------------------------------


class LangGraphSide:
    def __init__(self, python: Path, data: Path) -> None:
        self.process = subprocess.Popen(
            [str(python), str(LANGGRAPH_SCRIPT), str(data)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"langgraph_side.py exited ({self.process.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def measure(self, variant: str, runs: int, concurrency: int = 1) -> dict[str, Any]:
        assert self.process.stdin is not None
        command = {"variant": variant, "runs": runs, "concurrency": concurrency}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write('{"quit": true}\n')
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


# --- the run ---------------------------------------------------------------------------


async def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    data = config.data_dir or Path(tempfile.mkdtemp(prefix="trellis-wf-bench-"))
    data.mkdir(parents=True, exist_ok=True)
    rows = {name: Row(name) for name in (*TRELLIS_ROWS, *LANGGRAPH_ROWS)}
    trellis = TrellisSide(data)
    langgraph: LangGraphSide | None = None
    info: dict[str, Any] = {}
    try:
        await trellis.open(TRELLIS_ROWS)
        if not config.langgraph:
            for name in LANGGRAPH_ROWS:
                rows[name].note = "skipped (--no-langgraph)"
        elif not config.langgraph_python.exists():
            for name in LANGGRAPH_ROWS:
                rows[name].note = SETUP_HINT
        else:
            langgraph = LangGraphSide(config.langgraph_python, data / "langgraph")
            info = langgraph.info

        async def trellis_round(runs: int, keep: bool) -> None:
            for name in TRELLIS_ROWS:
                seconds = await trellis.sequential(name, runs)
                if keep:
                    rows[name].seconds += seconds

        def langgraph_round(runs: int, keep: bool) -> None:
            assert langgraph is not None
            for name, variant in LANGGRAPH_ROWS.items():
                result = langgraph.measure(variant, runs)
                if keep:
                    rows[name].seconds += result["seconds"]

        async def concurrent_round(runs: int) -> None:
            for name in CONCURRENT_ROWS:
                if name in TRELLIS_ROWS:
                    wall = await trellis.concurrent(name, runs, config.concurrency)
                elif langgraph is not None:
                    variant = LANGGRAPH_ROWS[name]
                    wall = langgraph.measure(variant, runs, config.concurrency)["wall"]
                else:
                    continue
                rows[name].walls.append(wall)
                rows[name].concurrent_runs += runs

        sides: list[Callable[[int, bool], Awaitable[None]]] = [trellis_round]
        if langgraph is not None:

            async def lg(runs: int, keep: bool) -> None:
                langgraph_round(runs, keep)

            sides.append(lg)
        for side in sides:
            await side(config.warmup, False)
        for round_no in range(config.rounds):
            gc.collect()
            order = sides if round_no % 2 == 0 else list(reversed(sides))
            for side in order:
                await side(config.runs, True)
            if config.concurrency > 1:
                await concurrent_round(config.concurrent_runs)
    finally:
        if langgraph is not None:
            langgraph.close()
        await trellis.close()
        if config.data_dir is None:
            shutil.rmtree(data, ignore_errors=True)
    return report(config, rows, info)


def _ratio(rows: dict[str, dict[str, Any]], a: str, b: str, key: str) -> float | None:
    x, y = rows[a].get(key), rows[b].get(key)
    return round(x / y, 3) if x and y else None


def report(config: BenchConfig, rows: dict[str, Row], info: dict[str, Any]) -> dict[str, Any]:
    summaries = {name: row.summary() for name, row in rows.items()}
    ratios: dict[str, Any] = {}
    for other in LANGGRAPH_ROWS:
        for key in ("ms_per_step_p50", "ms_per_step_mean"):
            ratio = _ratio(summaries, "trellis", other, key)
            if ratio is not None:
                ratios[f"trellis/{other} ({key.removeprefix('ms_per_step_')})"] = ratio
    engine = _ratio(summaries, "trellis-memory", "langgraph-none", "ms_per_step_p50")
    if engine is not None:
        ratios["trellis-memory/langgraph-none (p50)"] = engine
    concurrent = _ratio(summaries, "trellis", "langgraph-async-sqlite", "concurrent_ms_per_step")
    if concurrent is not None:
        ratios["trellis/langgraph-async-sqlite (concurrent)"] = concurrent
    return {
        "benchmark": "workflow_overhead",
        "workflow": f"{STEPS} no-op steps, start to end, one checkpoint per step",
        "config": {
            "runs": config.runs,
            "rounds": config.rounds,
            "warmup": config.warmup,
            "concurrency": config.concurrency,
            "concurrent_runs": config.concurrent_runs if config.concurrency > 1 else 0,
        },
        "rows": summaries,
        "ratios": ratios,
        "environment": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "platform": platform.platform(),
            "langgraph_side": info or None,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{'row':<30}{'p50 ms/step':>12}{'mean':>9}{'p95':>9}{'conc.':>9}  runs")
    for name, row in result["rows"].items():
        if "ms_per_step_p50" not in row:
            print(f"{name:<30}  {row.get('note', '')}")
            continue
        conc = row.get("concurrent_ms_per_step")
        print(
            f"{name:<30}{row['ms_per_step_p50']:>12.3f}{row['ms_per_step_mean']:>9.3f}"
            f"{row['ms_per_step_p95']:>9.3f}{conc if conc is not None else '':>9}  {row['runs']}"
        )
    for name, ratio in result["ratios"].items():
        print(f"{name:<52}{ratio:>8.3f}")


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="measured runs per row per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=16, help="0 to skip concurrent rows")
    parser.add_argument("--concurrent-runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a few seconds: plumbing check")
    parser.add_argument("--no-langgraph", action="store_true")
    parser.add_argument("--langgraph-python", type=Path, default=DEFAULT_LANGGRAPH_PYTHON)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the SQLite files here")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.rounds, args.warmup, args.concurrent_runs = 20, 2, 5, 40
    return BenchConfig(
        runs=args.runs,
        rounds=args.rounds,
        warmup=args.warmup,
        concurrency=args.concurrency,
        concurrent_runs=args.concurrent_runs,
        langgraph=not args.no_langgraph,
        langgraph_python=args.langgraph_python,
        json_path=args.json,
        data_dir=args.data_dir,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    config = parse_args(argv)
    result = asyncio.run(run_benchmark(config))
    print_table(result)
    if config.json_path is not None:
        config.json_path.parent.mkdir(parents=True, exist_ok=True)
        config.json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {config.json_path}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
