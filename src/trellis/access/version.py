"""The access version: one row every change to keys or project settings bumps in its own
transaction, and every process polls to drop what it cached (key verifications, project
guards). Its own module so that both ``keys`` and ``projects`` (which ``keys`` imports)
write it the same way."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.store.tables import access_state

__all__ = ["bump_access_version"]


async def bump_access_version(conn: AsyncConnection) -> None:
    """Tell every process that access changed: call inside the change's transaction."""
    await conn.execute(
        update(access_state)
        .where(access_state.c.id == 1)
        .values(version=access_state.c.version + 1)
    )
