"""Signed-in browser sessions: a random id in an HttpOnly cookie, mapped here to a key id.

The cookie carries no secret of the key: only an opaque session id that this process
maps to the key's id and a CSRF token. Sessions live in memory (one ``trellis serve``
worker: signing in again after a restart is the cost), expire after ``IDLE_SECONDS``
without a request, and end at sign-out or when their key is revoked.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

__all__ = ["UiSession", "UiSessions", "COOKIE", "CSRF_COOKIE", "IDLE_SECONDS"]

#: The session cookie (HttpOnly, SameSite=Strict, path /ui).
COOKIE = "trellis_ui"
#: The sign-in form's double-submit token, before any session exists.
CSRF_COOKIE = "trellis_ui_csrf"
IDLE_SECONDS = 8 * 3600
MAX_SESSIONS = 10_000


@dataclass(slots=True)
class UiSession:
    id: str
    key_id: str
    csrf: str
    seen: float = field(default_factory=time.monotonic)


def same_token(given: str | None, expected: str) -> bool:
    """A constant-time comparison of a submitted token with the expected one."""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())  # type: ignore[union-attr]


class UiSessions:
    """The sessions of one server process."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._by_id: dict[str, UiSession] = {}

    def create(self, key_id: str) -> UiSession:
        self._expire()
        if len(self._by_id) >= MAX_SESSIONS:  # the oldest make room: memory stays bounded
            for old in sorted(self._by_id.values(), key=lambda s: s.seen)[: MAX_SESSIONS // 10]:
                del self._by_id[old.id]
        session = UiSession(secrets.token_urlsafe(32), key_id, secrets.token_urlsafe(32))
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> UiSession | None:
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > self.idle_seconds:
            del self._by_id[session_id]
            return None
        session.seen = now
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)

    def end_for_key(self, key_id: str) -> None:
        """A revoked key's sessions end with it."""
        for session in [s for s in self._by_id.values() if s.key_id == key_id]:
            del self._by_id[session.id]

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.idle_seconds
        for session in [s for s in self._by_id.values() if s.seen < cutoff]:
            del self._by_id[session.id]
