"""Workflows over HTTP: list the registered ones, run them (waiting or streaming step events),
and inspect, resume and cancel runs.

Running needs the ``inference`` scope and records the starting key on the run. A key reads,
resumes and cancels the runs it started; reading other keys' runs needs ``observer`` (an
``admin`` key may do anything in its project). Runs belong to the starting key's project:
another project's run answers 404. The service behind these routes is ``trellis.workflows``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from trellis.access.keys import ADMIN, INFERENCE, OBSERVER
from trellis.errors import PermissionDeniedError, TrellisError
from trellis.inference.call import Caller
from trellis.orchestration.records import RunRecord, RunStatus
from trellis.orchestration.service import Workflows
from trellis.orchestration.views import run_dict, step_dict, workflow_dict
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

router = APIRouter(prefix="/v1", tags=["workflows"])

WorkflowName = Path(min_length=1, max_length=200)
RunId = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")

#: How often a streaming run's checkpoint log is read for new steps (there is no event bus:
#: the log in the database is the one source of truth, also for runs another replica drives).
POLL_SECONDS = 0.05


# --- contracts -----------------------------------------------------------------------------


class StartRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(description="The run's input: the workflow state's fields")
    stream: bool = Field(
        default=False, description="Send each completed step as a server-sent event"
    )
    session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:@-]+$",
        description="Make the run a turn of this conversation (the key's own, as "
        "`trellis.session_id` on chat completions): `llm(session=True)` steps see its "
        "earlier turns, and the run's question and answer are added to it",
    )


class ResumeRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Any = Field(description="What the waiting human step asked for (`waiting_for`)")


class StepReply(BaseModel):
    seq: int
    step: str
    kind: str
    status: str
    attempts: int
    branch: str
    next_step: str | None
    output: Any = None
    error: dict[str, Any] | None = None
    started_at: float
    duration_ms: float
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None


class RunUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    cost: float


class RunReply(BaseModel):
    object: Literal["workflow.run"] = "workflow.run"
    id: str
    workflow: str
    workflow_version: str
    status: Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
    input: dict[str, Any]
    state: dict[str, Any]
    output: Any = None
    error: dict[str, Any] | None = None
    waiting_for: dict[str, Any] | None = None
    next_step: str | None = None
    trace_id: str
    key_id: str | None = None
    session_id: str | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None
    recoveries: int
    usage: RunUsage
    steps: list[StepReply] | None = Field(
        default=None, description="The checkpoint log (on `GET /v1/runs/{id}`)"
    )


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunReply]


class RunEvent(BaseModel):
    """One streamed event: ``step`` per completed step, then one ``run`` with the result."""

    type: Literal["step", "run"]
    run_id: str
    step: StepReply | None = None
    run: RunReply | None = None


class WorkflowReply(BaseModel):
    object: Literal["workflow"] = "workflow"
    name: str
    version: str
    first_step: str
    steps: list[dict[str, str]]
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    mermaid: str


class WorkflowList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WorkflowReply]


# --- access --------------------------------------------------------------------------------


def _workflows(request: Request) -> Workflows:
    return runtime(request).workflows


async def _reader(request: Request) -> tuple[Caller, bool]:
    """The caller, and whether it reads every key's runs (``observer`` or ``admin``)."""
    try:
        return await authenticate(request, OBSERVER), True
    except PermissionDeniedError:
        return await authenticate(request, INFERENCE), False


def _check_owner(run: RunRecord, caller: Caller, allowed: bool, doing: str) -> None:
    not_found_outside(caller, run.project_id, f"run with id `{run.id}`")
    if not allowed and run.key_id != caller.key_id:
        raise PermissionDeniedError(
            f"Run {run.id} was started by another API key; {doing} it needs the "
            f"'{OBSERVER if doing == 'reading' else ADMIN}' scope.",
            code="insufficient_scope",
        )


async def _own_run(request: Request, run_id: str) -> tuple[Workflows, RunRecord]:
    """A run the caller (``inference``) may change: its own, or any for an admin key."""
    caller = await authenticate(request, INFERENCE)
    workflows = _workflows(request)
    run = await workflows.get(run_id)
    _check_owner(run, caller, caller.key is not None and caller.key.has_scope(ADMIN), "changing")
    return workflows, run


# --- workflows -----------------------------------------------------------------------------


@router.get("/workflows", **operation(scope=(INFERENCE, OBSERVER), reply=WorkflowList))
async def list_workflows(request: Request) -> JSONBytes:
    """The registered workflows: input and output JSON schemas and the step graph (Mermaid)."""
    await _reader(request)
    flows = _workflows(request).flows
    return JSONBytes({"object": "list", "data": [workflow_dict(f) for f in flows]})


