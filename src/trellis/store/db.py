"""The async database handle: one engine, tuned per backend, migrated at start-up.

SQLite (the embedded default) runs in WAL mode so the UI can read while the
trace writer writes, with ``synchronous=NORMAL`` (durable at checkpoints, fast
commits) and a busy timeout so concurrent writers wait instead of failing.
Postgres runs through asyncpg. Migrations run under a database-wide lock, so
several replicas starting at once against one database cannot race.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from trellis.errors import ConfigurationError
from trellis.store.tables import VERSION_TABLE

__all__ = ["Database", "normalize_url", "alembic_config", "MIGRATIONS_DIR"]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

#: Seconds a SQLite connection waits for a lock held by another writer before failing.
SQLITE_BUSY_TIMEOUT_MS = 15_000

_MIGRATION_LOCK = "trellis.migrations"


def normalize_url(url: str | URL) -> URL:
    """Pick the async driver for plain URLs (``postgresql://``, ``sqlite://``)."""
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg"):
            raise ConfigurationError(
                f"database driver {parsed.drivername!r} is not async; use postgresql+asyncpg://"
            )
        return parsed.set(drivername="postgresql+asyncpg")
    if backend == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise ConfigurationError(
                f"database driver {parsed.drivername!r} is not async; use sqlite+aiosqlite://"
            )
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ConfigurationError(f"unsupported database {parsed.drivername!r}: use SQLite or Postgres")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config built in code, so installed copies need no alembic.ini on disk."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def lock_id(name: str) -> int:
    """A stable signed 64-bit number for ``pg_advisory_xact_lock``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _json_dumps(value: Any) -> str:
    # Attributes come from user code: never let an odd value (a datetime, a set) fail a write.
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        # orjson refuses some values outright (ints beyond 64 bits); the stdlib takes them.
        return json.dumps(value, default=str)


class Database:
    """Owns the :class:`AsyncEngine`; ``connect()`` builds it and migrates to head."""

    def __init__(self, url: str | URL, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self.echo = echo
        self._engine: AsyncEngine | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Database:
        """The database named by :class:`trellis.settings.Settings`."""
        return cls(settings.resolved_database_url)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.url.get_backend_name()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Database.connect() has not been awaited")
        return self._engine

    async def connect(self, *, migrate: bool = True) -> None:
        """Create the engine (idempotent) and bring the schema to the latest revision."""
        if self._engine is not None:
            return
        self._engine = self._create_engine()
        if migrate:
            try:
                await self.migrate()
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    async def __aenter__(self) -> Database:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def migrate(self) -> None:
        """Upgrade to head inside one transaction that holds the database-wide lock."""
        async with self.exclusive(_MIGRATION_LOCK) as conn:
            await conn.run_sync(_upgrade_to_head)

    async def current_revision(self) -> str | None:
        """The revision the database is at (``None`` before the first migration)."""
        from alembic.runtime.migration import MigrationContext

        def read(sync_conn: Connection) -> str | None:
            ctx = MigrationContext.configure(sync_conn, opts={"version_table": VERSION_TABLE})
            return ctx.get_current_revision()

        async with self.engine.connect() as conn:
            return await conn.run_sync(read)

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[AsyncConnection]:
        """A transaction that holds a lock named ``name`` across every process using the database.

        Postgres: a transaction-scoped advisory lock. SQLite: ``BEGIN IMMEDIATE``, which
        takes the file's write lock (coarser than a named lock, and held only briefly).
        """
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                await conn.execution_options(trellis_sqlite_begin="BEGIN IMMEDIATE")
            async with conn.begin():
                if not self.is_sqlite:
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id(name)}
                    )
                yield conn

    def _create_engine(self) -> AsyncEngine:
        options: dict[str, Any] = {"echo": self.echo, "json_serializer": _json_dumps}
        if self.is_sqlite:
            database = self.url.database
            memory = database in (None, "", ":memory:") or "mode=memory" in str(self.url)
            if memory:
                # One connection shared by everyone, or each would see its own empty database.
                options["poolclass"] = StaticPool
            elif database is not None:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(self.url, **options)
            _install_sqlite_hooks(engine, wal=not memory)
            return engine
        options.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        return create_async_engine(self.url, **options)


def _upgrade_to_head(sync_conn: Connection) -> None:
    command.upgrade(alembic_config(sync_conn), "head")


def _install_sqlite_hooks(engine: AsyncEngine, *, wal: bool) -> None:
    """Per-connection pragmas, and real ``BEGIN`` statements so transactions (and DDL) are atomic.

    The sqlite3 driver's own transaction handling defers BEGIN until the first write and
    never wraps DDL; handing control to SQLAlchemy is the approach its documentation gives.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("trellis_sqlite_begin", "BEGIN"))
