"""Alerts: rules and firing/resolved alerts of the viewer's project; its admins create and
delete rules (audited, as over ``/v1/alerts/rules``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from trellis.access.audit import recorder
from trellis.errors import InvalidRequestError
from trellis.observe.alerts import ALERT_STATES, AlertManager
from trellis.settings import AlertRule
from trellis.ui.web import UiRoute, Viewer, is_htmx, render, runtime, viewer

router = APIRouter(route_class=UiRoute)

KINDS = ("latency", "cost", "error_rate", "retrieval_failures", "model_mismatch", "score")
GROUPS = ("none", "model", "key", "kind")


def _manager(request: Request) -> AlertManager:
    manager = runtime(request).alerts
    assert manager is not None
    return manager


def invalid(exc: ValidationError) -> InvalidRequestError:
    """The first problem of a form, named by its field (as the API words it)."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    message = str(first.get("msg", "invalid value"))
    return InvalidRequestError(
        f"Invalid value for '{param}': {message}" if param else message, param=param
    )


async def _page(request: Request, me: Viewer, **extra: Any) -> Response:
    manager = _manager(request)
    state = request.query_params.get("state") or None
    context = {
        "title": "Alerts",
        "rules": [rule.to_dict() for rule in await manager.rules(me.project)],
        "alerts": await manager.list_alerts(state=state, limit=200, project_id=me.project),
        "state": state,
        "states": ALERT_STATES,
        "kinds": KINDS,
        "groups": GROUPS,
        **extra,
    }
    template = "alerts/_rules.html" if is_htmx(request) else "alerts/index.html"
    return render(request, template, context, me=me, status=extra.pop("status", 200))


@router.get("/ui/alerts")
async def alerts_page(request: Request) -> Response:
    me = await viewer(request, "alerts")
    return await _page(request, me)


@router.post("/ui/alerts/rules")
async def create_rule(request: Request) -> Response:
    me = await viewer(request, "alerts.write")
    form = await request.form()
    spec: dict[str, Any] = {}
    for field in ("name", "kind", "window", "group_by", "model", "score_name", "baseline_window"):
        value = str(form.get(field) or "").strip()
        if value:
            spec[field] = value
    for field in ("threshold", "factor", "for_seconds", "min_requests"):
        value = str(form.get(field) or "").strip()
        if value:
            try:
                spec[field] = int(value) if field == "min_requests" else float(value)
            except ValueError:
                raise InvalidRequestError(f"{field} must be a number", param=field) from None
    try:
        rule = AlertRule.model_validate(spec)
    except ValidationError as exc:
        raise invalid(exc) from None
    entry = me.audit(request, "alert_rule.create", {"name": rule.name})
    created = await _manager(request).create_rule(rule, me.caller.project_id, recorder(entry))
    return await _page(request, me, created=created.to_dict(), status=201)


@router.post("/ui/alerts/rules/{rule_id}/delete")
async def delete_rule(rule_id: str, request: Request) -> Response:
    me = await viewer(request, "alerts.write")
    entry = me.audit(request, "alert_rule.delete")
    await _manager(request).delete_rule(rule_id, me.project, recorder(entry))
    return await _page(request, me, deleted=rule_id)
