"""The async database handle: one engine, tuned per backend, migrated at start-up.

SQLite (the embedded default) runs in WAL mode so the UI can read while the
trace writer writes, with ``synchronous=NORMAL`` (durable at checkpoints, fast
commits) and a busy timeout so concurrent writers wait instead of failing.
Postgres runs through asyncpg. Migrations run under a database-wide lock, so
several replicas starting at once against one database cannot race.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from trellis.errors import ConfigurationError
from trellis.store.tables import VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config

    from trellis.settings import Settings

__all__ = [
    "Database",
    "normalize_url",
    "alembic_config",
    "json_dumps",
    "MIGRATIONS_DIR",
    "SQLITE_BUSY_TIMEOUT_MS",
]

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
    from alembic.config import Config  # imported on use: Alembic is only needed at start-up

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def lock_id(name: str) -> int:
    """A stable signed 64-bit number for ``pg_advisory_xact_lock``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def json_dumps(value: Any) -> str:
    """JSON text as the engine writes it for JSON columns (other writers must match it)."""
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
        self._closers: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
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
    def sqlite_file(self) -> str | None:
        """The SQLite file (or ``file:`` URI); None for in-memory databases and Postgres."""
        if not self.is_sqlite:
            return None
        database = self.url.database
        if database in (None, "", ":memory:") or "mode=memory" in str(self.url):
            return None
        return database

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Database.connect() has not been awaited")
        return self._engine

    async def connect(self, *, migrate: bool = True) -> None:
        """Create the engine (idempotent) and bring the schema to the latest revision."""
        if self._engine is not None:
            return
        engine = self._create_engine()
        if self.sqlite_file is not None:
            try:
                await asyncio.to_thread(_enable_wal, self.sqlite_file)
            except BaseException:
                await engine.dispose()
                raise
        self._engine = engine
        if migrate:
            try:
                await self.migrate()
            except BaseException:
                await self.close()
                raise

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Call ``closer`` when the database closes, before the engine goes (a component
        holding its own connection to the same database, such as a writer thread)."""
        self._closers.append(closer)

    async def close(self) -> None:
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            try:
                await closer()
            except Exception:  # one failing closer must not keep the engine open
                logger.exception("closing a database companion failed")
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
        from alembic.util.exc import CommandError

        try:
            async with self.exclusive(_MIGRATION_LOCK) as conn:
                await conn.run_sync(_upgrade_to_head)
        except CommandError as exc:
            # Typically a newer Trellis already migrated this database past what we know.
            raise ConfigurationError(
                f"cannot migrate the database to this version of Trellis: {exc}"
            ) from exc

    async def current_revision(self) -> str | None:
        """The revision the database is at (``None`` before the first migration)."""
        from alembic.runtime.migration import MigrationContext

        def read(sync_conn: Connection) -> str | None:
            ctx = MigrationContext.configure(sync_conn, opts={"version_table": VERSION_TABLE})
            return ctx.get_current_revision()

        async with self.engine.connect() as conn:
            return await conn.run_sync(read)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction. On SQLite it takes the file's write lock at BEGIN
        (``BEGIN IMMEDIATE``): a deferred transaction that reads before it writes fails at
        once with "database is locked" when another connection wrote in between (WAL cannot
        upgrade a stale read snapshot), where this one waits for the busy timeout instead."""
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                await conn.execution_options(trellis_sqlite_begin="BEGIN IMMEDIATE")
            async with conn.begin():
                yield conn

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
        options: dict[str, Any] = {"echo": self.echo, "json_serializer": json_dumps}
        if self.is_sqlite:
            database = self.sqlite_file
            if database is None:
                # One connection shared by everyone, or each would see its own empty database.
                options["poolclass"] = StaticPool
            elif not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(self.url, **options)
            _install_sqlite_hooks(engine)
            return engine
        options.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        return create_async_engine(self.url, **options)


def _upgrade_to_head(sync_conn: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(sync_conn), "head")


def _enable_wal(database: str) -> None:
    """Switch the file to WAL once (the mode is stored in the file, so it sticks).

    Done on a short-lived connection before the pool opens any: changing the journal mode
    needs an exclusive lock, and SQLite reports "database is locked" at once, without
    waiting out the busy timeout, when another process is starting up on the same file.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        conn = sqlite3.connect(
            database,
            timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            uri=database.startswith("file:"),
        )
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise ConfigurationError(f"SQLite refused WAL mode for {database} ({mode})")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        finally:
            conn.close()
        time.sleep(0.05)


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    """Per-connection pragmas, and real ``BEGIN`` statements so transactions (and DDL) are atomic.

    WAL is set once per file by :func:`_enable_wal`; these settings are per connection.

    The sqlite3 driver's own transaction handling defers BEGIN until the first write and
    never wraps DDL; handing control to SQLAlchemy is the approach its documentation gives.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("trellis_sqlite_begin", "BEGIN"))
