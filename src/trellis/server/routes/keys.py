"""API key management for admins: create, list, change, rotate, revoke.

The built-in admin (project ``*``) manages every project's keys; an ``admin`` key of a
project manages only that project's (another project's key is a 404). Each change is
written to the audit log in the same transaction and reaches every process within
``key_poll_seconds``.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from trellis.access.keys import ADMIN, INFERENCE, ApiKeyRecord, KeyStore
from trellis.access.projects import ALL_PROJECTS
from trellis.durations import duration_seconds
from trellis.errors import InvalidRequestError, NotFoundError
from trellis.inference.call import Caller
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
from trellis.settings import LimitValues

router = APIRouter(prefix="/v1/keys", tags=["keys"])

Duration = Field(default=None, max_length=32, description="A duration: 30m, 24h, 30d")


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(
        default_factory=lambda: [INFERENCE],
        min_length=1,
        description="Roles: admin, inference, observer, ingest, eval",
    )
    allowed_models: list[str] | None = None
    cache: bool = Field(default=False, description="Cache answers even when not deterministic")
    limits: LimitValues | None = Field(
        default=None, description="Rate limits and budgets of the new key (/v1/limits/key:<id>)"
    )
    project: str | None = Field(
        default=None, max_length=64, description="The key's project (default: the caller's)"
    )
    expires_in: str | None = Duration


class UpdateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scopes: list[str] | None = Field(default=None, min_length=1)
    expires_in: str | None = Duration
    never_expires: bool = False


class RotateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace: str | None = Field(
        default=None,
        max_length=32,
        description="How long the old secret keeps working (24h); none: it stops at once",
    )


def key_json(record: ApiKeyRecord) -> dict[str, Any]:
    return {"object": "api_key", **record.to_dict()}


def _keys(request: Request) -> KeyStore:
    keys = runtime(request).keys
    assert keys is not None
    return keys


def _seconds(text: str | None, param: str) -> float | None:
    if text is None:
        return None
    try:
        return duration_seconds(text)
    except ValueError as exc:
        raise InvalidRequestError(f"{param} {exc}", param=param) from None


def _scope_of(caller: Caller) -> str | None:
    """The project whose keys the caller may change: None for the built-in admin."""
    return None if caller.key.spans_projects else caller.project_id


@router.get("", **operation(scope=ADMIN))
async def list_keys(request: Request) -> JSONBytes:
    caller = await authenticate(request, ADMIN)
    records = await _keys(request).list(project_id=project_filter(caller))
    return JSONBytes({"object": "list", "data": [key_json(r) for r in records]})


@router.post("", status_code=201, **operation(scope=ADMIN, body=CreateKey, errors=[404]))
async def create_key(request: Request) -> JSONBytes:
    caller = await authenticate(request, ADMIN)
    body = parse_body(CreateKey, await read_json(request))
    project = body.project or caller.project_id
    if caller.key.spans_projects:
        if project != ALL_PROJECTS:
            projects = runtime(request).projects
            assert projects is not None
            await projects.require(project)
    elif project != caller.project_id:
        raise NotFoundError(f"No project `{project}`.", code="project_not_found", param="project")
    ttl = _seconds(body.expires_in, "expires_in")
    record, secret = await _keys(request).create(
        body.name,
        scopes=body.scopes,
        allowed_models=body.allowed_models,
        cache=body.cache,
        project_id=project,
        expires_at=None if ttl is None else time.time() + ttl,
        audit=audit_entry(
            request,
            caller,
            "key.create",
            {"expires_in": body.expires_in, "allowed_models": body.allowed_models},
            project_id=project,
        ),
    )
    answer = {**key_json(record), "key": secret}
    if body.limits is not None:
        limiter = runtime(request).limiter
        assert limiter is not None
        await limiter.store.put(
            f"key:{record.id}",
            body.limits,
            audit=audit_entry(
                request,
                caller,
                "limit.set",
                body.limits.model_dump(exclude_none=True),
                project_id=project,
            ),
        )
        answer["limits"] = body.limits.model_dump()
    return JSONBytes(answer, status_code=201)


@router.patch("/{key_id}", **operation(scope=ADMIN, body=UpdateKey, errors=[400, 404, 409]))
async def update_key(key_id: str, request: Request) -> JSONBytes:
    """New roles or expiry for a live key; every process follows within a poll."""
    caller = await authenticate(request, ADMIN)
    body = parse_body(UpdateKey, await read_json(request))
    ttl = _seconds(body.expires_in, "expires_in")
    detail: dict[str, Any] = {"scopes": body.scopes, "expires_in": body.expires_in}
    if body.never_expires:
        detail["never_expires"] = True
    record = await _keys(request).update(
        key_id,
        scopes=body.scopes,
        expires_at=None if ttl is None else time.time() + ttl,
        clear_expiry=body.never_expires,
        project_id=_scope_of(caller),
        audit=audit_entry(request, caller, "key.update", detail),
    )
    if record is None:
        raise NotFoundError(f"No active API key with id `{key_id}`.")
    return JSONBytes(key_json(record))


@router.post("/{key_id}/rotate", **operation(scope=ADMIN, body=RotateKey, errors=[400, 404, 409]))
async def rotate_key(key_id: str, request: Request) -> JSONBytes:
    """A new secret (shown once); the old one keeps working for ``grace``."""
    caller = await authenticate(request, ADMIN)
    body = parse_body(RotateKey, await read_json(request))
    grace = _seconds(body.grace, "grace") or 0.0
    rotated = await _keys(request).rotate(
        key_id,
        grace,
        project_id=_scope_of(caller),
        audit=audit_entry(request, caller, "key.rotate", {"grace": body.grace}),
    )
    if rotated is None:
        raise NotFoundError(f"No active API key with id `{key_id}`.")
    record, secret = rotated
    return JSONBytes({**key_json(record), "key": secret})


@router.delete("/{key_id}", **operation(scope=ADMIN, errors=[404, 409]))
async def revoke_key(key_id: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, ADMIN)
    if not await _keys(request).revoke(
        key_id,
        project_id=_scope_of(caller),
        audit=audit_entry(request, caller, "key.revoke"),
    ):
        raise NotFoundError(f"No active API key with id `{key_id}`.")
    return JSONBytes({"id": key_id, "object": "api_key", "revoked": True})
