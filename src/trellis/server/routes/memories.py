"""Long-term memories over HTTP: facts about a user that later prompts recall.

Memories belong to the API key that wrote them (``inference`` scope): a key lists,
changes and deletes only its own, and chat requests of that key naming the user
(``trellis.user_id`` or ``user``) recall them.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from trellis.access.keys import INFERENCE
from trellis.errors import InvalidRequestError
from trellis.memory.longterm import LongTermMemory
from trellis.server.edge import authenticate, parse_body, read_json, runtime
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes

router = APIRouter(prefix="/v1/memories", tags=["memories"])

UserId = Field(min_length=1, max_length=200)


class AddMemory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = UserId
    text: str = Field(min_length=1, max_length=2000)


class UpdateMemory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=2000)


class MemoryReply(BaseModel):
    object: Literal["memory"] = "memory"
    id: str
    user: str
    text: str
    created_at: float
    updated_at: float
    #: True when the text updated a near-duplicate memory instead of adding one (200).
    updated: bool = False


def _memories(request: Request) -> LongTermMemory:
    memories = runtime(request).memories
    assert memories is not None, "the runtime is started before requests are served"
    return memories


@router.get("", **operation(scope=INFERENCE))
async def list_memories(
    request: Request, user: str | None = Query(default=None, min_length=1, max_length=200)
) -> JSONBytes:
    caller = await authenticate(request, INFERENCE)
    found = await _memories(request).list_memories(caller.key_id or "", user)
    return JSONBytes({"object": "list", "data": [m.to_dict() for m in found]})


@router.post(
    "",
    status_code=201,
    **operation(scope=INFERENCE, body=AddMemory, reply=MemoryReply, errors=[400], reply_also=[200]),
)
async def add_memory(request: Request) -> JSONBytes:
    """201 with a new memory; 200 when it updated a near-duplicate (``"updated": true``)."""
    caller = await authenticate(request, INFERENCE)
    body = parse_body(AddMemory, await read_json(request))
    memory, created = await _memories(request).add(caller.key_id or "", body.user, body.text)
    return JSONBytes(
        {**memory.to_dict(), "updated": not created}, status_code=201 if created else 200
    )


@router.delete("", **operation(scope=INFERENCE, errors=[400]))
async def forget_user(
    request: Request, user: str | None = Query(default=None, min_length=1, max_length=200)
) -> JSONBytes:
    """Delete everything this key remembers about one user."""
    caller = await authenticate(request, INFERENCE)
    if user is None:
        raise InvalidRequestError("name the user whose memories to delete: ?user=", param="user")
    deleted = await _memories(request).forget_user(caller.key_id or "", user)
    return JSONBytes({"object": "list", "user": user, "deleted": deleted})


@router.get("/{memory_id}", **operation(scope=INFERENCE, errors=[404]))
async def get_memory(memory_id: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, INFERENCE)
    return JSONBytes((await _memories(request).get(caller.key_id or "", memory_id)).to_dict())


@router.patch("/{memory_id}", **operation(scope=INFERENCE, body=UpdateMemory, errors=[400, 404]))
async def update_memory(memory_id: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, INFERENCE)
    body = parse_body(UpdateMemory, await read_json(request))
    memory = await _memories(request).update(caller.key_id or "", memory_id, body.text)
    return JSONBytes(memory.to_dict())


@router.delete("/{memory_id}", **operation(scope=INFERENCE, errors=[404]))
async def delete_memory(memory_id: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, INFERENCE)
    await _memories(request).delete(caller.key_id or "", memory_id)
    return JSONBytes({"object": "memory", "id": memory_id, "deleted": True})
