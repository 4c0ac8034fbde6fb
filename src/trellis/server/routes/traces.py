"""Read recorded traces (observer or admin keys): filtered pages, or one with its span tree.

Scores are the exception to observer-only: ``POST /v1/traces/{id}/scores`` also takes an
``inference`` key, so the application that made a request can send its user's feedback
with the key it already holds; such a key may score only traces made with that key.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from trellis.access.keys import INFERENCE, OBSERVER
from trellis.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from trellis.guard.redact import redact
from trellis.observe.query import TraceQuery, parse_time
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

router = APIRouter(prefix="/v1/traces", tags=["traces"])


@router.get("", **operation(scope=OBSERVER))
async def list_traces(
    request: Request,
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, description="next_cursor of the previous page"),
    since: str | None = Query(default=None, description="1h (ago), Unix seconds or ISO 8601"),
    until: str | None = Query(default=None, description="1h (ago), Unix seconds or ISO 8601"),
    model: str | None = None,
    key_id: str | None = None,
    status: str | None = Query(default=None, description="ok or error"),
    kind: str | None = Query(default=None, description="chat, embeddings, ..."),
    min_latency_ms: float | None = Query(default=None, ge=0),
    has_error: bool | None = Query(default=None, description="the trace or any span failed"),
    q: str | None = Query(default=None, description="text in the prompt, response or error"),
    guard: str | None = Query(
        default=None,
        description="only traces a guard acted on: pii, output, input (prompt injection) or any",
    ),
) -> JSONBytes:
    caller = await authenticate(request, OBSERVER)
    store = runtime(request).traces
    assert store is not None
    query = TraceQuery(
        project_id=project_filter(caller),
        since_ns=None if since is None else parse_time(since, "since"),
        until_ns=None if until is None else parse_time(until, "until"),
        model=model,
        key_id=key_id,
        status=status,
        kind=kind,
        min_latency_ms=min_latency_ms,
        has_error=has_error,
        text=q,
        guard=guard,
    )
    page = await store.page(query, limit=limit, cursor=cursor)
    return JSONBytes(
        {
            "object": "list",
            "data": page.rows,
            "has_more": page.next_cursor is not None,
            "next_cursor": page.next_cursor,
        }
    )


@router.get("/{trace_id}", **operation(scope=OBSERVER, errors=[404]))
async def get_trace(trace_id: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, OBSERVER)
    store = runtime(request).traces
    assert store is not None
    trace = await store.get(trace_id)
    if trace is None:
        raise NotFoundError(f"No trace with id `{trace_id}`.")
    not_found_outside(caller, trace.get("project_id"), f"trace with id `{trace_id}`")
    return JSONBytes(trace)


class ScoreIn(BaseModel):
    """A score for a trace. ``source`` is ``user`` or ``eval``: ``api`` is reserved for
    in-process ``trellis.observe.api`` scores."""

    name: str = Field(min_length=1, max_length=200)
    value: float = Field(allow_inf_nan=False, strict=True)
    comment: str | None = Field(default=None, max_length=10_000)
    source: Literal["user", "eval"] = "user"


@router.post(
    "/{trace_id}/scores",
    status_code=201,
    **operation(scope=(OBSERVER, INFERENCE), body=ScoreIn, errors=[404]),
)
async def add_score(trace_id: str, request: Request) -> JSONBytes:
    """Attach a score (user feedback, an external evaluator's result) to a stored trace.
    An `inference` key may score only the traces of its own requests."""
    try:
        caller = await authenticate(request, OBSERVER)
        own_traces_only = False
    except PermissionDeniedError:
        caller = await authenticate(request, INFERENCE)
        own_traces_only = True
    rt = runtime(request)
    store = rt.traces
    assert store is not None
    score = parse_body(ScoreIn, await read_json(request))
    name, comment = score.name.strip(), score.comment
    if not name:
        raise InvalidRequestError("a score needs a name of 1 to 200 characters", param="name")
    exists, key_id, project_id = await store.owner(trace_id)
    if not exists or (own_traces_only and key_id != caller.key_id):
        # Someone else's trace answers like a missing one: an app key learns nothing.
        raise NotFoundError(f"No trace with id `{trace_id}`.")
    not_found_outside(caller, project_id, f"trace with id `{trace_id}`")
    bodies = rt.settings.tracing.bodies
    if bodies == "none":
        comment = None
    elif comment is not None and bodies == "redacted":
        comment = redact(comment)
    row = await store.add_score(
        trace_id, name, score.value, comment, score.source, project_id=project_id or "default"
    )
    return JSONBytes({"object": "trace.score", **row}, status_code=201)
