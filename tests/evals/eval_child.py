"""A child process for test_runner's kill -9 test: runs a suite against a fake upstream,
storing results as they finish, until the parent kills it."""

from __future__ import annotations

import asyncio
import sys

from eval_fixtures import dataset_of, make_gateway, suite_of  # type: ignore[import-not-found]

from trellis.evals import EvalRunner, EvalStore
from trellis.store import Database


async def main(url: str, base_url: str, run_id: str) -> None:
    async with Database(url) as db:
        gateway = make_gateway(base_url)
        await EvalRunner(gateway, EvalStore(db)).run(
            suite_of(concurrency=2), dataset_of(20), run_id=run_id
        )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
