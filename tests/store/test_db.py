"""Database start-up: migrations on fresh SQLite and Postgres, idempotence, pragmas, races."""

from __future__ import annotations

import asyncio
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from trellis.errors import ConfigurationError
from trellis.store import Database, metadata, normalize_url
from trellis.store.db import MIGRATIONS_DIR, alembic_config
from trellis.store.tables import VERSION_TABLE, include_name

EXPECTED_TABLES = {
    "api_keys",
    "traces",
    "spans",
    "workflow_runs",
    "workflow_steps",
    "workflow_effects",
    "workflow_workers",
    VERSION_TABLE,
}


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _schema_diff(conn: Connection) -> list[object]:
    ctx = MigrationContext.configure(
        conn,
        opts={"version_table": VERSION_TABLE, "compare_type": True, "include_name": include_name},
    )
    with warnings.catch_warnings():
        # pgvector's column (0006_pgvector) lives outside tables.py on purpose; reflection
        # meets its type without the pgvector SQLAlchemy package, and says so.
        warnings.filterwarnings("ignore", message="Did not recognize type 'vector'")
        return list(compare_metadata(ctx, metadata))


async def _table_names(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def _check_fresh_start(url: str) -> None:
    db = Database(url)
    await db.connect()
    try:
        assert await db.current_revision() == _head()
        assert await _table_names(db) >= EXPECTED_TABLES
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_schema_diff) == [], "tables.py and migrations disagree"
    finally:
        await db.close()
    # A second start finds the schema at head and changes nothing.
    again = Database(url)
    await again.connect()
    try:
        assert await again.current_revision() == _head()
    finally:
        await again.close()


async def test_fresh_sqlite_file_is_migrated_in_a_new_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "trellis.db"
    await _check_fresh_start(f"sqlite:///{path}")
    assert path.is_file()


@pytest.mark.postgres
async def test_fresh_postgres_database_is_migrated(
    new_postgres_database: Callable[[], str],
) -> None:
    await _check_fresh_start(new_postgres_database())


async def test_sqlite_pragmas(sqlite_db: Database) -> None:
    async with sqlite_db.engine.connect() as conn:
        pragma = {
            name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    assert pragma["journal_mode"] == "wal"
    assert pragma["synchronous"] == 1  # NORMAL
    assert pragma["foreign_keys"] == 1
    assert pragma["busy_timeout"] >= 1000


async def test_sqlite_transactions_roll_back_ddl_and_dml(sqlite_db: Database) -> None:
    """Our BEGIN handling makes SQLite transactions atomic, DDL included."""
    with pytest.raises(RuntimeError):
        async with sqlite_db.engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE scratch (x INTEGER)")
            raise RuntimeError("abort")
    assert "scratch" not in await _table_names(sqlite_db)


async def test_in_memory_sqlite_shares_one_database() -> None:
    async with Database("sqlite+aiosqlite://") as db:
        assert await _table_names(db) >= EXPECTED_TABLES


async def test_concurrent_start_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    databases = [Database(url) for _ in range(4)]
    try:
        await asyncio.gather(*(db.connect() for db in databases))
        for db in databases:
            assert await db.current_revision() == _head()
    finally:
        await asyncio.gather(*(db.close() for db in databases))


@pytest.mark.postgres
async def test_concurrent_start_on_one_postgres_database(
    new_postgres_database: Callable[[], str],
) -> None:
    url = new_postgres_database()
    databases = [Database(url) for _ in range(4)]
    try:
        await asyncio.gather(*(db.connect() for db in databases))
        for db in databases:
            assert await db.current_revision() == _head()
    finally:
        await asyncio.gather(*(db.close() for db in databases))


async def test_a_schema_newer_than_the_code_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'future.db'}"
    async with Database(url) as db, db.engine.begin() as conn:
        await conn.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '9999_future'")
    with pytest.raises(ConfigurationError, match="9999_future"):
        await Database(url).connect()


def test_plain_urls_get_async_drivers() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert normalize_url("sqlite+aiosqlite:///x.db").drivername == "sqlite+aiosqlite"
    with pytest.raises(ConfigurationError):
        normalize_url("postgresql+psycopg2://u@h/db")
    with pytest.raises(ConfigurationError):
        normalize_url("mysql://u@h/db")


def test_engine_before_connect_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="connect"):
        _ = Database("sqlite://").engine


def test_migrations_ship_inside_the_package() -> None:
    """The wheel carries src/trellis whole, so the scripts must live under it."""
    package_root = Path(__import__("trellis").__file__).parent
    assert MIGRATIONS_DIR.is_relative_to(package_root)
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert list((MIGRATIONS_DIR / "versions").glob("0001_*.py"))


_START_SCRIPT = """
import asyncio, sys
from trellis.store import Database

async def main() -> None:
    db = Database(sys.argv[1])
    await db.connect()
    print(await db.current_revision())
    await db.close()

asyncio.run(main())
"""


async def test_concurrent_start_from_separate_processes(tmp_path: Path) -> None:
    """Replicas (or a CLI next to a server) starting at once on one fresh SQLite file."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _START_SCRIPT,
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == _head()


async def _read_then_write_while_another_writes(db: Database, other: Database, write: bool) -> None:
    """A transaction reads, another connection writes and commits, the first then writes."""
    async with other.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS counter (n INTEGER)"))
        await conn.execute(text("INSERT INTO counter VALUES (0)"))
    read_done = asyncio.Event()

    async def interloper() -> None:
        await read_done.wait()
        async with other.write() as conn:
            await conn.execute(text("UPDATE counter SET n = n + 10"))

    async def reader_writer() -> None:
        opened = db.write() if write else db.engine.begin()
        async with opened as conn:
            (n,) = (await conn.execute(text("SELECT n FROM counter"))).one()
            read_done.set()
            await asyncio.sleep(0.2)  # the interloper commits now, unless it must wait
            await conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

    await asyncio.gather(reader_writer(), interloper())


async def test_a_write_transaction_that_reads_first_waits_instead_of_failing_locked(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    async with Database(url) as db, Database(url) as other:
        # A deferred transaction cannot upgrade its stale read snapshot: SQLite says
        # "database is locked" at once, whatever the busy timeout.
        with pytest.raises(Exception, match="locked"):
            await _read_then_write_while_another_writes(db, other, write=False)
    url = f"sqlite+aiosqlite:///{tmp_path / 'w2.db'}"
    async with Database(url) as db, Database(url) as other:
        await _read_then_write_while_another_writes(db, other, write=True)
        async with db.engine.connect() as conn:
            (n,) = (await conn.execute(text("SELECT n FROM counter"))).one()
        assert n == 11  # both updates applied, in order
