"""What every route does at the edge: authenticate (key, role, project), read a bounded
JSON body, validate."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar
from urllib.parse import parse_qs

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from trellis.access.projects import validate_project_id
from trellis.errors import (
    AuthenticationError,
    InvalidRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
)
from trellis.inference.callers import (
    audit_entry,
    caller_for,
    not_found_outside,
    project_filter,
    require_role,
)
from trellis.inference.gateway import Caller
from trellis.nesting import check_body, shallow_by_count
from trellis.runtime import Trellis
from trellis.server.deadlines import body_deadlines
from trellis.server.errors import validation_error

__all__ = [
    "runtime",
    "header",
    "authenticate",
    "authenticate_scope",
    "audit_entry",
    "project_filter",
    "not_found_outside",
    "read_json",
    "read_json_body",
    "parse_body",
]

M = TypeVar("M", bound=BaseModel)


def runtime(request: Request) -> Trellis:
    return request.app.state.trellis  # type: ignore[no-any-return]


def header(scope: Scope, name: bytes) -> str | None:
    """One request header, by its lower-case name (ASGI servers lower-case them)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def _bearer(scope: Scope) -> str:
    value = header(scope, b"authorization")
    if value:
        kind, _, token = value.partition(" ")
        if kind.lower() == "bearer" and token.strip():
            return token.strip()
    key = header(scope, b"x-api-key")
    if key:
        return key.strip()
    raise AuthenticationError(
        "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
        code="missing_api_key",
    )


Roles = str | tuple[str, ...]

#: Where the built-in admin names the project it acts in (else it spans every project).
PROJECT_HEADER = b"x-trellis-project"


async def authenticate(request: Request, scope: Roles) -> Caller:
    """The verified caller, or 401 (no/unknown/expired key) / 403 (key lacks every role in
    ``scope``) / 404 (a project the key cannot act in)."""
    return await authenticate_scope(runtime(request), request.scope, scope)


def _chosen_project(asgi_scope: Scope) -> str | None:
    chosen = header(asgi_scope, PROJECT_HEADER)
    if chosen is None and asgi_scope.get("query_string"):
        values = parse_qs(asgi_scope["query_string"].decode("latin-1")).get("project")
        chosen = values[-1] if values else None
    return None if chosen is None else validate_project_id(chosen.strip())


async def authenticate_scope(trellis: Trellis, asgi_scope: Scope, scope: Roles) -> Caller:
    """``authenticate`` for a raw ASGI request (the hot endpoints have no ``Request``)."""
    started = time.time_ns()
    secret = _bearer(asgi_scope)
    keys = trellis.keys
    assert keys is not None
    record = await keys.verify(secret)
    if record is None:
        shown = secret[:6] + "..." + secret[-4:] if len(secret) > 12 else "***"
        raise AuthenticationError(f"Incorrect API key provided: {shown}.")
    if record.expired():
        raise AuthenticationError(
            f"The API key {record.id} has expired: ask an admin for a new one.",
            code="key_expired",
        )
    require_role(record, scope)
    cache_control = (header(asgi_scope, b"cache-control") or "").lower()
    return await caller_for(
        record,
        trellis.projects,
        chosen=_chosen_project(asgi_scope) if record.spans_projects else None,
        named=header(asgi_scope, PROJECT_HEADER),
        started_ns=started,
        no_cache="no-cache" in cache_control,
        no_store="no-store" in cache_control,
    )


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object; 413 past the configured size, 400 when it is not JSON."""
    return await read_json_body(runtime(request), request.scope, request.receive)


async def read_json_body(trellis: Trellis, scope: Scope, receive: Receive) -> dict[str, Any]:
    """``read_json`` for a raw ASGI request: the body straight from ``receive``.

    Bounded in size (``max_body_bytes``: 413), in the time it may take to arrive
    (``body_timeout``: 408, connection closed) and in nesting (``max_json_depth``: 400),
    so what reaches validation can be encoded, cached and stored.
    """
    settings = trellis.settings
    limit = settings.max_body_bytes
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"Request body is larger than the {limit} byte limit.")
    deadlines = body_deadlines()
    task = deadlines.enter(settings.body_timeout)
    body = b""
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            body += message.get("body", b"")
            if len(body) > limit:
                raise PayloadTooLargeError(f"Request body is larger than the {limit} byte limit.")
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        if not deadlines.expired(task):
            raise
        raise RequestTimeoutError(
            f"The request body did not arrive within {settings.body_timeout:g} seconds.",
        ) from None
    finally:
        deadlines.leave(task)
    if not body.strip():
        raise InvalidRequestError(
            "The request body is empty; send a JSON object.", code="empty_body"
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    if not shallow_by_count(body, settings.max_json_depth):
        check_body(data, settings.max_json_depth)
    return data


def parse_body(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
