"""Alert rules and alerts: observers read them, admins create and delete rules.

A rule created over the API belongs to the caller's project and watches that project's
traces; its alerts are that project's. Rules from settings watch every project and are
listed to the built-in admin only (with no project named). Rule changes are audited.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from trellis.access.audit import recorder
from trellis.access.keys import ADMIN, OBSERVER
from trellis.observe.alerts import AlertManager
from trellis.server.edge import (
    audit_entry,
    authenticate,
    parse_body,
    project_filter,
    read_json,
    runtime,
)
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes
from trellis.settings import AlertRule

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])


def _manager(request: Request) -> AlertManager:
    manager = runtime(request).alerts
    assert manager is not None
    return manager


@router.get("", **operation(scope=OBSERVER))
async def list_alerts(
    request: Request,
    state: str | None = Query(default=None, description="pending, firing or resolved"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> JSONBytes:
    caller = await authenticate(request, OBSERVER)
    rows = await _manager(request).list_alerts(
        state=state, limit=limit, project_id=project_filter(caller)
    )
    return JSONBytes({"object": "list", "data": rows})


@router.get("/rules", **operation(scope=OBSERVER))
async def list_rules(request: Request) -> JSONBytes:
    caller = await authenticate(request, OBSERVER)
    rules = await _manager(request).rules(project_filter(caller))
    return JSONBytes({"object": "list", "data": [rule.to_dict() for rule in rules]})


@router.post("/rules", status_code=201, **operation(scope=ADMIN, body=AlertRule))
async def create_rule(request: Request) -> JSONBytes:
    caller = await authenticate(request, ADMIN)
    spec = parse_body(AlertRule, await read_json(request))
    entry = audit_entry(request, caller, "alert_rule.create", {"name": spec.name})
    rule = await _manager(request).create_rule(spec, caller.project_id, recorder(entry))
    return JSONBytes(rule.to_dict(), status_code=201)


@router.delete("/rules/{rule_id}", **operation(scope=ADMIN, errors=[400, 404]))
async def delete_rule(rule_id: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, ADMIN)
    entry = audit_entry(request, caller, "alert_rule.delete")
    await _manager(request).delete_rule(rule_id, project_filter(caller), recorder(entry))
    return JSONBytes({"id": rule_id, "object": "alert_rule", "deleted": True})
