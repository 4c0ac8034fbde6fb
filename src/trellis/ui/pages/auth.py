"""Sign-in with an API key, sign-out, and the home page that leads to the first allowed area."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from trellis.access.projects import validate_project_id
from trellis.errors import NotFoundError
from trellis.ui.sessions import COOKIE, CSRF_COOKIE, IDLE_SECONDS, same_token
from trellis.ui.web import SECURITY_HEADERS, UiRoute, render, runtime, sessions, viewer

router = APIRouter(route_class=UiRoute)


def _safe_next(target: str | None) -> str:
    """Only a path inside the UI: never an open redirect to another site."""
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _form(
    request: Request, error: str | None = None, status: int = 200, target: str | None = None
) -> Response:
    token = secrets.token_urlsafe(32)
    target = _safe_next(target or request.query_params.get("next"))
    response = render(
        request,
        "sign_in.html",
        {"token": token, "next": target, "error": error},
        status=status,
    )
    response.set_cookie(
        CSRF_COOKIE, token, httponly=True, samesite="strict", path="/ui", secure=_secure(request)
    )
    return response


@router.get("/ui/sign-in")
async def sign_in_page(request: Request) -> Response:
    return _form(request)


@router.post("/ui/sign-in")
async def sign_in(request: Request) -> Response:
    form = await request.form()
    token = str(form.get("csrf") or "")
    target = str(form.get("next") or "")
    if not same_token(token, request.cookies.get(CSRF_COOKIE) or "\x00"):
        return _form(request, "The sign-in form expired; please try again.", 403, target)
    secret = str(form.get("api_key") or "").strip()
    keys = runtime(request).keys
    assert keys is not None
    record = await keys.verify(secret) if secret else None
    if record is None:
        return _form(request, "That API key is not valid (or it was revoked).", 401, target)
    if record.expired():  # as the API answers it: 401 key_expired
        return _form(request, "That API key has expired: ask an admin for a new one.", 401, target)
    session = await sessions(request).create(record.id)
    response = RedirectResponse(_safe_next(target), status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=IDLE_SECONDS,
        httponly=True,
        samesite="strict",
        path="/ui",
        secure=_secure(request),
    )
    response.delete_cookie(CSRF_COOKIE, path="/ui")
    return response


@router.post("/ui/sign-out")
async def sign_out(request: Request) -> Response:
    me = await viewer(request)
    await sessions(request).end(me.session.id)
    response = RedirectResponse("/ui/sign-in", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.get("/ui/")
async def home(request: Request) -> Response:
    me = await viewer(request)
    return render(request, "home.html", {"title": "Home"}, me=me)


@router.get("/ui")
async def home_redirect() -> Response:
    return RedirectResponse("/ui/", status_code=308)


@router.post("/ui/project")
async def choose_project(request: Request) -> Response:
    """The built-in admin picks the project pages act in (empty: every project), kept in
    its session; as ``X-Trellis-Project`` does for the API. Other keys have their own."""
    me = await viewer(request)
    if not me.key.spans_projects:
        raise NotFoundError("Only the built-in admin chooses a project.", code="project_not_found")
    form = await request.form()
    chosen = str(form.get("project") or "").strip() or None
    if chosen is not None:
        projects = runtime(request).projects
        assert projects is not None
        await projects.require(validate_project_id(chosen))
    await sessions(request).choose_project(me.session.id, chosen)
    target = _safe_next(str(form.get("next") or ""))
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
