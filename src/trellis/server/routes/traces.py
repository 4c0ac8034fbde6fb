"""Read recorded traces (admins): the newest, or one with its span tree."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from trellis.access.keys import ADMIN
from trellis.errors import NotFoundError
from trellis.server.edge import authenticate, runtime
from trellis.server.responses import JSONBytes

router = APIRouter(prefix="/v1/traces", tags=["traces"])


@router.get("")
async def list_traces(
    request: Request,
    limit: int = Query(default=50, ge=1, le=500),
    model: str | None = None,
    status: str | None = None,
) -> JSONBytes:
    await authenticate(request, ADMIN)
    store = runtime(request).traces
    assert store is not None
    rows = await store.list(limit=limit, model=model, status=status)
    return JSONBytes({"object": "list", "data": rows})


@router.get("/{trace_id}")
async def get_trace(trace_id: str, request: Request) -> JSONBytes:
    await authenticate(request, ADMIN)
    store = runtime(request).traces
    assert store is not None
    trace = await store.get(trace_id)
    if trace is None:
        raise NotFoundError(f"No trace with id `{trace_id}`.")
    return JSONBytes(trace)