@router.post(
    "/workflows/{name}/runs",
    **operation(scope=INFERENCE, body=StartRun, reply=RunReply, errors=[404, 429], events=RunEvent),
)
async def start_run(request: Request, name: str = WorkflowName) -> Any:
    """Start a run and wait until it finishes or waits for input; with ``"stream": true``
    each completed step is an event, then the run. A client that goes away does not stop
    the run: read it with ``GET /v1/runs/{id}``. Beyond the replica's
    ``max_concurrent_runs`` the run is ``queued`` first (the wait includes the queue);
    429 with ``Retry-After`` when ``max_queued_runs`` are queued already."""
    caller = await authenticate(request, INFERENCE)
    body = parse_body(StartRun, await read_json(request))
    workflows = _workflows(request)
    run_id = await workflows.start(
        name,
        body.input,
        key_id=caller.key_id,
        session_id=body.session_id,
        project_id=caller.project_id,
    )
    if body.stream:
        return StreamingResponse(
            _events(workflows, run_id),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-trellis-run-id": run_id},
        )
    run = await workflows.wait(run_id)
    return JSONBytes(run_dict(run), headers={"x-trellis-trace-id": run.trace_id})


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def _events(workflows: Workflows, run_id: str) -> AsyncIterator[bytes]:
    """Step events read from the checkpoint log as they are committed, then the run."""
    waiter = asyncio.ensure_future(workflows.wait(run_id))
    sent: set[tuple[int, str, str]] = set()
    try:
        while True:
            finished = waiter.done()
            for step in await workflows.store.steps(run_id):
                key = (step.seq, step.branch, step.step)
                if key not in sent:
                    sent.add(key)
                    yield _sse({"type": "step", "run_id": run_id, "step": step_dict(step)})
            if finished:
                break
            await asyncio.wait({waiter}, timeout=POLL_SECONDS)
        try:
            run = waiter.result()
        except Exception:  # the run stopped on a bug or a lost database: show where it is
            run = await workflows.get(run_id)
        yield _sse({"type": "run", "run_id": run_id, "run": run_dict(run)})
        yield b"data: [DONE]\n\n"
    except TrellisError as exc:
        yield _sse(exc.to_body())
    finally:
        # wait() shields the run: dropping the waiter leaves the run going.
        waiter.cancel()


# --- runs ----------------------------------------------------------------------------------


@router.get("/runs", **operation(scope=(INFERENCE, OBSERVER), reply=RunList))
async def list_runs(
    request: Request,
    workflow: str | None = Query(default=None, min_length=1, max_length=200),
    status: RunStatus | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> JSONBytes:
    """Runs, newest first: the caller's own, or every key's with ``observer``."""
    caller, everyone = await _reader(request)
    runs = await _workflows(request).list(
        workflow=workflow,
        status=status.value if status is not None else None,
        key_id=None if everyone else (caller.key_id or ""),
        limit=limit,
        project_id=project_filter(caller),
    )
    return JSONBytes({"object": "list", "data": [run_dict(r) for r in runs]})


@router.get(
    "/runs/{run_id}", **operation(scope=(INFERENCE, OBSERVER), reply=RunReply, errors=[400, 404])
)
async def get_run(request: Request, run_id: str = RunId) -> JSONBytes:
    """The run with its state and checkpoint log (``steps``)."""
    caller, everyone = await _reader(request)
    workflows = _workflows(request)
    run = await workflows.get(run_id)
    _check_owner(run, caller, everyone, "reading")
    return JSONBytes(run_dict(run, await workflows.steps(run_id)))


@router.post(
    "/runs/{run_id}/resume",
    **operation(scope=INFERENCE, body=ResumeRun, reply=RunReply, errors=[404, 409]),
)
async def resume_run(request: Request, run_id: str = RunId) -> JSONBytes:
    """Give a waiting run the input its human step asked for, and wait as a start does.
    409 when the run is not waiting; 400 when the input does not validate."""
    workflows, run = await _own_run(request, run_id)
    body = parse_body(ResumeRun, await read_json(request))
    resumed = await workflows.resume(run.id, body.input)
    return JSONBytes(run_dict(resumed), headers={"x-trellis-trace-id": resumed.trace_id})


@router.post(
    "/runs/{run_id}/cancel", **operation(scope=INFERENCE, reply=RunReply, errors=[400, 404])
)
async def cancel_run(request: Request, run_id: str = RunId) -> JSONBytes:
    """Cancel a run: at once when it waits or this replica drives it, else at its owner's
    next step boundary (the answer's ``status`` says which). A finished run stays as it is."""
    workflows, run = await _own_run(request, run_id)
    return JSONBytes(run_dict(await workflows.cancel(run.id)))
