"""Human evaluation over HTTP: labelling queues made from an eval run or from traces, the
next item to label, labels, judge-human agreement and the export of labels as a dataset.

A queue belongs to a project: a queue from a run to the run's, a queue from traces to the
caller's (only its project's traces are picked). Another project's queue answers 404, as a
missing one does, and lists leave it out. Roles follow the eval runs: a queue from a run
needs whoever may read the run (``eval``, ``observer``, ``inference`` for its own runs); a
queue from traces needs ``observer`` or ``eval`` (traces of the project). A key reads and
labels the queues it created; ``eval`` and ``observer`` (or ``admin``) read and label every
queue of the project. The labeller recorded on a label is the calling key (its id and
name). The work is ``trellis.evals.labels.LabelQueues``'s.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from trellis.access.keys import EVAL, OBSERVER
from trellis.errors import InvalidRequestError, PermissionDeniedError
from trellis.evals.from_traces import TraceSelection, chat_traces
from trellis.evals.labels import LabelQueues, Queue, parse_scale
from trellis.inference.call import Caller
from trellis.server.edge import (
    authenticate,
    not_found_outside,
    parse_body,
    project_filter,
    read_json,
    runtime,
)
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes
from trellis.server.routes.evals import READ, RUN, _check_owner, _reader

router = APIRouter(prefix="/v1/evals/queues", tags=["evals"])

QueueId = Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")
ItemId = Path(ge=1, le=10_000_000)


class TraceFilters(BaseModel):
    """The trace filters of ``GET /v1/traces`` (chat traces only) and a score threshold."""

    model_config = ConfigDict(extra="forbid")

    since: str | None = Field(default=None, description="1h (ago), Unix seconds or ISO 8601")
    until: str | None = Field(default=None, description="1h (ago), Unix seconds or ISO 8601")
    model: str | None = None
    key_id: str | None = None
    status: Literal["ok", "error"] | None = None
    q: str | None = Field(default=None, description="text in the prompt or response")
    score: str | None = Field(default=None, description="keep traces scored NAME below `below`")
    below: float | None = None


class CreateQueue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    run_id: str | None = Field(
        default=None, min_length=1, max_length=32, description="Label this eval run's outputs"
    )
    candidate: str | None = Field(default=None, description="Only this candidate's outputs")
    traces: TraceFilters | None = Field(
        default=None, description="Label stored chat traces that match these filters"
    )
    scale: dict[str, Any] | None = Field(
        default=None,
        description='{"type": "range", "min": 1, "max": 5, "pass": 3} or {"type": '
        '"pass_fail"}; default: the run\'s judge scale, else 1-5',
    )
    instructions: str | None = Field(default=None, max_length=10_000)
    limit: int = Field(default=500, ge=1, le=100_000, description="At most this many items")


class QueueProgress(BaseModel):
    items: int
    labelled: int
    claimed: int
    remaining: int
    passed: int
    mean_score: float | None


class QueueReply(BaseModel):
    object: Literal["eval.queue"] = "eval.queue"
    id: str
    name: str
    source: dict[str, Any]
    scale: dict[str, Any]
    instructions: str | None
    key_id: str | None
    project: str = Field(description="The project: the run's, or the creator's for traces")
    created_at: float
    progress: QueueProgress
    agreement: list[dict[str, Any]] | None = Field(
        default=None, description="Judge-human agreement (on `GET /v1/evals/queues/{id}`)"
    )


class QueueList(BaseModel):
    object: Literal["list"] = "list"
    data: list[QueueReply]


class ItemReply(BaseModel):
    object: Literal["eval.queue_item"] = "eval.queue_item"
    queue_id: str
    id: int
    case_id: str
    input: str | list[dict[str, Any]]
    expected: str | None
    context: list[str] | None
    output: str
    candidate: str | None
    repeat: int | None
    trace_id: str | None
    judge: dict[str, Any] | None
    claimed_by: str | None
    claimed_at: float | None
    label: dict[str, Any] | None


class ItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ItemReply]
    has_more: bool


class NextReply(BaseModel):
    object: Literal["eval.queue_next"] = "eval.queue_next"
    item: ItemReply | None = Field(description="The claimed item; null when none is left")
    progress: QueueProgress


class LabelItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score: float | None = Field(default=None, description="On the queue's scale")
    passed: bool | None = Field(default=None, description="Pass/fail (pass_fail queues)")
    reference: str | None = Field(
        default=None, max_length=100_000, description="The corrected or reference answer"
    )
    comment: str | None = Field(default=None, max_length=10_000)


class AgreementReply(BaseModel):
    object: Literal["eval.agreement"] = "eval.agreement"
    queue_id: str
    labelled: int
    data: list[dict[str, Any]]


class ExportQueue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=100, description="The new dataset's name")


class ExportReply(BaseModel):
    object: Literal["eval.dataset"] = "eval.dataset"
    name: str
    version: str
    cases: int
    created: bool
    skipped: int


def _queues(request: Request) -> LabelQueues:
    db = runtime(request).db
    assert db is not None
    return LabelQueues(db)


async def _readable(
    request: Request, queue_id: str, roles: tuple[str, ...] = READ
) -> tuple[LabelQueues, Queue, Caller]:
    """The queue, if the caller (with one of ``roles``) may read and label it (its creator,
    or ``eval`` / ``observer`` in its project); another project's queue is a 404."""
    caller = await authenticate(request, roles)
    everyone = caller.key.has_scope(OBSERVER) or caller.key.has_scope(EVAL)
    queues = _queues(request)
    queue = await queues.queue(queue_id)
    not_found_outside(caller, queue.project_id, f"eval queue {queue_id!r}")
    if not everyone and queue.key_id != caller.key_id:
        raise PermissionDeniedError(
            f"Eval queue {queue_id} was created by another API key; using it needs the "
            f"'{EVAL}' or '{OBSERVER}' role.",
            code="insufficient_scope",
        )
    return queues, queue, caller


