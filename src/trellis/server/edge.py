"""What every route does at the edge: authenticate, read a bounded JSON body, validate."""

from __future__ import annotations

import time
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from trellis.errors import (
    AuthenticationError,
    InvalidRequestError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from trellis.inference.gateway import Caller
from trellis.runtime import Trellis
from trellis.server.errors import validation_error

__all__ = ["runtime", "authenticate", "read_json", "parse_body"]

M = TypeVar("M", bound=BaseModel)


def runtime(request: Request) -> Trellis:
    return request.app.state.trellis  # type: ignore[no-any-return]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    raise AuthenticationError(
        "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
        code="missing_api_key",
    )


async def authenticate(request: Request, scope: str) -> Caller:
    """The verified caller, or 401 (no/unknown key) / 403 (key lacks the scope)."""
    started = time.time_ns()
    secret = _bearer(request)
    keys = runtime(request).keys
    assert keys is not None
    record = await keys.verify(secret)
    if record is None:
        shown = secret[:6] + "..." + secret[-4:] if len(secret) > 12 else "***"
        raise AuthenticationError(f"Incorrect API key provided: {shown}.")
    if not record.has_scope(scope):
        raise PermissionDeniedError(
            f"This API key lacks the '{scope}' scope needed here.", code="insufficient_scope"
        )
    cache_control = request.headers.get("cache-control", "").lower()
    return Caller(
        key=record,
        auth_start_ns=started,
        auth_end_ns=time.time_ns(),
        no_cache="no-cache" in cache_control,
        no_store="no-store" in cache_control,
    )


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object; 413 past the configured size, 400 when it is not JSON."""
    limit = runtime(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"Request body is larger than the {limit} byte limit.")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise PayloadTooLargeError(f"Request body is larger than the {limit} byte limit.")
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
    return data


def parse_body(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
