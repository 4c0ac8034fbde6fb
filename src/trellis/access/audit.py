"""The audit log: who did what to keys, projects, rules, collections and settings, when, and
from where.

An entry is written with :func:`record` inside the transaction of the action it describes,
so an action and its entry commit (or roll back) together. Details pass through
:func:`redact_detail` first: anything that looks like a secret never reaches the table.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.errors import InvalidRequestError
from trellis.store.db import Database
from trellis.store.tables import audit_log

__all__ = [
    "Actor",
    "AuditEntry",
    "AuditLog",
    "AuditPage",
    "record",
    "recorder",
    "redact_detail",
]

#: Detail keys whose values are never stored (a new secret, a hash).
_SECRET_KEYS = frozenset({"key", "secret", "key_hash", "previous_hash", "password", "token"})
_MAX_TEXT = 500


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts and from where: the key (None in-process or from the CLI) and the client."""

    key_id: str | None = None
    key_name: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One administrative action: ``action`` is ``<thing>.<verb>`` (``key.create``)."""

    actor: Actor
    action: str
    project_id: str
    target: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def with_target(self, target: str) -> AuditEntry:
        return replace(self, target=target)


def redact_detail(value: Any) -> Any:
    """``value`` with secret-named fields masked and long strings cut (recursively)."""
    if isinstance(value, Mapping):
        return {
            str(k): "[redacted]" if str(k).lower() in _SECRET_KEYS else redact_detail(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_detail(v) for v in value]
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        return value[:_MAX_TEXT] + "…"
    return value


async def record(conn: AsyncConnection, entry: AuditEntry) -> None:
    """Write ``entry`` on ``conn``: the caller's transaction, the one of the action."""
    actor = entry.actor
    await conn.execute(
        audit_log.insert().values(
            id=os.urandom(12).hex(),
            at=time.time(),
            actor_id=actor.key_id,
            actor_name=(actor.key_name or None) and actor.key_name[:200],  # type: ignore[index]
            project_id=entry.project_id,
            action=entry.action,
            target=entry.target,
            detail=redact_detail(dict(entry.detail)) or None,
            client_ip=actor.client_ip,
            user_agent=(actor.user_agent or None) and actor.user_agent[:_MAX_TEXT],  # type: ignore[index]
        )
    )


@dataclass(slots=True)
class AuditPage:
    rows: list[dict[str, Any]]
    next_cursor: str | None


def recorder(entry: AuditEntry) -> Callable[[AsyncConnection, str], Awaitable[None]]:
    """A hook that writes ``entry`` with the target it is given, in the caller's
    transaction (for stores that know the target's id only inside it: alert rules)."""

    async def write(conn: AsyncConnection, target: str) -> None:
        await record(conn, entry.with_target(target))

    return write


def _encode_cursor(at: float, entry_id: str) -> str:
    return base64.urlsafe_b64encode(f"{at!r}|{entry_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        at, _, entry_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return float(at), entry_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("cursor is not one this API returned", param="cursor") from None


class AuditLog:
    """Reads the audit log, newest first, in keyset pages (as ``GET /v1/traces`` does)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def page(
        self,
        *,
        project_id: str | None = None,
        actor_id: str | None = None,
        action: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> AuditPage:
        """Entries matching every given filter; ``action`` ending in ``.`` is a prefix
        (``key.`` for every key action). ``project_id`` None reads every project's."""
        c = audit_log.c
        query = select(audit_log).order_by(c.at.desc(), c.id.desc()).limit(limit + 1)
        if project_id is not None:
            query = query.where(c.project_id == project_id)
        if actor_id is not None:
            query = query.where(c.actor_id == actor_id)
        if action is not None:
            if action.endswith("."):
                query = query.where(c.action.startswith(action, autoescape=True))
            else:
                query = query.where(c.action == action)
        if since is not None:
            query = query.where(c.at >= since)
        if until is not None:
            query = query.where(c.at < until)
        if cursor is not None:
            at, entry_id = _decode_cursor(cursor)
            query = query.where(or_(c.at < at, and_(c.at == at, c.id < entry_id)))
        async with self.db.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings().all()]
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = _encode_cursor(rows[-1]["at"], rows[-1]["id"])
        return AuditPage(rows, next_cursor)
