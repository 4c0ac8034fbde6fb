"""Workflows: the registered graphs, runs, a run's step timeline, resuming a waiting run.

Reading follows ``/v1/runs``: a key reads its project's runs that it started, ``observer``
every key's of the project; a run is resumed by the key that started it, or by an admin
key of its project. Another project's run answers 404.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from trellis.access.keys import ADMIN, OBSERVER
from trellis.errors import InvalidRequestError, PermissionDeniedError
from trellis.orchestration.records import RunRecord, RunStatus
from trellis.orchestration.views import run_dict
from trellis.ui.graph import layout
from trellis.ui.web import UiRoute, Viewer, render, runtime, viewer

router = APIRouter(route_class=UiRoute)


def _check_reader(me: Viewer, run: RunRecord) -> None:
    me.outside(run.project_id, f"run with id `{run.id}`")
    if not me.key.has_scope(OBSERVER) and run.key_id != me.key.id:
        raise PermissionDeniedError(
            f"Run {run.id} was started by another API key; reading it needs the 'observer' scope."
        )


def _may_resume(me: Viewer, run: RunRecord) -> bool:
    return me.can("workflows.resume") and (run.key_id == me.key.id or me.key.has_scope(ADMIN))


@router.get("/ui/workflows")
async def workflows_page(request: Request) -> Response:
    me = await viewer(request, "workflows")
    workflows = runtime(request).workflows
    name = request.query_params.get("workflow") or None
    status = request.query_params.get("status") or None
    statuses = [s.value for s in RunStatus]
    if status is not None and status not in statuses:
        raise InvalidRequestError(f"status must be one of {', '.join(statuses)}", param="status")
    runs = await workflows.list(
        workflow=name,
        status=status,
        key_id=None if me.key.has_scope(OBSERVER) else me.key.id,
        limit=200,
        project_id=me.project,
    )
    context = {
        "title": "Workflows",
        "flows": [(flow, layout(flow)) for flow in workflows.flows],
        "runs": runs,
        "workflow": name,
        "status": status,
        "statuses": statuses,
    }
    return render(request, "workflows/index.html", context, me=me)


def _timeline(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each step with its bar's offset and width, as percentages of the run's span."""
    if not steps:
        return []
    start = min(s["started_at"] for s in steps)
    end = max(s["started_at"] + s["duration_ms"] / 1000 for s in steps)
    total = max(end - start, 1e-6)
    return [
        {
            **s,
            "offset": round(100 * (s["started_at"] - start) / total, 2),
            "width": round(max(100 * s["duration_ms"] / 1000 / total, 0.3), 2),
        }
        for s in steps
    ]


async def _run_page(request: Request, me: Viewer, run_id: str, status: int = 200) -> Response:
    workflows = runtime(request).workflows
    run = await workflows.get(run_id)
    _check_reader(me, run)
    shown = run_dict(run, await workflows.steps(run_id))
    context = {
        "title": f"Run {run.id}",
        "run": shown,
        "steps": _timeline(shown["steps"] or []),
        "may_resume": run.status == RunStatus.WAITING and _may_resume(me, run),
    }
    return render(request, "workflows/run.html", context, me=me, status=status)


@router.get("/ui/workflows/runs/{run_id}")
async def run_page(run_id: str, request: Request) -> Response:
    me = await viewer(request, "workflows")
    return await _run_page(request, me, run_id)


@router.post("/ui/workflows/runs/{run_id}/resume")
async def resume(run_id: str, request: Request) -> Response:
    """Give a waiting run the input its human step asked for (JSON), then show the run."""
    me = await viewer(request, "workflows.resume")
    workflows = runtime(request).workflows
    run = await workflows.get(run_id)
    me.outside(run.project_id, f"run with id `{run.id}`")
    if not _may_resume(me, run):
        raise PermissionDeniedError(
            f"Run {run.id} was started by another API key; resuming it needs the 'admin' scope."
        )
    text = str((await request.form()).get("input") or "").strip()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidRequestError(
            'The input must be JSON (true, 42, "text", {...}).', param="input"
        ) from None
    await workflows.resume(run.id, value)
    return await _run_page(request, me, run_id)