def _labeller(caller: Caller) -> tuple[str, str | None]:
    return caller.key_id or "admin", getattr(caller.key, "name", None)


@router.post(
    "",
    **operation(scope=READ, body=CreateQueue, reply=QueueReply, errors=[400, 404]),
)
async def create_queue(request: Request) -> JSONBytes:
    """A queue of an eval run's outputs (``run_id``; the run's project) or of the
    project's stored chat traces (``traces``: the ``GET /v1/traces`` filters; needs
    ``observer`` or ``eval``)."""
    caller, everyone = await _reader(request)
    body = parse_body(CreateQueue, await read_json(request))
    if (body.run_id is None) == (body.traces is None):
        raise InvalidRequestError("give run_id or traces (one of them)", param="run_id")
    scale = None if body.scale is None else parse_scale(body.scale)
    queues = _queues(request)
    if body.run_id is not None:
        _check_owner(await queues.evals.run(body.run_id), caller, everyone, "reading")
        queue = await queues.from_run(
            body.run_id,
            name=body.name,
            candidate=body.candidate,
            scale=scale,
            limit=body.limit,
            instructions=body.instructions,
            key_id=caller.key_id,
        )
        return JSONBytes(queue.to_dict())
    if not everyone:
        caller = await authenticate(request, (EVAL, OBSERVER))  # the 403 naming the roles
    assert body.traces is not None
    filters = body.traces
    if filters.score is not None and len(filters.score) > 100:
        raise InvalidRequestError("score names are at most 100 characters", param="score")
    selection = TraceSelection(
        query=chat_traces(
            since=filters.since,
            until=filters.until,
            model=filters.model,
            status=filters.status,
            key_id=filters.key_id,
            text=filters.q,
        ),
        limit=body.limit,
        score=filters.score,
        below=filters.below,
    )
    queue = await queues.from_traces(
        selection,
        name=body.name,
        scale=scale,
        instructions=body.instructions,
        key_id=caller.key_id,
        filters=filters.model_dump(exclude_none=True),
        project_id=caller.project_id,
    )
    return JSONBytes(queue.to_dict())


@router.get("", **operation(scope=READ, reply=QueueList))
async def list_queues(
    request: Request, limit: int = Query(default=100, ge=1, le=1000)
) -> JSONBytes:
    """The project's queues with their progress, newest first: the caller's own, or every
    key's with ``eval`` or ``observer``."""
    caller, everyone = await _reader(request)
    found = await _queues(request).queues(
        key_id=None if everyone else (caller.key_id or ""),
        limit=limit,
        project_id=project_filter(caller),
    )
    return JSONBytes({"object": "list", "data": [q.to_dict() for q in found]})


