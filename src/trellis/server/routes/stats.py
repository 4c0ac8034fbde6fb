"""Request statistics over a window, per group and per bucket (observer or admin keys)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request

from trellis.access.keys import OBSERVER
from trellis.observe.query import parse_duration, parse_time
from trellis.observe.stats import StatsQuery, TraceStats
from trellis.server.edge import authenticate, project_filter, runtime
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes

router = APIRouter(prefix="/v1/stats", tags=["stats"])


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()


def stats_body(
    query: StatsQuery, groups: list[dict[str, Any]], window: str, bucket: str
) -> dict[str, Any]:
    """The JSON answer, shared with ``trellis stats --json``."""
    for group in groups:
        for entry in group["buckets"]:
            entry["start"] = _iso(entry["start_ns"])
    return {
        "object": "stats",
        "window": window,
        "bucket": bucket,
        "group_by": query.group_by,
        "since": _iso(query.since_ns),
        "until": _iso(query.until_ns),
        "since_ns": query.since_ns,
        "until_ns": query.until_ns,
        "bucket_ns": query.bucket_ns,
        "data": groups,
    }


@router.get("", **operation(scope=OBSERVER))
async def get_stats(
    request: Request,
    window: str = Query(default="1h", description="How far back: 15m, 1h, 7d..."),
    bucket: str = Query(default="5m", description="Bucket size: 1m, 5m, 1h..."),
    group_by: str = Query(default="model", description="model, key, kind or none"),
    until: str | None = Query(default=None, description="Window end (default now)"),
    model: str | None = None,
    key_id: str | None = None,
    kind: str | None = None,
) -> JSONBytes:
    caller = await authenticate(request, OBSERVER)
    rt = runtime(request)
    assert rt.db is not None
    until_ns = time.time_ns() if until is None else parse_time(until, "until")
    query = StatsQuery(
        since_ns=until_ns - int(parse_duration(window, "window") * 1e9),
        until_ns=until_ns,
        bucket_ns=int(parse_duration(bucket, "bucket") * 1e9),
        group_by=group_by,
        model=model,
        key_id=key_id,
        kind=kind,
        project_id=project_filter(caller),
    )
    groups = await TraceStats(rt.db).compute(query)
    return JSONBytes(stats_body(query, groups, window, bucket))
