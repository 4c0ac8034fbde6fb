"""Signed-in browser sessions: a random id in an HttpOnly cookie, mapped to a key id.

The cookie carries no secret of the key: only an opaque session id, which the database
(table ``ui_sessions``) knows by its SHA-256 alone, with the key's id and a CSRF token.
Every worker and replica reads the same rows, so the UI works behind several of them and
sessions outlive a restart. A session expires ``IDLE_SECONDS`` after its last request
(the last-seen time is written at most once a minute, not on every page) and ends at
sign-out or when its key is revoked. The built-in admin's chosen project is kept with it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from trellis.store.db import Database
from trellis.store.tables import ui_sessions

__all__ = ["UiSession", "UiSessions", "COOKIE", "CSRF_COOKIE", "IDLE_SECONDS"]

#: The session cookie (HttpOnly, SameSite=Strict, path /ui).
COOKIE = "trellis_ui"
#: The sign-in form's double-submit token, before any session exists.
CSRF_COOKIE = "trellis_ui_csrf"
IDLE_SECONDS = 8 * 3600
#: A session's last-seen time is written when it is older than this (seconds).
TOUCH_SECONDS = 60.0


@dataclass(slots=True)
class UiSession:
    id: str
    key_id: str
    csrf: str
    seen: float
    #: The project the built-in admin acts in (None: every project); other keys' own.
    project_id: str | None = None


def same_token(given: str | None, expected: str) -> bool:
    """A constant-time comparison of a submitted token with the expected one."""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())  # type: ignore[union-attr]


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class UiSessions:
    """The sessions of every server process, in Trellis' database."""

    def __init__(
        self,
        db: Database,
        idle_seconds: float = IDLE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.idle_seconds = idle_seconds
        self._clock = clock

    async def create(self, key_id: str) -> UiSession:
        now = self._clock()
        session = UiSession(secrets.token_urlsafe(32), key_id, secrets.token_urlsafe(32), now)
        async with self.db.write() as conn:
            # Expired rows go when someone signs in (indexed on expires_at): no sweeper task.
            await conn.execute(sa.delete(ui_sessions).where(ui_sessions.c.expires_at <= now))
            await conn.execute(
                sa.insert(ui_sessions),
                [
                    {
                        "id_hash": _digest(session.id),
                        "key_id": key_id,
                        "csrf": session.csrf,
                        "created_at": now,
                        "last_seen": now,
                        "expires_at": now + self.idle_seconds,
                    }
                ],
            )
        return session

    async def get(self, session_id: str | None) -> UiSession | None:
        """The live session of a cookie's id (its idle time restarts), else None."""
        if not session_id or len(session_id) > 200:
            return None
        digest = _digest(session_id)
        now = self._clock()
        c = ui_sessions.c
        async with self.db.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(c.key_id, c.csrf, c.last_seen, c.project_id).where(
                            c.id_hash == digest, c.expires_at > now
                        )
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        if now - row["last_seen"] >= TOUCH_SECONDS:
            async with self.db.write() as conn:
                await conn.execute(
                    sa.update(ui_sessions)
                    .where(c.id_hash == digest)
                    .values(last_seen=now, expires_at=now + self.idle_seconds)
                )
        return UiSession(session_id, row["key_id"], row["csrf"], now, row["project_id"])

    async def choose_project(self, session_id: str, project_id: str | None) -> None:
        """Keep the project the built-in admin chose (None: every project) in the session."""
        async with self.db.write() as conn:
            await conn.execute(
                sa.update(ui_sessions)
                .where(ui_sessions.c.id_hash == _digest(session_id))
                .values(project_id=project_id)
            )

    async def end(self, session_id: str | None) -> None:
        if session_id:
            async with self.db.write() as conn:
                await conn.execute(
                    sa.delete(ui_sessions).where(ui_sessions.c.id_hash == _digest(session_id))
                )

    async def end_for_key(self, key_id: str) -> int:
        """A revoked key's sessions end with it; how many there were."""
        async with self.db.write() as conn:
            result = await conn.execute(
                sa.delete(ui_sessions).where(ui_sessions.c.key_id == key_id)
            )
        return int(result.rowcount or 0)
