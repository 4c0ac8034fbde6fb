"""What every UI page does: find the signed-in key, check CSRF and access, render safely.

Pages are Jinja2 templates with autoescaping on (model output and stored prompts are
shown, so nothing is trusted), sent with a Content-Security-Policy that allows scripts
and styles only from ``/ui/static`` (no inline script). Errors a page raises become an
HTML answer with the same status the ``/v1`` API would give.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from trellis.access.audit import AuditEntry
from trellis.access.keys import ApiKeyRecord
from trellis.access.projects import Project
from trellis.errors import NotFoundError, TrellisError
from trellis.inference.call import Caller
from trellis.inference.callers import (
    audit_entry,
    caller_for,
    not_found_outside,
    project_filter,
)
from trellis.runtime import Trellis
from trellis.ui.access import NAV, allowed, needed_scope
from trellis.ui.sessions import COOKIE, UiSession, UiSessions, same_token

__all__ = [
    "Viewer",
    "UiRoute",
    "viewer",
    "render",
    "runtime",
    "sessions",
    "is_htmx",
    "SECURITY_HEADERS",
]

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def _when(ns: int | float | None) -> str:
    if ns is None:
        return ""
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _when_s(seconds: float | datetime | None) -> str:
    if seconds is None:
        return ""
    if isinstance(seconds, datetime):
        return seconds.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _number(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def _money(value: float | None) -> str:
    return "–" if value is None else f"${value:.6f}".rstrip("0").rstrip(".") or "$0"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


ENV = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(when=_when, when_s=_when_s, number=_number, money=_money, pretty=_pretty)
ENV.filters["urlpart"] = lambda value: quote(str(value), safe="")


class SignInNeeded(Exception):
    """No valid session: the browser goes to the sign-in page."""


class Forbidden(Exception):
    def __init__(self, area: str) -> None:
        super().__init__(area)
        self.area = area


class CsrfFailed(Exception):
    pass


@dataclass(slots=True)
class Viewer:
    """The signed-in key and its session, as pages and templates see them, with the
    caller the ``/v1`` edge would make of the key (same roles, same project)."""

    session: UiSession
    key: ApiKeyRecord
    caller: Caller
    #: The projects the built-in admin may choose from in the navigation (else empty).
    projects: list[Project] = field(default_factory=list)

    def can(self, area: str) -> bool:
        return allowed(self.key, area)

    @property
    def project(self) -> str | None:
        """The project pages read (None: every project, for the built-in admin)."""
        return project_filter(self.caller)

    def outside(self, project_id: str | None, what: str) -> None:
        """404, as the API answers, for a resource of another project."""
        not_found_outside(self.caller, project_id, what)

    def audit(
        self,
        request: Request,
        action: str,
        detail: dict[str, Any] | None = None,
        *,
        project_id: str | None = None,
    ) -> AuditEntry:
        """The audit entry of an action taken on a page, as the API writes it."""
        return audit_entry(request, self.caller, action, detail, project_id=project_id)

    @property
    def project_id(self) -> str:
        """The project the pages act in by name (collections): the caller's; the built-in
        admin over every project acts in the default one, as over the API."""
        return self.caller.project_id

    @property
    def nav(self) -> list[tuple[str, str]]:
        return [(path, label) for area, path, label in NAV if self.can(area)]


def runtime(request: Request) -> Trellis:
    return request.app.state.trellis  # type: ignore[no-any-return]


def sessions(request: Request) -> UiSessions:
    """The sessions table's accessor, made once the runtime's database is open."""
    found: UiSessions | None = getattr(request.app.state, "ui_sessions", None)
    if found is None:
        db = runtime(request).db
        assert db is not None
        found = request.app.state.ui_sessions = UiSessions(db)
    return found


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


async def viewer(request: Request, area: str | None = None) -> Viewer:
    """The signed-in viewer, after the CSRF check (every POST and every htmx request) and
    the access check of ``area``; else the exception the route class turns into a page."""
    session = await sessions(request).get(request.cookies.get(COOKIE))
    if session is None:
        raise SignInNeeded()
    keys = runtime(request).keys
    assert keys is not None
    key = await keys.get(session.key_id)
    if key is None or key.revoked or key.expired():  # as the API refuses such a key
        await sessions(request).end(session.id)
        raise SignInNeeded()
    try:
        caller = await caller_for(key, runtime(request).projects, chosen=session.project_id)
    except NotFoundError:  # the chosen project was deleted since: back to every project
        await sessions(request).choose_project(session.id, None)
        session.project_id = None
        caller = await caller_for(key, runtime(request).projects)
    found = Viewer(session, key, caller)
    if key.spans_projects and runtime(request).projects is not None:
        found.projects = await runtime(request).projects.list()  # type: ignore[union-attr]
    request.state.ui_viewer = found  # error pages keep the navigation
    if area is not None and not found.can(area):  # before reading any form body
        raise Forbidden(area)
    if request.method != "GET" or is_htmx(request):
        token = request.headers.get("x-csrf-token")
        if token is None and request.method != "GET":
            content_type = request.headers.get("content-type", "")
            if content_type.startswith(("application/x-www-form-urlencoded", "multipart/")):
                token = str((await request.form()).get("csrf") or "")
        if not same_token(token, session.csrf):
            raise CsrfFailed()
    return found


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    me: Viewer | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    values = {
        "request": request,
        "me": me,
        "csrf": me.session.csrf if me else "",
        **(context or {}),
    }
    body = ENV.get_template(template).render(values)
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def _problem(request: Request, status: int, title: str, message: str) -> Response:
    me = getattr(request.state, "ui_viewer", None)
    if is_htmx(request):
        # Fragments land in an alert region of the page; htmx swaps 4xx answers too
        # (ui.js allows it), so the user reads the reason where they acted.
        return render(request, "_error.html", {"title": title, "message": message}, status=status)
    return render(request, "error.html", {"title": title, "message": message}, me=me, status=status)


def _sign_in(request: Request) -> Response:
    target = "/ui/sign-in?next=" + quote(request.url.path, safe="/")
    if is_htmx(request):
        return Response(status_code=200, headers={"hx-redirect": target, **SECURITY_HEADERS})
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


class UiRoute(APIRoute):
    """Routes whose failures answer as pages: sign-in redirect, 403, 4xx with the reason."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInNeeded:
                return _sign_in(request)
            except CsrfFailed:
                return _problem(
                    request,
                    403,
                    "Form expired",
                    "The form's security token did not match your session. Reload the page "
                    "and try again.",
                )
            except Forbidden as exc:
                return _problem(
                    request,
                    403,
                    "Not allowed",
                    f"Your API key lacks the {needed_scope(exc.area)} role this page needs.",
                )
            except TrellisError as exc:
                if exc.status_code >= 500:
                    logger.warning("UI request failed: %s", exc)
                return _problem(request, exc.status_code, "Request failed", exc.message)

        return handle