@router.get(
    "/{queue_id}",
    **operation(scope=READ, reply=QueueReply, errors=[400, 404]),
)
async def get_queue(request: Request, queue_id: str = QueueId) -> JSONBytes:
    """The queue's progress and, for a queue made from a run with a rubric judge, the
    judge-human agreement so far."""
    queues, queue, _ = await _readable(request, queue_id)
    agreement = [a.to_dict() for a in await queues.agreement(queue_id)]
    return JSONBytes({**queue.to_dict(), "agreement": agreement})


@router.get(
    "/{queue_id}/next",
    **operation(scope=READ, reply=NextReply, errors=[400, 404]),
)
async def next_item(
    request: Request,
    queue_id: str = QueueId,
    claim_minutes: float = Query(
        default=10, gt=0, le=1440, description="Skip items others claimed this recently"
    ),
) -> JSONBytes:
    """Claim the next item to label for the calling key: the one it holds, else the first
    unlabelled item nobody claimed in the last ``claim_minutes``. ``item`` is null when
    nothing is left."""
    queues, _, caller = await _readable(request, queue_id)
    labeller, _name = _labeller(caller)
    item = await queues.next_item(queue_id, labeller, claim_seconds=claim_minutes * 60)
    queue = await queues.queue(queue_id)
    return JSONBytes(
        {
            "object": "eval.queue_next",
            "item": None if item is None else item.to_dict(),
            "progress": queue.to_dict()["progress"],
        }
    )


@router.get(
    "/{queue_id}/items",
    **operation(scope=READ, reply=ItemList, errors=[400, 404]),
)
async def list_items(
    request: Request,
    queue_id: str = QueueId,
    labelled: bool | None = Query(default=None, description="Only labelled (or unlabelled)"),
    after: int = Query(default=0, ge=0, description="Items after this item id"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> JSONBytes:
    """Items in queue order with their labels."""
    queues, _, _ = await _readable(request, queue_id)
    items = await queues.items(queue_id, labelled=labelled, after=after, limit=limit + 1)
    return JSONBytes(
        {
            "object": "list",
            "data": [item.to_dict() for item in items[:limit]],
            "has_more": len(items) > limit,
        }
    )


@router.post(
    "/{queue_id}/items/{item_id}/label",
    **operation(scope=READ, body=LabelItem, reply=ItemReply, errors=[400, 404]),
)
async def label_item(request: Request, queue_id: str = QueueId, item_id: int = ItemId) -> JSONBytes:
    """Label an item (labelling it again replaces the label): ``score`` on the queue's
    range (``passed`` follows from its ``pass``), or ``passed`` on a pass/fail queue; a
    corrected answer in ``reference``."""
    queues, _, caller = await _readable(request, queue_id)
    body = parse_body(LabelItem, await read_json(request))
    labeller, name = _labeller(caller)
    item = await queues.label(
        queue_id,
        item_id,
        score=body.score,
        passed=body.passed,
        reference=body.reference,
        comment=body.comment,
        labeller=labeller,
        labeller_name=name,
    )
    return JSONBytes(item.to_dict())


@router.get(
    "/{queue_id}/agreement",
    **operation(scope=READ, reply=AgreementReply, errors=[400, 404]),
)
async def queue_agreement(request: Request, queue_id: str = QueueId) -> JSONBytes:
    """Per rubric-judge metric of the source run: n, exact agreement, pass agreement,
    Cohen's kappa on pass/fail, Spearman's rho, mean absolute difference (0-1 scale)."""
    queues, queue, _ = await _readable(request, queue_id)
    agreement = await queues.agreement(queue_id)
    return JSONBytes(
        {
            "object": "eval.agreement",
            "queue_id": queue_id,
            "labelled": queue.labelled,
            "data": [a.to_dict() for a in agreement],
        }
    )


@router.post(
    "/{queue_id}/export",
    **operation(scope=RUN, body=ExportQueue, reply=ExportReply, errors=[400, 404]),
)
async def export_queue(request: Request, queue_id: str = QueueId) -> JSONBytes:
    """Store the labels as a new dataset version: ``expected`` is the corrected answer,
    or the output when it passed; the human label is in each case's ``metadata.human``.
    Storing a dataset needs ``eval`` or ``inference``, as uploading one does."""
    queues, _, _ = await _readable(request, queue_id, RUN)
    body = parse_body(ExportQueue, await read_json(request))
    dataset, created, skipped = await queues.export(queue_id, body.dataset)
    return JSONBytes(
        {
            "object": "eval.dataset",
            "name": dataset.name,
            "version": dataset.version,
            "cases": len(dataset.cases),
            "created": created,
            "skipped": skipped,
        }
    )
