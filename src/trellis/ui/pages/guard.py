"""Guard: the requests the guards acted on, with counts per kind over a window.

A request shows here when its trace summary records what a guard did: PII the privacy
policy found (``pii_kinds``; redacted, routed or blocked), hits of the output checks
(``guard_output``), or the input guard's prompt-injection flag (``guard_flagged``, with
score and categories on its ``guard`` span). The list is ``GET /v1/traces?guard=...``
(``TraceQuery.guard``: the same filter), newest first and paged; each row links to its
trace. Reading it needs ``observer``, as traces do. The page's form scores a text as
``POST /v1/guard/check`` does (``inference``), so people can try the input guard on their own
prompts.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from trellis.errors import InvalidRequestError
from trellis.observe.query import GUARD_FILTERS, TraceQuery, parse_time
from trellis.ui.web import UiRoute, render, runtime, viewer

#: The longest text the form scores (the API's limit).
MAX_CHECK_CHARS = 200_000

router = APIRouter(route_class=UiRoute)

WINDOWS = ("1h", "24h", "7d", "30d")
PAGE_SIZE = 50


def details(row: dict[str, Any], spans: list[dict[str, Any]]) -> dict[str, Any]:
    """What each guard did to one trace, from its summary and its guard spans."""
    summary = row.get("attributes") or {}
    found: dict[str, Any] = {
        "pii_kinds": list(summary.get("pii_kinds") or ()),
        "privacy_action": None,
        "output": dict(summary.get("guard_output") or {}),
        "output_hits": [],
        "input": None,
    }
    flags: list[dict[str, Any]] = []
    for span in spans:
        attributes = span.get("attributes") or {}
        if span["name"] == "privacy":
            found["privacy_action"] = attributes.get("trellis.privacy.action")
        elif span["name"] == "guard" and attributes.get("trellis.guard.flagged"):
            found["input"] = {
                "score": attributes.get("trellis.guard.score"),
                "mode": attributes.get("trellis.guard.mode"),
                "categories": list(attributes.get("trellis.guard.categories") or ()),
            }
        if span.get("parent_id") is None:
            found["output_hits"] = list(attributes.get("trellis.guard.output.hits") or ())
            flags += [
                event.get("attributes") or {}
                for event in span.get("events") or ()
                if event.get("name") == "guard_flagged"
            ]
    if found["input"] is None and (summary.get("guard_flagged") or flags):
        categories = sorted({c for flag in flags for c in flag.get("categories") or ()})
        found["input"] = {
            "score": summary.get("guard_score"),
            "mode": next((f.get("action") for f in flags if f.get("action")), None),
            "categories": categories,
        }
    if found["input"] is not None:
        found["input"]["sources"] = sorted({str(f["source"]) for f in flags if f.get("source")})
    return found


@router.get("/ui/guard")
async def guard_page(request: Request) -> Response:
    me = await viewer(request, "guard")
    params = request.query_params
    window = params.get("window") or "24h"
    if window not in WINDOWS:
        raise InvalidRequestError(f"window must be one of {', '.join(WINDOWS)}", param="window")
    kind = params.get("guard") or "any"
    if kind not in GUARD_FILTERS:
        raise InvalidRequestError(f"guard must be one of {', '.join(GUARD_FILTERS)}", param="guard")
    store = runtime(request).traces
    assert store is not None
    query = TraceQuery(since_ns=parse_time(window, "window"), guard=kind, project_id=me.project)
    page = await store.page(query, limit=PAGE_SIZE, cursor=params.get("cursor") or None)
    # The counts cover every guard in the window, whichever the list shows.
    counts = await store.guard_counts(
        TraceQuery(since_ns=query.since_ns, guard="any", project_id=me.project)
    )
    spans = await store.guard_spans([row["id"] for row in page.rows])
    rows = [{**row, "guard": details(row, spans.get(row["id"], []))} for row in page.rows]
    context = {
        "title": "Guard",
        "rows": rows,
        "counts": counts,
        "window": window,
        "windows": WINDOWS,
        "kind": kind,
        "kinds": tuple(GUARD_FILTERS),
        "next_cursor": page.next_cursor,
    }
    return render(request, "guard/index.html", context, me=me)


@router.post("/ui/guard/check")
async def check_text(request: Request) -> Response:
    """The input guard's verdict on a text from the form, as ``POST /v1/guard/check``
    gives it (the server's ``guard.input`` threshold)."""
    me = await viewer(request, "guard.check")
    form = await request.form()
    text = str(form.get("text") or "")
    if not text.strip():
        raise InvalidRequestError("enter a text to check", param="text")
    if len(text) > MAX_CHECK_CHARS:
        raise InvalidRequestError(
            f"a text to check has at most {MAX_CHECK_CHARS} characters", param="text"
        )
    gateway = runtime(request).gateway
    assert gateway is not None, "the runtime is started before requests are served"
    threshold = gateway.guard.input.threshold
    verdict = await gateway.score_injection(text, threshold)
    context = {"verdict": verdict.as_dict(), "threshold": threshold}
    return render(request, "guard/_verdict.html", context, me=me)
