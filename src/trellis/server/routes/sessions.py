"""Stored conversations over HTTP: read one back, or forget it.

A session is the calling key's own (``trellis.session_id`` on chat completions
creates it): another key's session of the same id is a different one, so it is a 404
here only when this key has none.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Request

from trellis.access.keys import INFERENCE
from trellis.errors import NotFoundError
from trellis.inference.conversation import SessionKey
from trellis.memory.sessions import SessionMemory
from trellis.server.edge import authenticate, runtime
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

SessionId = Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@-]+$")


def _sessions(request: Request) -> SessionMemory:
    sessions = runtime(request).sessions
    assert sessions is not None, "the runtime is started before requests are served"
    return sessions


@router.get("/{session_id}", **operation(scope=INFERENCE, errors=[400, 404]))
async def get_session(request: Request, session_id: str = SessionId) -> JSONBytes:
    """The running summary and the turns after it: what the next request will get."""
    caller = await authenticate(request, INFERENCE)
    key = SessionKey(caller.key_id or "", session_id)
    found = await _sessions(request).messages(key)
    if found is None:
        raise NotFoundError(f"No session `{session_id}`.", param="session_id")
    summary, messages = found
    return JSONBytes(
        {
            "object": "session",
            "id": session_id,
            "summary": summary,
            "messages": [m.model_dump(mode="json", exclude_none=True) for m in messages],
        }
    )


@router.delete("/{session_id}", **operation(scope=INFERENCE, errors=[400, 404]))
async def delete_session(request: Request, session_id: str = SessionId) -> JSONBytes:
    """Forget the conversation: its turns and summary are deleted."""
    caller = await authenticate(request, INFERENCE)
    if not await _sessions(request).delete(SessionKey(caller.key_id or "", session_id)):
        raise NotFoundError(f"No session `{session_id}`.", param="session_id")
    return JSONBytes({"object": "session", "id": session_id, "deleted": True})
