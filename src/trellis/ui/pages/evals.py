"""Evals: runs with their progress, a run's report, two runs compared, and the scheduled
suites (``evals.schedules``: next due, last outcome, baseline; admins run one now).

The reports are the ones ``trellis eval run --html`` and ``trellis eval compare --html``
write (``trellis.evals.html``: charts, summary, per-case word diffs), served as their own
documents under a policy that allows no script, and framed by the run's page. As over
``/v1/evals``, a key reads its project's runs that it started; ``observer`` and ``eval``
read every key's; another project's run answers 404. Scheduled suites are the
deployment's and run in the ``default`` project: they show where that project is read.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from trellis.access.keys import EVAL, OBSERVER
from trellis.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from trellis.evals.compare import compare_reports
from trellis.evals.html import render_compare, render_run
from trellis.evals.scheduler import EvalScheduler
from trellis.evals.service import EvalService
from trellis.evals.store import RunRecord
from trellis.ui.web import UiRoute, Viewer, render, viewer

router = APIRouter(route_class=UiRoute)

#: The reports are model text: no script, no fetch, only their own inline CSS and SVG.
REPORT_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "frame-ancestors 'self'"
)
STATUSES = ("running", "succeeded", "failed")
#: The project scheduled runs are stored in (the scheduler starts them without a key).
SCHEDULE_PROJECT = "default"


def service(request: Request) -> EvalService:
    provider: Callable[[], EvalService] = request.app.state.ui_evals
    return provider()


def scheduler(request: Request) -> EvalScheduler:
    provider: Callable[[], EvalScheduler] = request.app.state.ui_eval_scheduler
    return provider()


def _reads_all(me: Viewer) -> bool:
    return me.key.has_scope(OBSERVER) or me.key.has_scope(EVAL)


def _check_reader(me: Viewer, run: RunRecord) -> None:
    me.outside(run.project_id, f"eval run {run.id!r}")
    if not _reads_all(me) and run.key_id != me.key.id:
        raise PermissionDeniedError(
            f"Eval run {run.id} was started by another API key; reading it needs the "
            "'observer' scope."
        )


async def _runs_page(request: Request, me: Viewer, **extra: object) -> Response:
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidRequestError(f"status must be one of {', '.join(STATUSES)}", param="status")
    runs = await service(request).store.runs(
        status=status,
        key_id=None if _reads_all(me) else me.key.id,
        limit=200,
        project_id=me.project,
    )
    schedules = await scheduler(request).describe() if shows_schedules(me) else []
    context = {
        "title": "Evals",
        "runs": runs,
        "status": status,
        "statuses": STATUSES,
        "schedules": schedules,
        "schedules_shown": shows_schedules(me),
        **extra,
    }
    return render(request, "evals/index.html", context, me=me, status=202 if extra else 200)


def shows_schedules(me: Viewer) -> bool:
    """Whether the viewer reads the scheduled suites (their runs are ``default``'s)."""
    return me.can("evals.schedules") and me.project in (None, SCHEDULE_PROJECT)


@router.get("/ui/evals")
async def runs_page(request: Request) -> Response:
    me = await viewer(request, "evals")
    return await _runs_page(request, me)


@router.post("/ui/evals/schedules/{name}/run")
async def run_schedule(name: str, request: Request) -> Response:
    """Run a schedule now, as at a due time (compared with its baseline, alerting on a
    regression); the page shows it running."""
    me = await viewer(request, "evals.schedules.run")
    if not shows_schedules(me):
        raise NotFoundError(f"No schedule named {name!r}.")
    started = await scheduler(request).run_now(name)
    return await _runs_page(request, me, started=started)


@router.get("/ui/evals/runs/{run_id}")
async def run_page(run_id: str, request: Request) -> Response:
    me = await viewer(request, "evals")
    run = await service(request).store.run(run_id)
    _check_reader(me, run)
    return render(request, "evals/run.html", {"title": f"Eval run {run.id}", "run": run}, me=me)


def _report(body: str) -> HTMLResponse:
    return HTMLResponse(
        body,
        headers={
            "content-security-policy": REPORT_POLICY,
            "x-content-type-options": "nosniff",
            "cache-control": "no-store",
        },
    )


@router.get("/ui/evals/runs/{run_id}/report.html")
async def run_report(run_id: str, request: Request) -> Response:
    me = await viewer(request, "evals")
    evals = service(request)
    run = await evals.store.run(run_id)
    _check_reader(me, run)
    dataset = await evals.store.dataset(run.dataset, run.project_id)
    return _report(render_run(await evals.report(run_id), dataset.cases))


def _pair(request: Request) -> tuple[str, str]:
    baseline = request.query_params.get("baseline") or ""
    candidate = request.query_params.get("candidate") or ""
    if not baseline or not candidate:
        raise InvalidRequestError("Pick a baseline run and a candidate run to compare.")
    if baseline == candidate:
        raise InvalidRequestError("Pick two different runs to compare.", param="candidate")
    return baseline, candidate


@router.get("/ui/evals/compare")
async def compare_page(request: Request) -> Response:
    me = await viewer(request, "evals")
    baseline, candidate = _pair(request)
    evals = service(request)
    runs = [await evals.store.run(baseline), await evals.store.run(candidate)]
    for run in runs:
        _check_reader(me, run)
    context = {"title": "Compare eval runs", "baseline": runs[0], "candidate": runs[1]}
    return render(request, "evals/compare.html", context, me=me)


@router.get("/ui/evals/compare/report.html")
async def compare_report(request: Request) -> Response:
    """``trellis eval compare --html`` of the two runs: deltas with intervals, plots of
    both sides, and each case's output as a word diff of the baseline's."""
    me = await viewer(request, "evals")
    baseline, candidate = _pair(request)
    evals = service(request)
    reports = []
    for run_id in (baseline, candidate):
        _check_reader(me, await evals.store.run(run_id))
        reports.append(await evals.report(run_id))
    comparison = compare_reports(reports[0], reports[1])
    first = await evals.store.run(baseline)
    dataset = await evals.store.dataset(first.dataset, first.project_id)
    return _report(render_compare(reports[0], reports[1], comparison, dataset.cases))
