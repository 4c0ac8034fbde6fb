"""Eval runs in the background of a long-lived process (the server): started, resumed and
read by id. The work itself is the :class:`EvalRunner`'s; this keeps the tasks.

Over HTTP a suite names a stored dataset (``name@version``, uploaded first): the server
reads no files of its caller's choosing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from trellis.errors import ConflictError, InvalidRequestError
from trellis.evals.datasets import Dataset
from trellis.evals.runner import EvalRunner
from trellis.evals.store import EvalStore, RunRecord
from trellis.evals.suite import Suite, parse_suite
from trellis.inference.gateway import Gateway
from trellis.store.db import Database

if TYPE_CHECKING:
    from trellis.evals.scheduler import EvalScheduler

__all__ = ["EvalService"]

log = logging.getLogger(__name__)


class EvalService:
    def __init__(
        self, gateway: Gateway, db: Database, *, embedder: Any = None, workflows: Any = None
    ) -> None:
        self.store = EvalStore(db)
        self.runner = EvalRunner(gateway, self.store, embedder=embedder, workflows=workflows)
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        #: Scheduled runs (``evals.schedules``), when the server attached a scheduler.
        self.scheduler: EvalScheduler | None = None

    async def _dataset(self, suite: Suite, project_id: str) -> Dataset:
        ref = suite.dataset
        if "/" in ref or ref.lower().endswith((".jsonl", ".csv", ".json")):
            raise InvalidRequestError(
                "over HTTP a suite's dataset is a stored dataset (`name@version` or `name`): "
                "upload it with POST /v1/evals/datasets first",
                param="suite.dataset",
            )
        return await self.store.dataset(ref, project_id)

    async def start(
        self, suite_data: dict[str, Any], *, key_id: str | None = None, project_id: str = "default"
    ) -> RunRecord:
        """Validate a suite, register its run in ``project_id`` (whose stored dataset it
        evaluates) and run it in the background."""
        suite = parse_suite(suite_data, "suite")
        dataset = await self._dataset(suite, project_id)
        self.runner.metrics(suite)  # metric options and the embedder, checked before starting
        run_id = await self.runner.start(suite, dataset, key_id=key_id, project_id=project_id)
        self._spawn(run_id, suite, dataset)
        return await self.store.run(run_id)

    async def start_suite(
        self, suite: Suite, dataset: Dataset, *, schedule: str | None = None
    ) -> str:
        """Register a run of an already loaded suite and dataset (a schedule's, read from
        the files its settings name) and run it in the background; its id."""
        self.runner.metrics(suite)
        run_id = await self.runner.start(suite, dataset, schedule=schedule)
        self._spawn(run_id, suite, dataset)
        return run_id

    async def resume(self, run_id: str) -> RunRecord:
        """Continue a run whose process stopped (finished units are not redone)."""
        record = await self.store.run(run_id)
        if run_id in self._tasks:
            raise ConflictError(f"eval run {run_id} is running in this server", param="run_id")
        if record.status == "succeeded":
            return record
        suite = parse_suite(record.suite, f"run {run_id}")
        dataset = await self.store.dataset(record.dataset, record.project_id)
        await self.store.set_status(run_id, "running")
        self._spawn(run_id, suite, dataset)
        return await self.store.run(run_id)

    async def resume_unfinished(self) -> list[str]:
        """Resume every run left ``running`` by a previous life of this process."""
        resumed = []
        for record in await self.store.runs(status="running", limit=1000):
            if record.id not in self._tasks:
                try:
                    await self.resume(record.id)
                    resumed.append(record.id)
                except Exception:
                    log.exception("eval run %s could not be resumed", record.id)
        return resumed

    async def report(self, run_id: str) -> dict[str, Any]:
        """The run's report, finished or not (what is stored so far)."""
        record = await self.store.run(run_id)
        suite = parse_suite(record.suite, f"run {run_id}")
        dataset = await self.store.dataset(record.dataset, record.project_id)
        return await self.runner.report(run_id, suite, dataset)

    def running(self, run_id: str) -> bool:
        return run_id in self._tasks

    async def wait(self, run_id: str) -> None:
        """Until this server's task for ``run_id`` ends (at once if there is none)."""
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.wait({task})

    def _spawn(self, run_id: str, suite: Suite, dataset: Dataset) -> None:
        task = asyncio.create_task(self._run(run_id, suite, dataset), name=f"eval-{run_id}")
        self._tasks[run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run_id, None))

    async def _run(self, run_id: str, suite: Suite, dataset: Dataset) -> None:
        try:
            await self.runner.run(suite, dataset, run_id=run_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # recorded on the run by the runner; the server goes on
            log.exception("eval run %s failed", run_id)

    async def aclose(self) -> None:
        """Stop the background runs; they stay ``running`` and resume at the next start."""
        if self.scheduler is not None:
            await self.scheduler.aclose()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
