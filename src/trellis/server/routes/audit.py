"""``GET /v1/audit``: the audit log of administrative actions, for admins.

The built-in admin reads every project's entries (or one project's, with
``X-Trellis-Project``); a project's admin key reads its project's.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from trellis.access.keys import ADMIN
from trellis.durations import duration_seconds, is_duration
from trellis.errors import InvalidRequestError
from trellis.server.edge import authenticate, project_filter, runtime
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes

router = APIRouter(prefix="/v1/audit", tags=["audit"])


def _time(text: str | None, param: str) -> float | None:
    """``1h`` (ago) or Unix seconds."""
    import time

    if text is None:
        return None
    try:
        if is_duration(text):
            return time.time() - duration_seconds(text)
        return float(text)
    except ValueError as exc:
        raise InvalidRequestError(
            f"{param} must be a duration (1h: an hour ago) or Unix seconds: {exc}", param=param
        ) from None


@router.get("", **operation(scope=ADMIN, errors=[400]))
async def list_audit(
    request: Request,
    actor: str | None = Query(default=None, max_length=64, description="The acting key's id"),
    action: str | None = Query(
        default=None, max_length=64, description="key.create, or a prefix ending in '.' (key.)"
    ),
    since: str | None = Query(default=None, description="1h (ago) or Unix seconds"),
    until: str | None = Query(default=None, description="1h (ago) or Unix seconds"),
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = Query(default=None, max_length=200),
) -> JSONBytes:
    """Entries newest first: who (key id and name), what (action, target, redacted
    detail), when (``at``, Unix seconds) and from where (client IP, user agent)."""
    caller = await authenticate(request, ADMIN)
    log = runtime(request).audit
    assert log is not None
    page = await log.page(
        project_id=project_filter(caller),
        actor_id=actor,
        action=action,
        since=_time(since, "since"),
        until=_time(until, "until"),
        limit=limit,
        cursor=cursor,
    )
    return JSONBytes(
        {
            "object": "list",
            "data": [{"object": "audit.entry", **row} for row in page.rows],
            "has_more": page.next_cursor is not None,
            "next_cursor": page.next_cursor,
        }
    )
