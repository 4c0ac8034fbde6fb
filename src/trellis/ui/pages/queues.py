"""Human labelling queues, under Evals: the queues with their progress, a queue made from
an eval run, the labelling page, the judge-human agreement, and export to a dataset.

The labelling page claims the next item for the signed-in key (``LabelQueues.next_item``:
the one it holds, else the first nobody labelled or claimed lately), shows its input,
the output and the run's judge verdicts, and takes a score on the queue's scale (1 or 0
on a pass/fail queue), a corrected answer and a comment; saving goes straight to the
next item. The score field has the focus and Enter saves. As over ``/v1/evals/queues``,
a key uses the queues it created; ``observer`` and ``eval`` use every key's, of the
viewer's project only: a queue belongs to the project of the key that created it (queues
made without a key: ``default``), and another project's queue answers 404.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from trellis.access.keys import EVAL, OBSERVER
from trellis.access.projects import DEFAULT_PROJECT
from trellis.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from trellis.evals.labels import LabelQueues, Queue, parse_scale
from trellis.ui.pages.evals import service
from trellis.ui.web import SECURITY_HEADERS, UiRoute, Viewer, render, runtime, viewer

router = APIRouter(route_class=UiRoute)

#: Longest free text a label takes (corrected answer, comment).
MAX_TEXT = 20_000


def _queues(request: Request) -> LabelQueues:
    db = runtime(request).db
    assert db is not None
    return LabelQueues(db)


def _everyone(me: Viewer) -> bool:
    return me.key.has_scope(OBSERVER) or me.key.has_scope(EVAL)


async def _project_of(request: Request, queue: Queue) -> str:
    """The project a queue belongs to: its eval run's, else its creating key's (``default``
    for a queue made without a key or by the built-in admin)."""
    run_id = queue.source.get("run_id")
    if isinstance(run_id, str):
        with contextlib.suppress(NotFoundError):
            return (await service(request).store.run(run_id)).project_id
    keys = runtime(request).keys
    found = None if queue.key_id is None or keys is None else await keys.get(queue.key_id)
    if found is None or found.spans_projects:
        return DEFAULT_PROJECT
    return found.project_id


async def _of_project(request: Request, me: Viewer, found: list[Queue]) -> list[Queue]:
    """The queues of the viewer's project."""
    if me.project is None:
        return found
    return [q for q in found if await _project_of(request, q) == me.project]


async def _readable(request: Request, me: Viewer, queue_id: str) -> tuple[LabelQueues, Queue]:
    queues = _queues(request)
    queue = await queues.queue(queue_id)
    me.outside(await _project_of(request, queue), f"eval queue {queue_id!r}")
    if not _everyone(me) and queue.key_id != me.key.id:
        raise PermissionDeniedError(
            f"Eval queue {queue_id} was created by another API key; using it needs the "
            "'observer' scope."
        )
    return queues, queue


def _text(form: Any, field: str, limit: int = MAX_TEXT) -> str | None:
    value = str(form.get(field) or "").strip()
    if len(value) > limit:
        raise InvalidRequestError(f"{field} is at most {limit} characters", param=field)
    return value or None


