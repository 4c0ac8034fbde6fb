"""Rate limits and budgets of keys and projects: admins set them, callers read usage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from trellis.access.keys import ADMIN, INFERENCE
from trellis.access.limits import Limiter, parse_subject
from trellis.errors import NotFoundError, PermissionDeniedError
from trellis.server.edge import authenticate, parse_body, read_json, runtime
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes
from trellis.settings import LimitValues

router = APIRouter(prefix="/v1", tags=["limits"])


def _limiter(request: Request) -> Limiter:
    limiter = runtime(request).limiter
    assert limiter is not None
    return limiter


async def _known_key(request: Request, kind: str, ident: str) -> None:
    """404 for a key subject naming no key (projects are not checked: any name may be
    limited before its first key)."""
    keys = runtime(request).keys
    assert keys is not None
    if kind == "key" and await keys.get(ident) is None:
        raise NotFoundError(f"No API key with id `{ident}`.", param="subject")


def limit_json(subject: str, values: LimitValues) -> dict[str, Any]:
    return {"object": "limit", "subject": subject, **values.model_dump()}


@router.get("/limits", **operation(scope=ADMIN))
async def list_limits(request: Request) -> JSONBytes:
    await authenticate(request, ADMIN)
    rows = await _limiter(request).store.list()
    return JSONBytes({"object": "list", "data": [limit_json(s, v) for s, v in rows]})


@router.put("/limits/{subject}", **operation(scope=ADMIN, body=LimitValues, errors=[400, 404]))
async def put_limits(subject: str, request: Request) -> JSONBytes:
    """Set the subject's limits, replacing any before (a field left out: no such limit)."""
    await authenticate(request, ADMIN)
    kind, ident = parse_subject(subject)
    values = parse_body(LimitValues, await read_json(request))
    await _known_key(request, kind, ident)
    await _limiter(request).store.put(subject, values)
    return JSONBytes(limit_json(subject, values))


@router.get("/limits/{subject}", **operation(scope=ADMIN, errors=[400, 404]))
async def get_limits(subject: str, request: Request) -> JSONBytes:
    """The subject's stored limits (404 when it has none: the settings' default applies)."""
    await authenticate(request, ADMIN)
    parse_subject(subject)
    values = await _limiter(request).store.get(subject)
    if values is None:
        raise NotFoundError(
            f"No stored limits for `{subject}`; the settings' defaults apply to it.",
            code="limit_not_found",
        )
    return JSONBytes(limit_json(subject, values))


@router.delete("/limits/{subject}", **operation(scope=ADMIN, errors=[400, 404]))
async def delete_limits(subject: str, request: Request) -> JSONBytes:
    await authenticate(request, ADMIN)
    if not await _limiter(request).store.delete(subject):
        raise NotFoundError(f"No stored limits for `{subject}`.", code="limit_not_found")
    return JSONBytes({"object": "limit", "subject": subject, "deleted": True})


@router.get("/usage/{subject}", **operation(scope=INFERENCE, errors=[400, 403, 404]))
async def get_usage(subject: str, request: Request) -> JSONBytes:
    """Current usage against the limits. Admins read any subject; a key reads its own
    (``key:<its id>``) and its project's."""
    caller = await authenticate(request, INFERENCE)
    kind, ident = parse_subject(subject)
    key = caller.key
    if not key.has_scope(ADMIN):
        own = (kind == "key" and ident == key.id) or (kind == "project" and ident == caller.project)
        if not own:
            raise PermissionDeniedError(
                "Only admins read the usage of other keys and projects.",
                code="insufficient_scope",
            )
    await _known_key(request, kind, ident)
    return JSONBytes(await _limiter(request).usage(subject))
