"""Rate limits and budgets of keys and projects: admins set them, callers read usage.

Limits follow projects. A subject's project is the key's (``key:<id>``) or the one named
(``project:<id>``); a subject of another project answers 404, as a missing key does, and
``GET /v1/limits`` lists the caller's project's subjects only. A project's admin manages the
limits of its project's keys and reads its project's own limits; raising or removing a
project's limits (``project:<id>``) is the built-in admin's. Every change is audited in its
own transaction (``limit.set``, ``limit.delete``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from trellis.access.keys import ADMIN, INFERENCE, OBSERVER
from trellis.access.limits import Limiter, parse_subject
from trellis.errors import NotFoundError, PermissionDeniedError
from trellis.inference.call import Caller
from trellis.server.edge import (
    audit_entry,
    authenticate,
    parse_body,
    read_json,
    runtime,
)
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes
from trellis.settings import LimitValues

router = APIRouter(prefix="/v1", tags=["limits"])

#: Read usage: a key its own and its project's; observers and admins the project's keys.
USAGE = (INFERENCE, OBSERVER)


def _limiter(request: Request) -> Limiter:
    limiter = runtime(request).limiter
    assert limiter is not None
    return limiter


async def _subject_project(request: Request, caller: Caller, subject: str) -> tuple[str, str]:
    """The subject's kind and project, or 404 for a key that does not exist or a subject
    outside the caller's project (the two answer alike). Project subjects are not checked
    for existence: the built-in admin may limit a project before its first key."""
    kind, ident = parse_subject(subject)
    if kind == "project":
        project_id = ident
    else:
        keys = runtime(request).keys
        assert keys is not None
        record = await keys.get(ident)
        if record is None or (record.spans_projects and not caller.all_projects):
            raise NotFoundError(f"No API key with id `{ident}`.", param="subject")
        project_id = record.project_id
    if not caller.all_projects and project_id != caller.project_id:
        raise NotFoundError(
            f"No API key with id `{ident}`." if kind == "key" else f"No project `{ident}`.",
            param="subject",
        )
    return kind, project_id


def _only_built_in_admin(caller: Caller, kind: str) -> None:
    """A project's limits bound what its admin may spend: only the built-in admin changes
    them."""
    if kind == "project" and not caller.key.spans_projects:
        raise PermissionDeniedError(
            "Only the built-in admin sets or removes a project's limits.",
            code="insufficient_scope",
        )


def limit_json(subject: str, values: LimitValues) -> dict[str, Any]:
    return {"object": "limit", "subject": subject, **values.model_dump()}


@router.get("/limits", **operation(scope=ADMIN))
async def list_limits(request: Request) -> JSONBytes:
    """The stored limits: the project's own and its keys' (the built-in admin: every one)."""
    caller = await authenticate(request, ADMIN)
    rows = await _limiter(request).store.list()
    if not caller.all_projects:
        keys = runtime(request).keys
        assert keys is not None
        mine = {f"key:{k.id}" for k in await keys.list(project_id=caller.project_id)}
        mine.add(f"project:{caller.project_id}")
        rows = [(s, v) for s, v in rows if s in mine]
    return JSONBytes({"object": "list", "data": [limit_json(s, v) for s, v in rows]})


@router.put("/limits/{subject}", **operation(scope=ADMIN, body=LimitValues, errors=[400, 404]))
async def put_limits(subject: str, request: Request) -> JSONBytes:
    """Set the subject's limits, replacing any before (a field left out: no such limit)."""
    caller = await authenticate(request, ADMIN)
    kind, project_id = await _subject_project(request, caller, subject)
    _only_built_in_admin(caller, kind)
    values = parse_body(LimitValues, await read_json(request))
    audit = audit_entry(
        request, caller, "limit.set", values.model_dump(exclude_none=True), project_id=project_id
    )
    await _limiter(request).store.put(subject, values, audit=audit)
    return JSONBytes(limit_json(subject, values))


@router.get("/limits/{subject}", **operation(scope=ADMIN, errors=[400, 404]))
async def get_limits(subject: str, request: Request) -> JSONBytes:
    """The subject's stored limits (404 when it has none: the settings' default applies)."""
    caller = await authenticate(request, ADMIN)
    await _subject_project(request, caller, subject)
    values = await _limiter(request).store.get(subject)
    if values is None:
        raise NotFoundError(
            f"No stored limits for `{subject}`; the settings' defaults apply to it.",
            code="limit_not_found",
        )
    return JSONBytes(limit_json(subject, values))


@router.delete("/limits/{subject}", **operation(scope=ADMIN, errors=[400, 404]))
async def delete_limits(subject: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, ADMIN)
    kind, project_id = await _subject_project(request, caller, subject)
    _only_built_in_admin(caller, kind)
    audit = audit_entry(request, caller, "limit.delete", project_id=project_id)
    if not await _limiter(request).store.delete(subject, audit=audit):
        raise NotFoundError(f"No stored limits for `{subject}`.", code="limit_not_found")
    return JSONBytes({"object": "limit", "subject": subject, "deleted": True})


@router.get("/usage/{subject}", **operation(scope=USAGE, errors=[400, 403, 404]))
async def get_usage(subject: str, request: Request) -> JSONBytes:
    """Current usage against the limits. A key reads its own (``key:<its id>``) and its
    project's; observers and admins every key of their project too (the built-in admin:
    any subject). Another project's subject is a 404."""
    caller = await authenticate(request, USAGE)
    kind, ident = parse_subject(subject)
    key = caller.key
    if not (key.has_scope(OBSERVER) or kind == "project" or ident == key.id):
        raise PermissionDeniedError(
            "Reading the usage of another key needs the 'observer' role.",
            code="insufficient_scope",
        )
    await _subject_project(request, caller, subject)
    return JSONBytes(await _limiter(request).usage(subject))
