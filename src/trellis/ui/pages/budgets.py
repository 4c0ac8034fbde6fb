"""Budgets: rate limits and spend against them, as ``GET /v1/usage/{subject}`` shows them.

A key sees its own subject (``key:<id>``) and its project's; an admin sees its project's
active keys and the project (the built-in admin: every subject with stored limits and
every active key of the chosen project, or of all), and sets or deletes the limits of its
project's keys with the validation of ``PUT /v1/limits``; a project's own limits are set
by the built-in admin. Another project's subject answers 404. Changes are audited.
Each limit is a ``<meter>``: requests and tokens used of the per-minute bucket,
requests in flight, spend of the day's and the month's budget.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from trellis.access.audit import record
from trellis.access.keys import ADMIN
from trellis.access.limits import Limiter, parse_subject
from trellis.errors import InvalidRequestError, NotFoundError
from trellis.settings import LimitValues
from trellis.ui.pages.alerts import invalid
from trellis.ui.web import UiRoute, Viewer, render, runtime, viewer

router = APIRouter(route_class=UiRoute)

#: At most this many subjects on the page (an admin's view of many keys).
MAX_SUBJECTS = 200
NUMBERS = {
    "rpm": int,
    "tpm": int,
    "max_concurrent": int,
    "daily_usd": float,
    "monthly_usd": float,
}


def _limiter(request: Request) -> Limiter:
    limiter = runtime(request).limiter
    assert limiter is not None
    return limiter


def _bar(used: float, limit: float | None) -> dict[str, Any] | None:
    """A meter's figures: used of limit, the fraction, and a level for its colour."""
    if limit is None:
        return None
    fraction = used / limit if limit > 0 else (1.0 if used > 0 else 0.0)
    return {"used": used, "limit": limit, "fraction": fraction}


def _rows(usage: dict[str, Any]) -> list[dict[str, Any]]:
    """The usage view as one row per kind of limit (None: no such limit)."""
    requests, tokens = usage["requests"], usage["tokens"]
    concurrent, daily, monthly = usage["concurrent"], usage["daily"], usage["monthly"]
    return [
        {
            "name": "Requests per minute",
            "bar": requests and _bar(requests["limit"] - requests["remaining"], requests["limit"]),
            "detail": requests and f"full again in {requests['reset']}",
            "money": False,
        },
        {
            "name": "Tokens per minute",
            "bar": tokens and _bar(tokens["limit"] - tokens["remaining"], tokens["limit"]),
            "detail": tokens and f"full again in {tokens['reset']}",
            "money": False,
        },
        {
            "name": "Requests in flight",
            "bar": _bar(concurrent["in_flight"], concurrent["limit"]),
            "detail": None if concurrent["limit"] is None else "now",
            "money": False,
        },
        {
            "name": f"Spend on {daily['period']} (UTC)",
            "bar": _bar(daily["spent_usd"], daily["limit_usd"]),
            "spent": daily["spent_usd"],
            "detail": f"resets in {daily['resets_in']}",
            "money": True,
        },
        {
            "name": f"Spend in {monthly['period']}",
            "bar": _bar(monthly["spent_usd"], monthly["limit_usd"]),
            "spent": monthly["spent_usd"],
            "detail": f"resets in {monthly['resets_in']}",
            "money": True,
        },
    ]


async def _subjects(request: Request, me: Viewer) -> list[tuple[str, str]]:
    """(subject, label) pairs this viewer may read."""
    project = me.project
    own = [(f"key:{me.key.id}", f"this key ({me.key.name})")]
    if project:
        own.append((f"project:{project}", f"project {project}"))
    if not me.key.has_scope(ADMIN):
        return own
    keys = runtime(request).keys
    assert keys is not None
    members = [k for k in await keys.list(project_id=project) if not k.revoked]
    names = {f"key:{k.id}": f"key {k.name}" for k in members}
    found = dict(own)
    for subject, _ in await _limiter(request).store.list():
        if project is None or subject in names or subject == f"project:{project}":
            found.setdefault(subject, names.get(subject, subject.replace(":", " ", 1)))
    for subject, label in names.items():
        found.setdefault(subject, label)
    return list(found.items())[:MAX_SUBJECTS]


