"""The LangGraph side of ``workflow_overhead.py``, run under ``benchmarks/.venv-langgraph``.

LangGraph is not a Trellis dependency, so this script runs in its own interpreter (made by
``benchmarks/setup_langgraph.sh``) and imports nothing from Trellis. It stays up for the
whole benchmark so both sides are measured warm and interleaved: it reads one command per
line on stdin and answers one JSON line on stdout.

Commands (JSON): ``{"variant": "sqlite" | "sqlite-normal" | "sqlite-normal-sync" |
"async-sqlite" | "none", "runs": N, "concurrency": C}`` -> ``{"variant": ..., "seconds":
[per-run wall time], "wall": total seconds}``; ``{"quit": true}`` ends it. Every run is the
same graph: five nodes that each add one to a counter, from START to END, on a new thread id.
LangGraph's default durability is "async" (a step's checkpoint is written while the next step
runs); ``sqlite-normal-sync`` runs with ``durability="sync"``, Trellis' guarantee (a step's
checkpoint is committed before the next step starts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
import uuid
from contextlib import AsyncExitStack, ExitStack
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph

STEPS = 5


class State(TypedDict):
    x: int


def _node(state: State) -> dict[str, int]:
    return {"x": state["x"] + 1}


async def _anode(state: State) -> dict[str, int]:
    return {"x": state["x"] + 1}


def _builder(node: Any) -> StateGraph:  # type: ignore[type-arg]
    builder = StateGraph(State)
    names = [f"s{i}" for i in range(1, STEPS + 1)]
    for name in names:
        builder.add_node(name, node)
    builder.add_edge(START, names[0])
    for a, b in zip(names, names[1:], strict=False):
        builder.add_edge(a, b)
    builder.add_edge(names[-1], END)
    return builder


def _config() -> dict[str, Any]:
    return {"configurable": {"thread_id": uuid.uuid4().hex}}


class Side:
    """The compiled graphs, each with its checkpointer on its own SQLite file in ``data``."""

    def __init__(self, data: Path, sync: ExitStack, aio: AsyncExitStack) -> None:
        self.data = data
        self.sync, self.aio = sync, aio
        self.graphs: dict[str, Any] = {}

    async def open(self) -> None:
        saver = self.sync.enter_context(SqliteSaver.from_conn_string(str(self.data / "lg.db")))
        self.graphs["sqlite"] = _builder(_node).compile(checkpointer=saver)
        # The same saver with the durability Trellis uses (WAL + synchronous=NORMAL): a
        # like-for-like row next to LangGraph's own default (synchronous=FULL).
        conn = sqlite3.connect(str(self.data / "lg-normal.db"), check_same_thread=False)
        self.sync.callback(conn.close)
        conn.execute("PRAGMA synchronous = NORMAL")
        self.graphs["sqlite-normal"] = _builder(_node).compile(checkpointer=SqliteSaver(conn))
        asaver = await self.aio.enter_async_context(
            AsyncSqliteSaver.from_conn_string(str(self.data / "lg-async.db"))
        )
        self.graphs["async-sqlite"] = _builder(_anode).compile(checkpointer=asaver)
        self.graphs["none"] = _builder(_anode).compile()

    async def measure(self, variant: str, runs: int, concurrency: int) -> dict[str, Any]:
        command_variant = variant
        durability: dict[str, Any] = {}
        if variant == "sqlite-normal-sync":
            variant, durability = "sqlite-normal", {"durability": "sync"}
        graph = self.graphs[variant]
        seconds: list[float] = []
        sync = variant in ("sqlite", "sqlite-normal")

        async def one() -> None:
            start = time.perf_counter()
            if sync:
                out = graph.invoke({"x": 0}, _config(), **durability)
            else:
                out = await graph.ainvoke({"x": 0}, _config(), **durability)
            seconds.append(time.perf_counter() - start)
            assert out["x"] == STEPS, out

        began = time.perf_counter()
        if concurrency <= 1 or sync:
            # The sync saver serializes on one connection under a lock: no concurrency row.
            for _ in range(runs):
                await one()
        else:
            left = runs

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await one()

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"variant": command_variant, "seconds": seconds, "wall": time.perf_counter() - began}


async def serve(data: Path) -> None:
    with ExitStack() as sync:
        async with AsyncExitStack() as aio:
            side = Side(data, sync, aio)
            await side.open()
            hello = {
                "ready": True,
                "python": sys.version.split()[0],
                "sqlite": sqlite3.sqlite_version,
                "langgraph": version("langgraph"),
                "langgraph_checkpoint_sqlite": version("langgraph-checkpoint-sqlite"),
            }
            print(json.dumps(hello), flush=True)
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    return
                command = json.loads(line)
                if command.get("quit"):
                    return
                result = await side.measure(
                    command["variant"], int(command["runs"]), int(command.get("concurrency", 1))
                )
                print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="directory for the checkpointers' SQLite files")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.data))


if __name__ == "__main__":
    main()
