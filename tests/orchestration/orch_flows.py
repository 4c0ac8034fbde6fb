"""Workflows shared by the tests and the crash subprocess (``python orch_flows.py DB DIR
[FLOW]``, FLOW ``crash`` by default or ``fanout``).

The crash flow appends to counter files so a test can tell which steps ran in which process;
step ``three`` blocks while ``DIR/block`` exists, which is where the test kills the process.
The fanout flow's parallel step has a branch that finishes at once and one that blocks
the same way.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from pydantic import BaseModel

from trellis.orchestration import END, Context, FunctionStep, Workflow, Workflows, parallel, tool
from trellis.store import Database


class Count(BaseModel):
    dir: str
    n: int = 0
    charge_id: str | None = None


def _append(directory: str, name: str, line: str) -> None:
    with open(Path(directory) / name, "a") as handle:
        handle.write(line + "\n")
        handle.flush()


@tool(side_effect=True)
async def charge(directory: str, amount: int) -> str:
    """Charge a card (the effect: one line in ``charges``)."""
    _append(directory, "charges", str(amount))
    return f"ch-{amount}"


crash = Workflow("crash", state=Count)


@crash.step
async def one(s: Count) -> dict[str, int]:
    _append(s.dir, "ran", "one")
    return {"n": s.n + 1}


@crash.step
async def two(s: Count) -> dict[str, int]:
    _append(s.dir, "ran", "two")
    return {"n": s.n + 1}


@crash.step
async def three(s: Count, ctx: Context) -> dict[str, object]:
    # The effect is recorded done, then the step blocks: a crash here must not repeat it.
    charge_id = await charge(ctx, directory=s.dir, amount=5)
    _append(s.dir, "ran", "three")
    while (Path(s.dir) / "block").exists():
        await asyncio.sleep(0.02)
    return {"n": s.n + 1, "charge_id": charge_id}


@crash.step
async def four(s: Count) -> dict[str, int]:
    _append(s.dir, "ran", "four")
    return {"n": s.n + 1}


class Fan(BaseModel):
    dir: str
    quick: int = 0
    slow: int = 0


async def quick(s: Fan) -> dict[str, int]:
    _append(s.dir, "ran", "quick")
    return {"quick": 1}


async def slow(s: Fan) -> dict[str, int]:
    _append(s.dir, "ran", "slow")
    while (Path(s.dir) / "block").exists():
        await asyncio.sleep(0.02)
    return {"slow": 2}


fanout = Workflow("fanout", state=Fan)
fanout.add(parallel("fan", {"quick": FunctionStep(quick), "slow": FunctionStep(slow)}, next=END))

FLOWS = {"crash": crash, "fanout": fanout}


async def _main(url: str, directory: str, name: str = "crash") -> None:
    async with Database(url) as db, Workflows(db) as workflows:
        run_id = await workflows.start(FLOWS[name], {"dir": directory})
        _append(directory, "run_id", run_id)
        await workflows.wait(run_id)


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:4]))
