"""Postgres administration for tests and benchmarks: statements that run outside any
Trellis database (scratch databases, roles, extensions), on a plain asyncpg connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.engine import make_url

__all__ = ["run_admin", "scratch_database"]


async def run_admin(url: str, *statements: str, timeout: float = 10.0) -> None:
    """Run ``statements`` one by one as the user of ``url`` (an SQLAlchemy URL)."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def scratch_database(admin_url: str, name: str) -> AsyncIterator[str]:
    """A new empty database ``name`` (one left over by a crashed run is dropped first),
    dropped again on exit; yields its URL."""
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    await run_admin(admin_url, drop, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await run_admin(admin_url, drop)