def _number(form: Any, field: str) -> float | None:
    value = str(form.get(field) or "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidRequestError(f"{field} must be a number", param=field) from None


async def _list_page(request: Request, me: Viewer, status: int = 200, **extra: Any) -> Response:
    key_id = None if _everyone(me) else me.key.id
    runs = await service(request).store.runs(
        status="succeeded", key_id=key_id, limit=200, project_id=me.project
    )
    found = await _queues(request).queues(key_id=key_id, limit=200)
    context = {
        "title": "Labelling queues",
        "queues": await _of_project(request, me, found),
        "runs": runs,
        "chosen_run": request.query_params.get("run") or "",
        **extra,
    }
    return render(request, "evals/queues.html", context, me=me, status=status)


@router.get("/ui/evals/queues")
async def queues_page(request: Request) -> Response:
    me = await viewer(request, "evals.queues")
    return await _list_page(request, me)


@router.post("/ui/evals/queues")
async def create_queue(request: Request) -> Response:
    """A queue of a run's scored outputs (the run must be the key's own, or ``observer``)."""
    me = await viewer(request, "evals.queues")
    form = await request.form()
    run_id = _text(form, "run_id", 64)
    if run_id is None:
        raise InvalidRequestError("Pick the eval run whose outputs to label.", param="run_id")
    run = await service(request).store.run(run_id)
    me.outside(run.project_id, f"eval run {run_id!r}")
    if not _everyone(me) and run.key_id != me.key.id:
        raise PermissionDeniedError(
            f"Eval run {run.id} was started by another API key; reading it needs the "
            "'observer' scope."
        )
    scale_text = _text(form, "scale", 100)
    limit = _number(form, "limit")
    if limit is not None and (limit < 1 or not limit.is_integer()):
        raise InvalidRequestError("limit must be a whole number of at least 1", param="limit")
    queue = await _queues(request).from_run(
        run.id,
        name=_text(form, "name", 200),
        candidate=_text(form, "candidate", 100),
        scale=None if scale_text is None else parse_scale(scale_text),
        limit=None if limit is None else int(limit),
        instructions=_text(form, "instructions"),
        key_id=me.key.id,
    )
    return RedirectResponse(
        f"/ui/evals/queues/{queue.id}", status_code=303, headers=SECURITY_HEADERS
    )


async def _queue_page(
    request: Request, me: Viewer, queue_id: str, status: int = 200, **extra: Any
) -> Response:
    queues, queue = await _readable(request, me, queue_id)
    labelled = await queues.items(queue_id, labelled=True, limit=50)
    context = {
        "title": f"Queue {queue.name}",
        "queue": queue,
        "agreement": await queues.agreement(queue_id),
        "labelled": labelled,
        **extra,
    }
    return render(request, "evals/queue.html", context, me=me, status=status)


@router.get("/ui/evals/queues/{queue_id}")
async def queue_page(queue_id: str, request: Request) -> Response:
    me = await viewer(request, "evals.queues")
    return await _queue_page(request, me, queue_id)


@router.post("/ui/evals/queues/{queue_id}/export")
async def export_queue(queue_id: str, request: Request) -> Response:
    """The labels as a new version of the named dataset (as ``POST .../export``)."""
    me = await viewer(request, "evals.queues")
    queues, queue = await _readable(request, me, queue_id)
    form = await request.form()
    name = _text(form, "dataset", 100)
    if name is None:
        raise InvalidRequestError("Name the dataset to export to.", param="dataset")
    dataset, created, skipped = await queues.export(
        queue_id, name, await _project_of(request, queue)
    )
    exported = {
        "name": dataset.name,
        "version": dataset.version,
        "cases": len(dataset.cases),
        "created": created,
        "skipped": skipped,
    }
    return await _queue_page(request, me, queue_id, status=201, exported=exported)


@router.get("/ui/evals/queues/{queue_id}/label")
async def label_page(queue_id: str, request: Request) -> Response:
    """Claim the next item for this key and show it with the label form."""
    me = await viewer(request, "evals.queues")
    queues, _ = await _readable(request, me, queue_id)
    item = await queues.next_item(queue_id, me.key.id)
    queue = await queues.queue(queue_id)  # the progress after the claim
    saved = request.query_params.get("saved")
    context = {
        "title": f"Label · {queue.name}",
        "queue": queue,
        "item": item,
        "saved": saved if saved and saved.isdigit() else None,
    }
    return render(request, "evals/label.html", context, me=me)


@router.post("/ui/evals/queues/{queue_id}/items/{item_id}/label")
async def save_label(queue_id: str, item_id: int, request: Request) -> Response:
    """Save the label, then on to the next item."""
    me = await viewer(request, "evals.queues")
    queues, _ = await _readable(request, me, queue_id)
    form = await request.form()
    score = _number(form, "score")
    if score is None:
        raise InvalidRequestError("Give the item a score.", param="score")
    await queues.label(  # checks the score against the scale (pass/fail: 1 or 0)
        queue_id,
        item_id,
        score=score,
        reference=_text(form, "reference"),
        comment=_text(form, "comment", 2000),
        labeller=me.key.id,
        labeller_name=me.key.name,
    )
    return RedirectResponse(
        f"/ui/evals/queues/{queue_id}/label?saved={item_id}",
        status_code=303,
        headers=SECURITY_HEADERS,
    )
