"""The dashboard: ``/v1/stats`` over a chosen window, drawn per group with uPlot."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from trellis.errors import InvalidRequestError
from trellis.observe.query import parse_duration
from trellis.observe.stats import StatsQuery, TraceStats
from trellis.ui.web import UiRoute, render, runtime, viewer

router = APIRouter(route_class=UiRoute)

#: The windows offered, each with a bucket that gives charts of 15 to 60 points.
WINDOWS: dict[str, str] = {
    "15m": "1m",
    "1h": "1m",
    "6h": "10m",
    "24h": "30m",
    "7d": "6h",
    "30d": "1d",
}
GROUPS = ("model", "key", "kind", "none")


def chart_series(groups: list[dict[str, Any]], bucket_ns: int) -> dict[str, Any]:
    """Aligned columns for the charts: bucket starts (Unix seconds) and one list per group
    and metric (None where a group had no request in a bucket)."""
    starts = sorted({entry["start_ns"] for g in groups for entry in g["buckets"]})
    index = {start: n for n, start in enumerate(starts)}
    seconds = bucket_ns / 1e9
    metrics = ("requests", "error_rate", "p50", "p95", "p99", "tokens", "cost", "cache_hit_rate")
    series: list[dict[str, Any]] = []
    for group in groups:
        columns: dict[str, list[float | None]] = {m: [None] * len(starts) for m in metrics}
        for entry in group["buckets"]:
            n = index[entry["start_ns"]]
            count = entry["count"]
            columns["requests"][n] = count
            columns["error_rate"][n] = round(100 * entry["error_rate"], 3)
            for p in ("p50", "p95", "p99"):
                columns[p][n] = entry["latency_ms"][p]
            columns["tokens"][n] = entry["input_tokens"] + entry["output_tokens"]
            columns["cost"][n] = entry["cost"]
            columns["cache_hit_rate"][n] = (
                round(100 * entry["cache_hits"] / count, 3) if count else None
            )
        label = group["group"] if group["group"] is not None else "all"
        series.append({"label": str(label), **columns})
    return {"x": [s / 1e9 for s in starts], "bucket_seconds": seconds, "series": series}


@router.get("/ui/dashboard")
async def dashboard(request: Request) -> Response:
    me = await viewer(request, "dashboard")
    window = request.query_params.get("window", "1h")
    bucket = request.query_params.get("bucket") or WINDOWS.get(window, "5m")
    group_by = request.query_params.get("group_by", "model")
    if group_by not in GROUPS:
        raise InvalidRequestError(f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
    rt = runtime(request)
    assert rt.db is not None
    until_ns = time.time_ns()
    window_ns = int(parse_duration(window, "window") * 1e9)
    bucket_ns = int(parse_duration(bucket, "bucket") * 1e9)
    if window_ns // max(bucket_ns, 1) > 2000:
        raise InvalidRequestError("Choose a larger bucket: at most 2000 per chart.", param="bucket")
    query = StatsQuery(
        since_ns=until_ns - window_ns,
        until_ns=until_ns,
        bucket_ns=bucket_ns,
        group_by=group_by,
        project_id=me.project,
    )
    groups = await TraceStats(rt.db).compute(query)
    if group_by == "key" and me.can("keys") and rt.keys is not None:
        # Admins see key names next to their ids (the names are admin-only, as over /v1/keys).
        names = {key.id: key.name for key in await rt.keys.list(project_id=me.project)}
        for group in groups:
            if group["group"] in names:
                group["group"] = f"{names[group['group']]} ({group['group']})"
    context = {
        "title": "Dashboard",
        "window": window,
        "bucket": bucket,
        "group_by": group_by,
        "windows": list(WINDOWS),
        "groups_choice": GROUPS,
        "groups": groups,
        "chart": {
            **chart_series(groups, bucket_ns),
            "since": query.since_ns / 1e9,
            "until": query.until_ns / 1e9,
        },
    }
    return render(request, "dashboard.html", context, me=me)
