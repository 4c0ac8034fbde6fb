"""API keys (admin): list, create (the secret shown once), revoke.

As over ``/v1/keys``: a project's admin sees, creates and revokes its project's keys (another
project's key is a 404); the built-in admin those of the project it chose, or every
project's. A new key goes in the viewer's project. Creating and revoking are audited.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from trellis.access.keys import SCOPES
from trellis.errors import InvalidRequestError, NotFoundError
from trellis.ui.web import UiRoute, Viewer, is_htmx, render, runtime, sessions, viewer

router = APIRouter(route_class=UiRoute)


async def _page(request: Request, me: Viewer, **extra: object) -> Response:
    keys = runtime(request).keys
    assert keys is not None
    context = {
        "title": "API keys",
        "keys": await keys.list(project_id=me.project),
        "scopes": sorted(SCOPES),
        **extra,
    }
    template = "keys/_panel.html" if is_htmx(request) else "keys/index.html"
    status = 201 if extra.get("created") else 200
    return render(request, template, context, me=me, status=status)


@router.get("/ui/keys")
async def list_keys(request: Request) -> Response:
    me = await viewer(request, "keys")
    return await _page(request, me)


@router.post("/ui/keys")
async def create_key(request: Request) -> Response:
    me = await viewer(request, "keys")
    form = await request.form()
    name = str(form.get("name") or "").strip()
    if not name or len(name) > 200:
        raise InvalidRequestError("A key needs a name of 1 to 200 characters.", param="name")
    scopes = [str(s) for s in form.getlist("scopes")]
    models_text = str(form.get("allowed_models") or "").strip()
    models = [m.strip() for m in models_text.split(",") if m.strip()] or None
    keys = runtime(request).keys
    assert keys is not None
    project = me.caller.project_id
    record, secret = await keys.create(
        name,
        scopes=scopes,
        allowed_models=models,
        cache=form.get("cache") == "on",
        project_id=project,
        audit=me.audit(
            request,
            "key.create",
            {"allowed_models": models},
            project_id=project,
        ),
    )
    return await _page(request, me, created=record, secret=secret)


@router.post("/ui/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request) -> Response:
    me = await viewer(request, "keys")
    keys = runtime(request).keys
    assert keys is not None
    # A project's admin revokes only its project's keys (another's is a 404, as over /v1).
    scope = None if me.key.spans_projects else me.caller.project_id
    if not await keys.revoke(key_id, project_id=scope, audit=me.audit(request, "key.revoke")):
        raise NotFoundError(f"No active API key with id `{key_id}`.")
    await sessions(request).end_for_key(key_id)
    return await _page(request, me, revoked=key_id)
