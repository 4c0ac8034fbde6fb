"""Datasets, runs and per-case results in Trellis' database (tables ``eval_*``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from trellis.errors import NotFoundError
from trellis.evals.datasets import Case, Dataset
from trellis.store.db import Database
from trellis.store.tables import eval_datasets, eval_results, eval_runs

__all__ = ["EvalStore", "ResultKey", "RunRecord", "DatasetInfo"]

#: (case id, candidate, repeat): one unit of work of a run.
ResultKey = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    name: str
    version: str
    cases: int
    created_at: float


@dataclass(slots=True)
class RunRecord:
    id: str
    suite: dict[str, Any]
    dataset: str
    status: str
    total: int
    done: int
    error: str | None
    key_id: str | None
    created_at: float
    updated_at: float
    #: The schedule (``evals.schedules``) that ran it; None for runs started by hand.
    schedule: str | None = None
    project_id: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "eval.run",
            "id": self.id,
            "suite": self.suite,
            "dataset": self.dataset,
            "status": self.status,
            "total": self.total,
            "done": self.done,
            "error": self.error,
            "key_id": self.key_id,
            "project": self.project_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "schedule": self.schedule,
        }


class EvalStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- datasets ---------------------------------------------------------------

    async def save_dataset(self, dataset: Dataset, project_id: str = "default") -> bool:
        """Store a dataset version in a project; False when that exact version was already
        stored there."""
        row = {
            "project_id": project_id,
            "name": dataset.name,
            "version": dataset.version,
            "cases": [case.model_dump(exclude_defaults=True) for case in dataset.cases],
            "case_count": len(dataset.cases),
            "created_at": time.time(),
        }
        try:
            async with self.db.write() as conn:
                await conn.execute(sa.insert(eval_datasets), [row])
        except IntegrityError:
            return False
        return True

    async def dataset(self, ref: str, project_id: str = "default") -> Dataset:
        """The project's stored dataset ``name@version`` (or the newest version of ``name``)."""
        name, _, version = ref.partition("@")
        query = sa.select(eval_datasets).where(
            eval_datasets.c.name == name, eval_datasets.c.project_id == project_id
        )
        if version:
            query = query.where(eval_datasets.c.version == version)
        query = query.order_by(eval_datasets.c.created_at.desc()).limit(1)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise NotFoundError(f"no stored dataset {ref!r}", param="dataset")
        cases = [Case.model_validate(case) for case in row["cases"]]
        return Dataset(name=row["name"], cases=cases, version=row["version"])

    async def datasets(self, project_id: str | None = None) -> list[DatasetInfo]:
        """Stored datasets (of ``project_id`` when given), every version."""
        query = sa.select(
            eval_datasets.c.name,
            eval_datasets.c.version,
            eval_datasets.c.case_count,
            eval_datasets.c.created_at,
        ).order_by(eval_datasets.c.name, eval_datasets.c.created_at)
        if project_id is not None:
            query = query.where(eval_datasets.c.project_id == project_id)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [DatasetInfo(r.name, r.version, r.case_count, r.created_at) for r in rows]

    # --- runs -------------------------------------------------------------------

    async def create_run(
        self,
        run_id: str,
        suite: dict[str, Any],
        dataset: str,
        total: int,
        key_id: str | None = None,
        schedule: str | None = None,
        project_id: str = "default",
    ) -> None:
        now = time.time()
        async with self.db.write() as conn:
            await conn.execute(
                sa.insert(eval_runs),
                [
                    {
                        "id": run_id,
                        "suite": suite,
                        "dataset": dataset,
                        "status": "running",
                        "total": total,
                        "key_id": key_id,
                        "schedule": schedule,
                        "project_id": project_id,
                        "created_at": now,
                        "updated_at": now,
                    }
                ],
            )

    async def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                sa.update(eval_runs)
                .where(eval_runs.c.id == run_id)
                .values(status=status, error=error, updated_at=time.time())
            )

    async def run(self, run_id: str) -> RunRecord:
        count = (
            sa.select(sa.func.count())
            .select_from(eval_results)
            .where(eval_results.c.run_id == eval_runs.c.id)
            .scalar_subquery()
        )
        query = sa.select(eval_runs, count.label("done")).where(eval_runs.c.id == run_id)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise NotFoundError(f"no eval run {run_id!r}", param="run_id")
        return RunRecord(**{k: row[k] for k in RunRecord.__slots__})  # type: ignore[attr-defined]

    async def runs(
        self,
        status: str | None = None,
        key_id: str | None = None,
        limit: int = 100,
        schedule: str | None = None,
        project_id: str | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first (``key_id``: only those that key started; ``schedule``: only
        those that schedule ran; ``project_id``: only that project's)."""
        query = sa.select(eval_runs.c.id).order_by(eval_runs.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(eval_runs.c.status == status)
        if key_id is not None:
            query = query.where(eval_runs.c.key_id == key_id)
        if schedule is not None:
            query = query.where(eval_runs.c.schedule == schedule)
        if project_id is not None:
            query = query.where(eval_runs.c.project_id == project_id)
        async with self.db.engine.connect() as conn:
            ids = [r.id for r in (await conn.execute(query)).all()]
        return [await self.run(run_id) for run_id in ids]

    async def add_results(
        self,
        run_id: str,
        items: list[tuple[ResultKey, dict[str, Any]]],
        *,
        replace: set[ResultKey] | frozenset[ResultKey] = frozenset(),
    ) -> None:
        """Store finished units in one transaction; keys in ``replace`` (failed units
        tried again) replace their earlier row."""
        if not items:
            return
        now = time.time()
        rows = [
            {
                "run_id": run_id,
                "case_id": case_id,
                "candidate": candidate,
                "repeat": repeat,
                "result": result,
                "created_at": now,
            }
            for (case_id, candidate, repeat), result in items
        ]
        async with self.db.write() as conn:
            for case_id, candidate, repeat in (key for key, _ in items if key in replace):
                await conn.execute(
                    sa.delete(eval_results).where(
                        eval_results.c.run_id == run_id,
                        eval_results.c.case_id == case_id,
                        eval_results.c.candidate == candidate,
                        eval_results.c.repeat == repeat,
                    )
                )
            await conn.execute(sa.insert(eval_results), rows)

    async def add_result(self, run_id: str, key: ResultKey, result: dict[str, Any]) -> None:
        """Store one finished unit (replacing an earlier failed try of it)."""
        await self.add_results(run_id, [(key, result)], replace={key})

    async def results(self, run_id: str) -> dict[ResultKey, dict[str, Any]]:
        query = sa.select(eval_results).where(eval_results.c.run_id == run_id)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return {(r["case_id"], r["candidate"], r["repeat"]): r["result"] for r in rows}
