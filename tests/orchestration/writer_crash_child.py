"""Child of test_sqlite_store's kill -9 test: 16 runs checkpointing forever through the
direct SQLite writer, so group commits are in flight when the parent kills the process."""

from __future__ import annotations

import asyncio
import sys

from pydantic import BaseModel

from trellis.orchestration import Workflow, Workflows
from trellis.store import Database
from trellis.store.sqlite_writer import writer_for


class Loop(BaseModel):
    x: int = 0
    payload: str = "p" * 4096  # some bytes per checkpoint, so transactions take a while


loop = Workflow("forever", state=Loop)


@loop.step
async def again(s: Loop) -> dict[str, int]:
    return {"x": s.x + 1}


loop.route("again")(lambda s: "again")


async def _main(url: str) -> None:
    async with Database(url) as db, Workflows(db, flows=[loop]) as workflows:
        ids = [await workflows.start(loop, {}) for _ in range(16)]
        writer = writer_for(db)
        while writer.stats.largest_batch < 2:
            await asyncio.sleep(0.01)
        print("batched", flush=True)
        await asyncio.gather(*(workflows.wait(run_id) for run_id in ids))


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1]))
