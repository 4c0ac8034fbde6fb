"""Whose run it is: a run's model calls go through the gateway as the API key that started
it, so per-key bookkeeping (traces' ``key_id``, usage and spend), the key's allowed models
and cache opt-in, and the key's session and memory namespaces apply to the run. The key is
looked up again by id whenever a process starts driving the run (a start, a resume, a
recovery in another process), so a key revoked meanwhile stops the run instead of spending
on its behalf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from trellis.errors import PermissionDeniedError
from trellis.inference.call import Caller

__all__ = ["KeyLookup", "KeyRef", "RunKeyRevoked", "run_caller"]


class KeyLookup(Protocol):
    """What the run needs of the key store (``trellis.access.keys.KeyStore`` fits)."""

    async def get(self, key_id: str) -> Any: ...


class RunKeyRevoked(PermissionDeniedError):
    """The key that started the run was revoked (or deleted): the run may not go on."""

    code = "key_revoked"


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A key known only by its id (library use without a key store): it labels traces
    and namespaces sessions; it restricts no model."""

    id: str
    cache: bool = False

    def allows_model(self, model: str) -> bool:
        return True


async def run_caller(
    key_id: str | None, keys: KeyLookup | None, project_id: str = "default"
) -> Caller:
    """The gateway caller for a run started by ``key_id``. Workflow runs never append
    their model calls to a session (``session_record``): a run records one turn, its
    question and answer, when it finishes."""
    if key_id is None:
        return Caller(session_record=False, project_id=project_id)
    if keys is None:
        return Caller(key=KeyRef(key_id), session_record=False, project_id=project_id)
    key = await keys.get(key_id)
    expired = getattr(key, "expired", None)
    if key is None or getattr(key, "revoked", False) or (callable(expired) and expired()):
        raise RunKeyRevoked(f"the API key {key_id} that started this run was revoked")
    return Caller(key=key, session_record=False, project_id=project_id)
