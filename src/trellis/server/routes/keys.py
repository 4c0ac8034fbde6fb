"""API key management for admins: create, list, revoke."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from trellis.access.keys import ADMIN, INFERENCE, ApiKeyRecord
from trellis.errors import NotFoundError
from trellis.server.edge import authenticate, parse_body, read_json, runtime
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes
from trellis.settings import LimitValues

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(default_factory=lambda: [INFERENCE], min_length=1)
    allowed_models: list[str] | None = None
    cache: bool = Field(default=False, description="Cache answers even when not deterministic")
    limits: LimitValues | None = Field(
        default=None, description="Rate limits and budgets of the new key (/v1/limits/key:<id>)"
    )


def key_json(record: ApiKeyRecord) -> dict[str, Any]:
    return {"object": "api_key", **record.to_dict()}


@router.get("", **operation(scope=ADMIN))
async def list_keys(request: Request) -> JSONBytes:
    await authenticate(request, ADMIN)
    keys = runtime(request).keys
    assert keys is not None
    return JSONBytes({"object": "list", "data": [key_json(r) for r in await keys.list()]})


@router.post("", status_code=201, **operation(scope=ADMIN, body=CreateKey))
async def create_key(request: Request) -> JSONBytes:
    await authenticate(request, ADMIN)
    body = parse_body(CreateKey, await read_json(request))
    keys = runtime(request).keys
    assert keys is not None
    record, secret = await keys.create(
        body.name, scopes=body.scopes, allowed_models=body.allowed_models, cache=body.cache
    )
    answer = {**key_json(record), "key": secret}
    if body.limits is not None:
        limiter = runtime(request).limiter
        assert limiter is not None
        await limiter.store.put(f"key:{record.id}", body.limits)
        answer["limits"] = body.limits.model_dump()
    return JSONBytes(answer, status_code=201)


@router.delete("/{key_id}", **operation(scope=ADMIN, errors=[404, 409]))
async def revoke_key(key_id: str, request: Request) -> JSONBytes:
    await authenticate(request, ADMIN)
    keys = runtime(request).keys
    assert keys is not None
    if not await keys.revoke(key_id):
        raise NotFoundError(f"No active API key with id `{key_id}`.")
    return JSONBytes({"id": key_id, "object": "api_key", "revoked": True})
