"""Read recorded traces (observer or admin keys): filtered pages, or one with its span tree."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from trellis.access.keys import OBSERVER
from trellis.errors import NotFoundError
from trellis.observe.query import TraceQuery, parse_time
from trellis.server.edge import authenticate, runtime
from trellis.server.responses import JSONBytes

router = APIRouter(prefix="/v1/traces", tags=["traces"])


@router.get("")
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
) -> JSONBytes:
    await authenticate(request, OBSERVER)
    store = runtime(request).traces
    assert store is not None
    query = TraceQuery(
        since_ns=None if since is None else parse_time(since, "since"),
        until_ns=None if until is None else parse_time(until, "until"),
        model=model,
        key_id=key_id,
        status=status,
        kind=kind,
        min_latency_ms=min_latency_ms,
        has_error=has_error,
        text=q,
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


@router.get("/{trace_id}")
async def get_trace(trace_id: str, request: Request) -> JSONBytes:
    await authenticate(request, OBSERVER)
    store = runtime(request).traces
    assert store is not None
    trace = await store.get(trace_id)
    if trace is None:
        raise NotFoundError(f"No trace with id `{trace_id}`.")
    return JSONBytes(trace)
