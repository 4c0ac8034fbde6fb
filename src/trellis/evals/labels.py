"""Human evaluation: queues of cases that people label, one item at a time.

A queue is made from an eval run (each scored output of a candidate: the case, the output,
the run's rubric-judge verdicts) or from stored chat traces (the prompt and the answer,
picked with the trace filters ``dataset from-traces`` uses). A label is a score on the
queue's scale (a number in ``[min, max]``, passing at ``pass``; or pass/fail), optionally
a corrected answer and a comment, and who gave it.

Several people work one queue without colliding: ``next_item`` claims the first item that
nobody labelled and nobody claimed in the last ``claim_seconds`` (a labeller gets back the
item it already holds), with a conditional update so two claims of one item cannot both
win. Labels become a dataset version (``export``: the corrected answer, or the output
judged good, as ``expected``) and judge-calibration data (``agreement``); a label of a
production trace is also a ``label`` score on the trace.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from trellis.errors import InvalidRequestError, NotFoundError
from trellis.evals.agreement import Agreement, judge_agreement
from trellis.evals.datasets import NAME_PATTERN, Case, Dataset, content_hash
from trellis.evals.from_traces import TraceSelection
from trellis.evals.label_scale import Scale, check_label, parse_scale
from trellis.evals.label_sources import run_items, trace_items
from trellis.evals.store import EvalStore
from trellis.observe.store import TraceStore
from trellis.store.db import Database
from trellis.store.tables import eval_labels, eval_queue_items, eval_queues

__all__ = ["LabelQueues", "Queue", "QueueItem", "Scale", "parse_scale"]

#: A claim older than this (seconds) no longer keeps others off an item.
DEFAULT_CLAIM_SECONDS = 600.0


@dataclass(slots=True)
class Queue:
    id: str
    name: str
    source: dict[str, Any]
    scale: Scale
    instructions: str | None
    items: int
    key_id: str | None
    created_at: float
    #: The project the queue belongs to (a run's queue: the run's).
    project_id: str = "default"
    labelled: int = 0
    #: Unlabelled items someone claimed within the claim window.
    claimed: int = 0
    passed: int = 0
    mean_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "eval.queue",
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "scale": self.scale.to_dict(),
            "instructions": self.instructions,
            "key_id": self.key_id,
            "project": self.project_id,
            "created_at": self.created_at,
            "progress": {
                "items": self.items,
                "labelled": self.labelled,
                "claimed": self.claimed,
                "remaining": self.items - self.labelled,
                "passed": self.passed,
                "mean_score": self.mean_score,
            },
        }


@dataclass(slots=True)
class QueueItem:
    queue_id: str
    id: int
    case: Case
    output: str
    candidate: str | None = None
    repeat: int | None = None
    trace_id: str | None = None
    judge: dict[str, Any] | None = None
    claimed_by: str | None = None
    claimed_at: float | None = None
    label: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "eval.queue_item",
            "queue_id": self.queue_id,
            "id": self.id,
            "case_id": self.case.id,
            "input": self.case.input,
            "expected": self.case.expected,
            "context": self.case.context,
            "output": self.output,
            "candidate": self.candidate,
            "repeat": self.repeat,
            "trace_id": self.trace_id,
            "judge": self.judge,
            "claimed_by": self.claimed_by,
            "claimed_at": self.claimed_at,
            "label": self.label,
        }


def _label_dict(row: Any) -> dict[str, Any]:
    return {
        "score": row["score"],
        "passed": row["passed"],
        "reference": row["reference"],
        "comment": row["comment"],
        "labeller": row["labeller"],
        "labeller_name": row["labeller_name"],
        "created_at": row["created_at"],
    }


def _item(row: Any, label: dict[str, Any] | None = None) -> QueueItem:
    return QueueItem(
        queue_id=row["queue_id"],
        id=row["item_id"],
        case=Case.model_validate(row["case"]),
        output=row["output"],
        candidate=row["candidate"],
        repeat=row["repeat"],
        trace_id=row["trace_id"],
        judge=row["judge"],
        claimed_by=row["claimed_by"],
        claimed_at=row["claimed_at"],
        label=label,
    )


class LabelQueues:
    """Queues, their items and labels in Trellis' database (tables ``eval_queue*``,
    ``eval_labels``)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.evals = EvalStore(db)

    # --- creating ------------------------------------------------------------------

    async def from_run(
        self,
        run_id: str,
        *,
        name: str | None = None,
        candidate: str | None = None,
        scale: Scale | None = None,
        limit: int | None = None,
        instructions: str | None = None,
        key_id: str | None = None,
    ) -> Queue:
        """A queue of a run's scored outputs (``label_sources.run_items``), in the run's
        project."""
        items = await run_items(self.evals, run_id, candidate=candidate, scale=scale, limit=limit)
        return await self._create(
            name or f"run {run_id}",
            items.source,
            items.scale,
            instructions,
            items.rows,
            key_id,
            items.project_id,
        )

    async def from_traces(
        self,
        selection: TraceSelection,
        *,
        name: str | None = None,
        scale: Scale | None = None,
        instructions: str | None = None,
        key_id: str | None = None,
        filters: dict[str, Any] | None = None,
        project_id: str = "default",
    ) -> Queue:
        """A queue of ``project_id``'s stored chat traces' prompts and answers
        (``label_sources.trace_items``: only that project's traces are picked); ``filters``
        is kept as the source."""
        selection = replace(selection, query=replace(selection.query, project_id=project_id))
        rows = await trace_items(TraceStore(self.db), selection)
        source = {"traces": filters or {}}
        return await self._create(
            name or "traces", source, scale or Scale(), instructions, rows, key_id, project_id
        )

    async def _create(
        self,
        name: str,
        source: dict[str, Any],
        scale: Scale,
        instructions: str | None,
        rows: list[dict[str, Any]],
        key_id: str | None,
        project_id: str,
    ) -> Queue:
        if not rows:
            raise InvalidRequestError("nothing to label: the source has no scored output")
        queue_id = uuid.uuid4().hex
        now = time.time()
        async with self.db.write() as conn:
            await conn.execute(
                sa.insert(eval_queues),
                [
                    {
                        "id": queue_id,
                        "name": name[:200],
                        "source": source,
                        "scale": scale.to_dict(),
                        "instructions": instructions,
                        "item_count": len(rows),
                        "key_id": key_id,
                        "created_at": now,
                        "project_id": project_id,
                    }
                ],
            )
            await conn.execute(
                sa.insert(eval_queue_items),
                [
                    {
                        **row,
                        "queue_id": queue_id,
                        "item_id": number,
                        "claimed_by": None,
                        "claimed_at": None,
                        "labelled": False,
                    }
                    for number, row in enumerate(rows, 1)
                ],
            )
        return await self.queue(queue_id)

    # --- reading -------------------------------------------------------------------

    async def queue(self, queue_id: str, claim_seconds: float = DEFAULT_CLAIM_SECONDS) -> Queue:
        """The queue and its progress."""
        items = eval_queue_items.c
        fresh = time.time() - claim_seconds
        async with self.db.engine.connect() as conn:
            row = (
                (await conn.execute(sa.select(eval_queues).where(eval_queues.c.id == queue_id)))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFoundError(f"no eval queue {queue_id!r}", param="queue_id")
            claimed = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(eval_queue_items)
                    .where(
                        items.queue_id == queue_id,
                        items.labelled.is_(False),
                        items.claimed_at > fresh,
                    )
                )
            ).scalar_one()
            labels = (
                await conn.execute(
                    sa.select(
                        sa.func.count(),
                        sa.func.sum(sa.case((eval_labels.c.passed, 1), else_=0)),
                        sa.func.avg(eval_labels.c.score),
                    ).where(eval_labels.c.queue_id == queue_id)
                )
            ).one()
        return Queue(
            id=row["id"],
            name=row["name"],
            source=row["source"],
            scale=Scale.model_validate(row["scale"]),
            instructions=row["instructions"],
            items=row["item_count"],
            key_id=row["key_id"],
            created_at=row["created_at"],
            project_id=row["project_id"],
            labelled=int(labels[0] or 0),
            claimed=int(claimed or 0),
            passed=int(labels[1] or 0),
            mean_score=None if labels[2] is None else round(float(labels[2]), 6),
        )

    async def queues(
        self, key_id: str | None = None, limit: int = 100, project_id: str | None = None
    ) -> list[Queue]:
        """Queues, newest first (``key_id``: only those that key created; ``project_id``:
        only that project's)."""
        query = sa.select(eval_queues.c.id).order_by(eval_queues.c.created_at.desc()).limit(limit)
        if key_id is not None:
            query = query.where(eval_queues.c.key_id == key_id)
        if project_id is not None:
            query = query.where(eval_queues.c.project_id == project_id)
        async with self.db.engine.connect() as conn:
            ids = [r.id for r in (await conn.execute(query)).all()]
        return [await self.queue(queue_id) for queue_id in ids]

    async def items(
        self,
        queue_id: str,
        *,
        labelled: bool | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[QueueItem]:
        """Items in queue order after item ``after``, with their labels."""
        await self.queue(queue_id)
        query = (
            sa.select(eval_queue_items, *_label_columns())
            .select_from(eval_queue_items.outerjoin(eval_labels, _label_join()))
            .where(eval_queue_items.c.queue_id == queue_id, eval_queue_items.c.item_id > after)
            .order_by(eval_queue_items.c.item_id)
            .limit(limit)
        )
        if labelled is not None:
            query = query.where(eval_queue_items.c.labelled.is_(labelled))
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_with_label(row) for row in rows]

    async def item(self, queue_id: str, item_id: int) -> QueueItem:
        query = (
            sa.select(eval_queue_items, *_label_columns())
            .select_from(eval_queue_items.outerjoin(eval_labels, _label_join()))
            .where(eval_queue_items.c.queue_id == queue_id, eval_queue_items.c.item_id == item_id)
        )
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            await self.queue(queue_id)  # an unknown queue is named as such
            raise NotFoundError(f"queue {queue_id} has no item {item_id}", param="item_id")
        return _with_label(row)

    # --- labelling -----------------------------------------------------------------

    async def next_item(
        self, queue_id: str, labeller: str, claim_seconds: float = DEFAULT_CLAIM_SECONDS
    ) -> QueueItem | None:
        """Claim the next item for ``labeller``: the one it already holds, else the first
        unlabelled item nobody claimed within ``claim_seconds``. None: nothing left."""
        await self.queue(queue_id)
        items = eval_queue_items.c
        for _ in range(20):  # another labeller won the item we picked: pick again
            now = time.time()
            free = sa.or_(
                items.claimed_at.is_(None),
                items.claimed_at <= now - claim_seconds,
                items.claimed_by == labeller,
            )
            async with self.db.write() as conn:
                picked = (
                    await conn.execute(
                        sa.select(items.item_id)
                        .where(items.queue_id == queue_id, items.labelled.is_(False), free)
                        .order_by(
                            sa.case((items.claimed_by == labeller, 0), else_=1), items.item_id
                        )
                        .limit(1)
                    )
                ).scalar_one_or_none()
                if picked is None:
                    return None
                claimed = await conn.execute(
                    sa.update(eval_queue_items)
                    .where(
                        items.queue_id == queue_id,
                        items.item_id == picked,
                        items.labelled.is_(False),
                        free,
                    )
                    .values(claimed_by=labeller, claimed_at=now)
                )
            if claimed.rowcount == 1:
                return await self.item(queue_id, picked)
        return None

    async def label(
        self,
        queue_id: str,
        item_id: int,
        *,
        score: float | None = None,
        passed: bool | None = None,
        reference: str | None = None,
        comment: str | None = None,
        labeller: str | None = None,
        labeller_name: str | None = None,
    ) -> QueueItem:
        """Label an item (a second label replaces the first). On a range scale ``score``
        is required and ``passed`` follows from it; on pass/fail ``passed`` (or a score
        of 0 or 1) is."""
        queue = await self.queue(queue_id)
        scale = queue.scale
        item = await self.item(queue_id, item_id)
        score, passed = check_label(scale, score, passed)
        row = {
            "queue_id": queue_id,
            "item_id": item_id,
            "score": score,
            "passed": passed,
            "reference": reference or None,
            "comment": comment or None,
            "labeller": labeller,
            "labeller_name": labeller_name,
            "created_at": time.time(),
        }
        async with self.db.write() as conn:
            await conn.execute(
                sa.delete(eval_labels).where(
                    eval_labels.c.queue_id == queue_id, eval_labels.c.item_id == item_id
                )
            )
            await conn.execute(sa.insert(eval_labels), [row])
            await conn.execute(
                sa.update(eval_queue_items)
                .where(
                    eval_queue_items.c.queue_id == queue_id,
                    eval_queue_items.c.item_id == item_id,
                )
                .values(labelled=True)
            )
        if "traces" in queue.source and item.trace_id is not None:
            await self._score_trace(
                item.trace_id, scale, score, passed, reference, item.output, queue.project_id
            )
        return await self.item(queue_id, item_id)

    async def _score_trace(
        self,
        trace_id: str,
        scale: Scale,
        score: float,
        passed: bool,
        reference: str | None,
        output: str,
        project_id: str,
    ) -> None:
        """A label of a production trace is also a ``label`` score on it (0-1 on the
        queue's scale), its comment the right answer: the corrected one, else the output
        when it passed; so the trace view shows it and ``dataset from-traces`` (expected
        ``label``) takes it. A trace removed since (retention) keeps only the queue's label;
        a trace outside the queue's project is never scored."""
        store = TraceStore(self.db)
        exists, _, trace_project = await store.owner(trace_id)
        if not exists or trace_project != project_id:
            return
        value = (score - scale.min) / (scale.max - scale.min)
        comment = reference or (output if passed else None)
        await store.add_score(
            trace_id, "label", round(value, 6), comment, source="eval", project_id=project_id
        )

    # --- using the labels -------------------------------------------------------------

    async def labelled_items(self, queue_id: str) -> list[QueueItem]:
        """Every labelled item, in queue order."""
        found: list[QueueItem] = []
        after = 0
        while True:
            page = await self.items(queue_id, labelled=True, after=after, limit=1000)
            found.extend(page)
            if len(page) < 1000:
                return found
            after = page[-1].id

    async def agreement(self, queue_id: str) -> list[Agreement]:
        """Judge-human agreement per judge metric of the source run (none from traces)."""
        queue = await self.queue(queue_id)
        pairs = [
            (metric, float(verdict["score"]), float(item.label["score"]))
            for item in await self.labelled_items(queue_id)
            if item.label is not None and item.label["score"] is not None
            for metric, verdict in (item.judge or {}).items()
            if verdict.get("score") is not None
        ]
        return judge_agreement(pairs, queue.scale.to_dict())

    async def export(
        self, queue_id: str, name: str, project_id: str = "default"
    ) -> tuple[Dataset, bool, int]:
        """The labels as a new dataset version: a case per labelled item whose ``expected``
        is the labeller's corrected answer, else the output when it passed; the human
        label in ``metadata.human``. Returns the dataset, whether that version is new, and
        how many labelled items gave no case (failed, with no corrected answer). The
        dataset is stored in ``project_id`` (the queue's)."""
        if not re.match(NAME_PATTERN, name):
            raise InvalidRequestError(
                f"dataset name {name!r} must be 1-100 letters, digits, '.', '_' or '-'",
                param="dataset",
            )
        queue = await self.queue(queue_id)
        items = await self.labelled_items(queue_id)
        counts: dict[str, int] = {}
        for item in items:
            counts[item.case.id] = counts.get(item.case.id, 0) + 1
        cases: list[Case] = []
        skipped = 0
        for item in items:
            label = item.label or {}
            expected = label.get("reference") or (item.output if label.get("passed") else None)
            if expected is None:
                skipped += 1
                continue
            # One case per item: a case labelled for several candidates gets its item number.
            case_id = item.case.id if counts[item.case.id] == 1 else f"{item.case.id}#{item.id}"
            human = {
                "score": label.get("score"),
                "passed": label.get("passed"),
                "comment": label.get("comment"),
                "labeller": label.get("labeller_name") or label.get("labeller"),
                "queue": queue.id,
                "item": item.id,
                "corrected": bool(label.get("reference")),
            }
            if item.candidate is not None:
                human["candidate"] = item.candidate
            if item.trace_id is not None:
                human["trace_id"] = item.trace_id
            cases.append(
                item.case.model_copy(
                    update={
                        "id": case_id[:200],
                        "expected": expected,
                        "metadata": {**item.case.metadata, "human": human},
                    }
                )
            )
        if not cases:
            raise InvalidRequestError(
                "no labelled item gives an expected answer yet (label some, pass them or "
                "write a corrected answer)",
                param="queue_id",
            )
        dataset = Dataset(name=name, cases=cases, version=content_hash(cases))
        created = await self.evals.save_dataset(dataset, queue.project_id)
        return dataset, created, skipped


def _label_columns() -> list[Any]:
    c = eval_labels.c
    return [
        c.score,
        c.passed,
        c.reference,
        c.comment,
        c.labeller,
        c.labeller_name,
        c.created_at,
    ]


def _label_join() -> Any:
    return sa.and_(
        eval_labels.c.queue_id == eval_queue_items.c.queue_id,
        eval_labels.c.item_id == eval_queue_items.c.item_id,
    )


def _with_label(row: Any) -> QueueItem:
    label = _label_dict(row) if row["created_at"] is not None else None
    return _item(row, label)