async def _page(request: Request, me: Viewer, status: int = 200, **extra: Any) -> Response:
    limiter = _limiter(request)
    subjects: list[dict[str, Any]] = []
    unlimited: list[dict[str, Any]] = []
    for subject, label in await _subjects(request, me):
        usage = await limiter.usage(subject)
        found = {
            "subject": subject,
            "label": label,
            "source": usage["source"],
            "rows": _rows(usage),
            "daily": usage["daily"]["spent_usd"],
            "monthly": usage["monthly"]["spent_usd"],
        }
        # A subject without any limit is one line of spend, not a panel of empty bars.
        limited = any(row["bar"] for row in found["rows"]) or found["source"] == "stored"
        (subjects if limited or subject == f"key:{me.key.id}" else unlimited).append(found)
    context = {
        "title": "Budgets",
        "subjects": subjects,
        "unlimited": unlimited,
        "backend": limiter.settings.backend,
        "fields": NUMBERS,
        **extra,
    }
    return render(request, "budgets/index.html", context, me=me, status=status)


@router.get("/ui/budgets")
async def budgets_page(request: Request) -> Response:
    me = await viewer(request, "budgets")
    return await _page(request, me)


def _values(form: Any) -> LimitValues:
    """The form as ``PUT /v1/limits`` takes it: an empty field is no such limit."""
    spec: dict[str, Any] = {}
    for field, kind in NUMBERS.items():
        text = str(form.get(field) or "").strip()
        if text:
            try:
                spec[field] = kind(text)
            except ValueError:
                what = "a whole number" if kind is int else "a number"
                raise InvalidRequestError(f"{field} must be {what}", param=field) from None
    thresholds = str(form.get("alert_thresholds") or "").strip()
    if thresholds:
        try:
            spec["alert_thresholds"] = [float(p) for p in thresholds.split(",") if p.strip()]
        except ValueError:
            raise InvalidRequestError(
                "alert_thresholds are fractions separated by commas, e.g. 0.8, 1",
                param="alert_thresholds",
            ) from None
    try:
        return LimitValues.model_validate(spec)
    except ValidationError as exc:
        raise invalid(exc) from None


async def _check_subject(request: Request, me: Viewer, kind: str, ident: str) -> None:
    """404 for a subject outside the viewer's reach: a key of another project (or none),
    and any project for all but the built-in admin."""
    if kind == "key":
        keys = runtime(request).keys
        assert keys is not None
        key = await keys.get(ident)
        if key is None:
            raise NotFoundError(f"No API key with id `{ident}`.", param="subject")
        if not me.key.spans_projects:
            me.outside(key.project_id, f"API key with id `{ident}`")
    elif not me.key.spans_projects:
        raise NotFoundError(
            f"Only the built-in admin sets the limits of project `{ident}`.", param="subject"
        )


async def _audit(
    request: Request, me: Viewer, action: str, subject: str, detail: dict[str, Any] | None = None
) -> None:
    """The audit entry of a limits change (its own transaction, right after it)."""
    db = runtime(request).db
    assert db is not None
    async with db.write() as conn:
        await record(conn, me.audit(request, action, detail).with_target(subject))


@router.post("/ui/budgets/limits")
async def set_limits(request: Request) -> Response:
    me = await viewer(request, "budgets.write")
    form = await request.form()
    subject = str(form.get("subject") or "").strip()
    kind, ident = parse_subject(subject)
    values = _values(form)
    await _check_subject(request, me, kind, ident)
    await _limiter(request).store.put(subject, values)
    await _audit(request, me, "limit.set", subject, values.model_dump(exclude_none=True))
    return await _page(request, me, status=201, saved=subject)


@router.post("/ui/budgets/limits/{subject}/delete")
async def delete_limits(subject: str, request: Request) -> Response:
    me = await viewer(request, "budgets.write")
    kind, ident = parse_subject(subject)
    await _check_subject(request, me, kind, ident)
    if not await _limiter(request).store.delete(subject):
        raise NotFoundError(f"No stored limits for `{subject}`.", param="subject")
    await _audit(request, me, "limit.delete", subject)
    return await _page(request, me, deleted=subject)
