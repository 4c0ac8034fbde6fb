"""Evals over HTTP: upload datasets, start runs in the background, read their status and
reports, resume them, and compare two runs.

Datasets and runs belong to a project (another project's answer 404). Uploading a dataset
and starting or resuming runs needs ``eval`` or ``inference`` (a run calls models on the
caller's behalf); an ``inference`` key reads the runs it started, while ``eval`` and
``observer`` read every run of the project (``admin`` may do anything there). The service
behind these routes is ``trellis.evals.service.EvalService``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from trellis.access.keys import ADMIN, EVAL, OBSERVER
from trellis.access.policy import EVALS_READ, EVALS_RUN
from trellis.access.projects import DEFAULT_PROJECT
from trellis.errors import NotFoundError, PermissionDeniedError
from trellis.evals.compare import compare_reports, parse_threshold
from trellis.evals.datasets import NAME_PATTERN, parse_dataset
from trellis.evals.html import render_run
from trellis.evals.scheduler import EvalScheduler
from trellis.evals.service import EvalService
from trellis.evals.store import RunRecord
from trellis.inference.call import Caller
from trellis.runtime import Trellis
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
from trellis.settings import SCHEDULE_NAME_PATTERN

router = APIRouter(prefix="/v1/evals", tags=["evals"])

#: Start, upload, resume: the roles that run evals.
RUN = EVALS_RUN
#: Read: also observers (who read every run of the project, as eval keys do).
READ = EVALS_READ

RunId = Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")


class UploadDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="The dataset's name")
    format: Literal["jsonl", "csv"] = "jsonl"
    content: str = Field(min_length=1, description="The file's text: one case per line")


class DatasetReply(BaseModel):
    object: Literal["eval.dataset"] = "eval.dataset"
    name: str
    version: str
    cases: int
    created: bool | None = None
    created_at: float | None = None


class DatasetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DatasetReply]


class StartEvalRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suite: dict[str, Any] = Field(
        description="The suite as in SUITE.yaml; `dataset` names a stored dataset (name@version)"
    )


class EvalRunReply(BaseModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    suite: dict[str, Any]
    dataset: str
    status: Literal["running", "succeeded", "failed"]
    total: int
    done: int
    error: str | None = None
    key_id: str | None = None
    created_at: float
    updated_at: float
    schedule: str | None = Field(default=None, description="The schedule that ran it")
    report: dict[str, Any] | None = Field(
        default=None, description="The JSON report (on `GET /v1/evals/runs/{id}`)"
    )


class EvalRunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvalRunReply]


class CompareRuns(BaseModel):
    model_config = ConfigDict(extra="forbid")

    baseline: str = Field(min_length=1, max_length=32, description="The baseline run's id")
    candidate: str = Field(min_length=1, max_length=32, description="The candidate run's id")
    baseline_candidate: str | None = None
    candidate_candidate: str | None = None
    fail_on: list[str] = Field(default_factory=list, max_length=50)
    resamples: int = Field(default=2000, ge=100, le=20000)
    seed: int = 0


class ComparisonReply(BaseModel):
    object: Literal["eval.comparison"] = "eval.comparison"
    baseline: str
    candidate: str
    paired_cases: int
    only_baseline: int
    only_candidate: int
    bootstrap: dict[str, Any]
    failed: bool
    deltas: list[dict[str, Any]]
    pairwise: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Each report's pairwise verdicts: counts, rates, win-rate 95% CI",
    )
    markdown: str


class ScheduleRunReply(BaseModel):
    object: Literal["eval.schedule_run"] = "eval.schedule_run"
    id: str
    schedule: str
    due_at: float = Field(description="The cron time it ran for (the start, run by hand)")
    trigger: Literal["cron", "missed", "manual"]
    status: Literal["running", "passed", "regressed", "failed"]
    run_id: str | None = Field(description="The eval run (GET /v1/evals/runs/{id})")
    baseline_run_id: str | None = Field(description="The last passing run it was compared with")
    reason: str | None
    regressions: list[dict[str, Any]] = Field(
        description="Quantities past a fail_on threshold: candidate, name, baseline, value, "
        "delta, ci95, fail_on"
    )
    comparison: dict[str, Any] | None = Field(
        description="Per candidate, the comparison with the baseline (as POST /v1/evals/compare)"
    )
    claimed_at: float
    finished_at: float | None


class ScheduleRunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ScheduleRunReply]


class ScheduleReply(BaseModel):
    object: Literal["eval.schedule"] = "eval.schedule"
    name: str
    suite: str
    cron: str
    timezone: str
    fail_on: list[str]
    enabled: bool
    next_due_at: float | None = Field(description="POSIX seconds; null when disabled")
    last: ScheduleRunReply | None = Field(description="The latest finished run")
    baseline_run_id: str | None


class ScheduleList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ScheduleReply]


ScheduleName = Path(pattern=SCHEDULE_NAME_PATTERN)


# --- access ------------------------------------------------------------------------


def service_of(app: Any, trellis: Trellis) -> EvalService:
    """The app's eval service, built on first use over the runtime's gateway and database
    (the app's lifespan closes it)."""
    service = getattr(app.state, "evals", None)
    if service is None:
        assert trellis.gateway is not None and trellis.db is not None
        service = EvalService(
            trellis.gateway, trellis.db, embedder=trellis.minilm, workflows=trellis.workflows
        )
        app.state.evals = service
    return service  # type: ignore[no-any-return]


def scheduler_of(app: Any, trellis: Trellis) -> EvalScheduler:
    """The eval service's scheduler of ``evals.schedules`` (the lifespan starts it when
    ``evals.scheduler`` is on; runs by hand work either way)."""
    service = service_of(app, trellis)
    if service.scheduler is None:
        settings = trellis.settings
        service.scheduler = EvalScheduler(
            service,
            settings.evals.schedules,
            alerts=trellis.alerts if settings.alerts.enabled else None,
            poll_seconds=settings.evals.poll_seconds,
        )
    return service.scheduler


def _service(request: Request) -> EvalService:
    return service_of(request.app, runtime(request))


async def _reader(request: Request) -> tuple[Caller, bool]:
    """The caller, and whether it reads every key's runs of its project (``observer``,
    ``eval`` or ``admin``)."""
    caller = await authenticate(request, READ)
    return caller, caller.key.has_scope(OBSERVER) or caller.key.has_scope(EVAL)


def _check_owner(run: RunRecord, caller: Caller, allowed: bool, doing: str) -> None:
    not_found_outside(caller, run.project_id, f"eval run {run.id!r}")
    if not allowed and run.key_id != caller.key_id:
        raise PermissionDeniedError(
            f"Eval run {run.id} was started by another API key; {doing} it needs the "
            f"'{OBSERVER if doing == 'reading' else ADMIN}' scope.",
            code="insufficient_scope",
        )


# --- datasets ------------------------------------------------------------------------


@router.post(
    "/datasets", **operation(scope=RUN, body=UploadDataset, reply=DatasetReply, errors=[400])
)
async def upload_dataset(request: Request) -> JSONBytes:
    """Validate and store a dataset version (its content hash); storing the same content
    again answers ``created: false``. A bad line is a 400 naming it."""
    caller = await authenticate(request, RUN)
    body = parse_body(UploadDataset, await read_json(request))
    dataset = parse_dataset(body.content, fmt=body.format, name=body.name, source=body.name)
    created = await _service(request).store.save_dataset(dataset, caller.project_id)
    return JSONBytes(
        {
            "object": "eval.dataset",
            "name": dataset.name,
            "version": dataset.version,
            "cases": len(dataset.cases),
            "created": created,
        }
    )


@router.get("/datasets", **operation(scope=READ, reply=DatasetList))
async def list_datasets(request: Request) -> JSONBytes:
    """The project's stored datasets, every version."""
    caller, _ = await _reader(request)
    infos = await _service(request).store.datasets(project_filter(caller))
    return JSONBytes(
        {
            "object": "list",
            "data": [
                {
                    "object": "eval.dataset",
                    "name": i.name,
                    "version": i.version,
                    "cases": i.cases,
                    "created_at": i.created_at,
                }
                for i in infos
            ],
        }
    )


# --- runs ------------------------------------------------------------------------------


@router.post(
    "/runs",
    **operation(scope=RUN, body=StartEvalRun, reply=EvalRunReply, errors=[400, 404]),
)
async def start_eval_run(request: Request) -> JSONBytes:
    """Start a run in the background; poll ``GET /v1/evals/runs/{id}`` for its progress
    and report. A suite that does not validate is a 400; an unknown dataset a 404."""
    caller = await authenticate(request, RUN)
    body = parse_body(StartEvalRun, await read_json(request))
    record = await _service(request).start(
        body.suite, key_id=caller.key_id, project_id=caller.project_id
    )
    return JSONBytes(record.to_dict())


@router.get("/runs", **operation(scope=READ, reply=EvalRunList))
async def list_eval_runs(
    request: Request,
    status: Literal["running", "succeeded", "failed"] | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> JSONBytes:
    """Runs, newest first: the caller's own, or every key's with ``observer``."""
    caller, everyone = await _reader(request)
    runs = await _service(request).store.runs(
        status=status,
        key_id=None if everyone else (caller.key_id or ""),
        limit=limit,
        project_id=project_filter(caller),
    )
    return JSONBytes({"object": "list", "data": [r.to_dict() for r in runs]})


@router.get(
    "/runs/{run_id}",
    **operation(scope=READ, reply=EvalRunReply, errors=[400, 404]),
)
async def get_eval_run(request: Request, run_id: str = RunId) -> JSONBytes:
    """The run's status and progress, and its report so far (``report``)."""
    caller, everyone = await _reader(request)
    service = _service(request)
    record = await service.store.run(run_id)
    _check_owner(record, caller, everyone, "reading")
    return JSONBytes({**record.to_dict(), "report": await service.report(run_id)})


#: The report is model text shown in a browser: no script, no fetch, only its inline CSS.
_REPORT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"


@router.get(
    "/runs/{run_id}/report.html",
    response_class=HTMLResponse,
    **operation(scope=READ, errors=[400, 404]),
)
async def get_eval_run_html(request: Request, run_id: str = RunId) -> HTMLResponse:
    """The run's self-contained HTML report (as ``trellis eval run --html``): charts,
    summary and cases side by side; readable by whoever may read the run."""
    caller, everyone = await _reader(request)
    service = _service(request)
    record = await service.store.run(run_id)
    _check_owner(record, caller, everyone, "reading")
    report = await service.report(run_id)
    dataset = await service.store.dataset(record.dataset, record.project_id)
    return HTMLResponse(
        render_run(report, dataset.cases),
        headers={"Content-Security-Policy": _REPORT_POLICY, "X-Content-Type-Options": "nosniff"},
    )


@router.post(
    "/runs/{run_id}/resume",
    **operation(scope=RUN, reply=EvalRunReply, errors=[400, 404, 409]),
)
async def resume_eval_run(request: Request, run_id: str = RunId) -> JSONBytes:
    """Continue a run that stopped (a server restart, a failure): finished cases are kept.
    409 while this server is running it."""
    caller = await authenticate(request, RUN)
    service = _service(request)
    record = await service.store.run(run_id)
    _check_owner(record, caller, caller.key.has_scope(ADMIN), "resuming")
    return JSONBytes((await service.resume(run_id)).to_dict())


@router.post(
    "/compare",
    **operation(scope=READ, body=CompareRuns, reply=ComparisonReply, errors=[400, 404]),
)
async def compare_eval_runs(request: Request) -> JSONBytes:
    """Baseline vs candidate run: paired deltas with bootstrap CIs, ``failed`` when a
    ``fail_on`` threshold (``rougeL:-0.02``, ``latency_p95:+20%``) is passed."""
    caller, everyone = await _reader(request)
    body = parse_body(CompareRuns, await read_json(request))
    thresholds = [parse_threshold(text) for text in body.fail_on]
    service = _service(request)
    reports = []
    for run_id in (body.baseline, body.candidate):
        _check_owner(await service.store.run(run_id), caller, everyone, "reading")
        reports.append(await service.report(run_id))
    comparison = compare_reports(
        reports[0],
        reports[1],
        thresholds=thresholds,
        baseline_candidate=body.baseline_candidate,
        candidate_candidate=body.candidate_candidate,
        resamples=body.resamples,
        seed=body.seed,
    )
    return JSONBytes(
        {"object": "eval.comparison", **comparison.to_dict(), "markdown": comparison.markdown()}
    )


# --- schedules ---------------------------------------------------------------------------
#
# Schedules are the operator's (``evals.schedules`` in the settings) and their eval runs
# live in the default project: keys of the default project (and the built-in admin) see
# them; another project's keys get an empty list and 404s, as for anything not theirs.

#: Read the schedules and their runs.
SCHEDULE_READ = (EVAL, OBSERVER)


def _sees_schedules(caller: Caller) -> bool:
    return caller.all_projects or caller.project_id == DEFAULT_PROJECT


def _schedule_in_reach(caller: Caller, name: str) -> None:
    if not _sees_schedules(caller):
        raise NotFoundError(f"No eval schedule {name!r}.", param="name")


@router.get("/schedules", **operation(scope=SCHEDULE_READ, reply=ScheduleList))
async def list_schedules(request: Request) -> JSONBytes:
    """The schedules of ``evals.schedules``: next due time, last outcome, baseline run
    (empty for keys of projects other than ``default``)."""
    caller = await authenticate(request, SCHEDULE_READ)
    if not _sees_schedules(caller):
        return JSONBytes({"object": "list", "data": []})
    scheduler = scheduler_of(request.app, runtime(request))
    return JSONBytes({"object": "list", "data": await scheduler.describe()})


@router.post(
    "/schedules/{name}/run",
    **operation(scope=ADMIN, reply=ScheduleRunReply, errors=[400, 404, 409]),
)
async def run_schedule(request: Request, name: str = ScheduleName) -> JSONBytes:
    """Run a schedule now, in the background (as at a due time: compared with its baseline,
    alerting on a regression); poll ``GET /v1/evals/schedules/{name}/runs``. The built-in
    admin or an admin of the default project."""
    _schedule_in_reach(await authenticate(request, ADMIN), name)
    scheduler = scheduler_of(request.app, runtime(request))
    claim = await scheduler.run_now(name)
    return JSONBytes(claim.to_dict())


@router.get(
    "/schedules/{name}/runs",
    **operation(scope=SCHEDULE_READ, reply=ScheduleRunList, errors=[400, 404]),
)
async def list_schedule_runs(
    request: Request,
    name: str = ScheduleName,
    limit: int = Query(default=50, ge=1, le=1000),
) -> JSONBytes:
    """The schedule's runs, latest due time first, with their outcomes."""
    _schedule_in_reach(await authenticate(request, SCHEDULE_READ), name)
    scheduler = scheduler_of(request.app, runtime(request))
    runs = await scheduler.history(name, limit=limit)
    return JSONBytes({"object": "list", "data": [run.to_dict() for run in runs]})
