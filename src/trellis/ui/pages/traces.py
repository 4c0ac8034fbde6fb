"""Traces: the filters of ``GET /v1/traces``, paged; one trace as a span waterfall; scores."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from trellis.errors import InvalidRequestError, NotFoundError
from trellis.guard.redact import redact
from trellis.observe.query import TraceQuery, parse_time
from trellis.ui.web import UiRoute, Viewer, is_htmx, render, runtime, viewer

router = APIRouter(route_class=UiRoute)

#: The query parameters of ``GET /v1/traces`` the filter form sends.
FILTERS = (
    "since",
    "until",
    "model",
    "key_id",
    "status",
    "kind",
    "min_latency_ms",
    "has_error",
    "q",
)


def _number(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise InvalidRequestError(f"{name} must be a number", param=name) from None
    if not math.isfinite(number) or number < 0:
        raise InvalidRequestError(f"{name} must be a number of 0 or more", param=name)
    return number


def trace_query(params: dict[str, str], project_id: str | None = None) -> TraceQuery:
    """The form's filters as the API's ``TraceQuery`` (same parsing, same errors)."""
    has_error = params.get("has_error")
    if has_error not in (None, "true", "false"):
        raise InvalidRequestError("has_error must be true or false", param="has_error")
    latency = params.get("min_latency_ms")
    return TraceQuery(
        project_id=project_id,
        since_ns=parse_time(params["since"], "since") if params.get("since") else None,
        until_ns=parse_time(params["until"], "until") if params.get("until") else None,
        model=params.get("model"),
        key_id=params.get("key_id"),
        status=params.get("status"),
        kind=params.get("kind"),
        min_latency_ms=_number(latency, "min_latency_ms") if latency else None,
        has_error=None if has_error is None else has_error == "true",
        text=params.get("q"),
    )


@router.get("/ui/traces")
async def list_traces(request: Request) -> Response:
    me = await viewer(request, "traces")
    params = {k: v.strip() for k, v in request.query_params.items() if k in FILTERS and v.strip()}
    try:
        limit = min(max(int(request.query_params.get("limit", "50")), 1), 500)
    except ValueError:
        raise InvalidRequestError("limit must be a whole number", param="limit") from None
    store = runtime(request).traces
    assert store is not None
    page = await store.page(
        trace_query(params, me.project),
        limit=limit,
        cursor=request.query_params.get("cursor") or None,
    )
    context = {
        "title": "Traces",
        "rows": page.rows,
        "filters": params,
        "next_cursor": page.next_cursor,
        "limit": limit,
    }
    template = "traces/_rows.html" if is_htmx(request) else "traces/index.html"
    return render(request, template, context, me=me)


def waterfall(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """Spans in tree order with depth and their bar's offset and width (percent of the trace)."""
    spans = trace["spans"]
    start = min([trace["start_ns"], *(s["start_ns"] for s in spans)])
    end = max([trace.get("end_ns") or start, *((s.get("end_ns") or s["start_ns"]) for s in spans)])
    total = max(end - start, 1)
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["id"] for s in spans}
    for span in spans:
        parent = span["parent_id"] if span["parent_id"] in ids else None
        children.setdefault(parent, []).append(span)
    ordered: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: (s["start_ns"], s["id"])):
            span_end = span.get("end_ns") or span["start_ns"]
            ordered.append(
                {
                    **span,
                    "depth": depth,
                    "offset": round(100 * (span["start_ns"] - start) / total, 2),
                    "width": round(max(100 * (span_end - span["start_ns"]) / total, 0.3), 2),
                    "at_ms": (span["start_ns"] - start) / 1e6,
                }
            )
            walk(span["id"], depth + 1)

    walk(None, 0)
    return ordered


async def _trace_or_404(request: Request, me: Viewer, trace_id: str) -> dict[str, Any]:
    """The trace, if it is of the viewer's project (another project's answers 404)."""
    store = runtime(request).traces
    assert store is not None
    trace = await store.get(trace_id)
    if trace is None:
        raise NotFoundError(f"No trace with id `{trace_id}`.")
    me.outside(trace.get("project_id"), f"trace with id `{trace_id}`")
    return trace


def retrievals(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """What each retrieval span found: its query and the passages used, with their scores."""
    found = []
    for span in trace["spans"]:
        attributes = span.get("attributes") or {}
        documents = attributes.get("trellis.retrieval.document_ids")
        if documents is None:
            continue
        chunks = attributes.get("trellis.retrieval.chunk_ids") or []
        scores = attributes.get("trellis.retrieval.scores") or []
        found.append(
            {
                "span": span["name"],
                "query": attributes.get("trellis.retrieval.query"),
                "hits": attributes.get("trellis.retrieval.hits"),
                "passages": [
                    {
                        "document_id": document,
                        "chunk_id": chunks[n] if n < len(chunks) else None,
                        "score": scores[n] if n < len(scores) else None,
                    }
                    for n, document in enumerate(documents)
                ],
            }
        )
    return found


def _detail(request: Request, me: Viewer, trace: dict[str, Any], **extra: Any) -> Response:
    events = [
        {"span": span["name"], **event}
        for span in trace["spans"]
        for event in span.get("events") or []
    ]
    context = {
        "title": f"Trace {trace['id']}",
        "trace": trace,
        "spans": waterfall(trace),
        "events": events,
        "retrievals": retrievals(trace),
        **extra,
    }
    return render(request, "traces/detail.html", context, me=me, status=extra.get("status", 200))


@router.get("/ui/traces/{trace_id}")
async def get_trace(trace_id: str, request: Request) -> Response:
    me = await viewer(request, "traces")
    return _detail(request, me, await _trace_or_404(request, me, trace_id))


@router.post("/ui/traces/{trace_id}/scores")
async def add_score(trace_id: str, request: Request) -> Response:
    """What ``POST /v1/traces/{id}/scores`` does for an observer, from a form."""
    me = await viewer(request, "traces.score")
    form = await request.form()
    name = str(form.get("name") or "").strip()
    if not name or len(name) > 200:
        raise InvalidRequestError("a score needs a name of 1 to 200 characters", param="name")
    value = str(form.get("value") or "").strip()
    try:
        number = float(value)
    except ValueError:
        raise InvalidRequestError("the score's value must be a number", param="value") from None
    if not math.isfinite(number):
        raise InvalidRequestError("the score's value must be a finite number", param="value")
    comment: str | None = str(form.get("comment") or "").strip() or None
    if comment is not None and len(comment) > 10_000:
        raise InvalidRequestError("a comment has at most 10000 characters", param="comment")
    rt = runtime(request)
    store = rt.traces
    assert store is not None
    found = await _trace_or_404(request, me, trace_id)
    bodies = rt.settings.tracing.bodies
    if bodies == "none":
        comment = None
    elif comment is not None and bodies == "redacted":
        comment = redact(comment)
    await store.add_score(
        trace_id, name, number, comment, "user", project_id=found.get("project_id") or "default"
    )
    trace = await _trace_or_404(request, me, trace_id)
    if is_htmx(request):
        return render(request, "traces/_scores.html", {"trace": trace}, me=me, status=201)
    return _detail(request, me, trace, status=201)
