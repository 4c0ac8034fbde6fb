"""Shared fixtures: a migrated database on SQLite and on Postgres.

Postgres tests use a database created for this test session on the server named
by ``TRELLIS_TEST_POSTGRES_URL`` (default: the local ``test`` database's server)
and dropped afterwards. When the server is unreachable they skip, except under
``CI=true``, where they fail: CI must never go green by silently skipping them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import socket
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from trellis.store import Database
from trellis.testing.postgres import run_admin

T = TypeVar("T")

POSTGRES_ADMIN_URL = os.environ.get(
    "TRELLIS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
_TABLES = (
    "memory_turns",
    "memory_sessions",
    "memories",
    "eval_schedule_runs",
    "eval_labels",
    "eval_queue_items",
    "eval_queues",
    "eval_results",
    "eval_runs",
    "eval_datasets",
    "workflow_effects",
    "workflow_steps",
    "workflow_runs",
    "workflow_workers",
    "alerts",
    "alert_rules",
    "scores",
    "spans",
    "traces",
    "api_keys",
    "limits",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs the PostgreSQL server")
    config.addinivalue_line(
        "markers", "pgvector: needs the pgvector extension available in the PostgreSQL server"
    )


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync fixture code, even while a test's event loop is running."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(url: str, *statements: str) -> None:
    await run_admin(url, *statements, timeout=5)


def sqlite_url(directory: Path) -> str:
    return f"sqlite+aiosqlite:///{directory / 'trellis.db'}"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of a reachable Postgres server (skip, or fail under CI=true, if none)."""
    try:
        run_sync(_admin(POSTGRES_ADMIN_URL, "SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL at {make_url(POSTGRES_ADMIN_URL)!r} is unreachable: {exc!r}"
        if in_ci():
            pytest.fail(f"{message} (CI=true: Postgres tests must run)", pytrace=False)
        pytest.skip(f"{message}; set TRELLIS_TEST_POSTGRES_URL to run the Postgres tests")
    return POSTGRES_ADMIN_URL


PGVECTOR_MISSING = (
    "the PostgreSQL server has no pgvector extension to install; "
    "`sudo bash scripts/install-pgvector.sh` adds it (`make test` does when run as root)"
)


async def _extension_available(url: str, name: str) -> bool:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        found = await connection.fetchval(
            "SELECT count(*) FROM pg_available_extensions WHERE name = $1", name
        )
    finally:
        await connection.close()
    return bool(found)


def require_pgvector(available: bool, ci: bool) -> None:
    """Skip a pgvector test with the reason, or fail it under CI=true (CI must run them)."""
    if available:
        return
    if ci:
        pytest.fail(f"{PGVECTOR_MISSING} (CI=true: pgvector tests must run)", pytrace=False)
    pytest.skip(PGVECTOR_MISSING)


@pytest.fixture(scope="session")
def pgvector_server(postgres_server: str) -> str:
    """The admin URL of a Postgres server that can create the pgvector extension."""
    require_pgvector(run_sync(_extension_available(postgres_server, "vector")), in_ci())
    return postgres_server


@pytest.fixture(autouse=True)
def _pgvector_marker(request: pytest.FixtureRequest) -> None:
    """Tests marked ``pgvector`` skip (or fail under CI) before their fixtures touch Postgres."""
    if request.node.get_closest_marker("pgvector") is not None:
        request.getfixturevalue("pgvector_server")


@pytest.fixture(scope="session")
def new_postgres_database(postgres_server: str) -> Iterator[Any]:
    """A factory of empty databases, all dropped at the end of the session."""
    created: list[str] = []

    def make() -> str:
        name = f"trellis_test_{os.getpid()}_{secrets.token_hex(4)}"
        run_sync(_admin(postgres_server, f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(postgres_server).set(database=name).render_as_string(hide_password=False)

    yield make
    for name in created:
        run_sync(_admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url(new_postgres_database: Any) -> str:
    """One database for the session; tables are emptied before each test that uses it."""
    return new_postgres_database()


async def open_database(url: str) -> Database:
    """A connected, migrated database with empty tables."""
    database = Database(url)
    await database.connect()
    if not database.is_sqlite:
        async with database.engine.begin() as conn:
            await conn.exec_driver_sql(f"TRUNCATE {', '.join(_TABLES)}")
    return database


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(sqlite_url(tmp_path))
    yield database
    await database.close()


@pytest.fixture
async def postgres_db(postgres_url: str) -> AsyncIterator[Database]:
    database = await open_database(postgres_url)
    yield database
    await database.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The same test on both backends."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
    else:
        url = request.getfixturevalue("postgres_url")
    database = await open_database(url)
    yield database
    await database.close()


# --- no real network in tests ------------------------------------------------------

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _loopback_only(address: Any) -> None:
    """Refuse any TCP destination that is not on this machine: tests talk to fakes only."""
    if isinstance(address, tuple) and address:
        host = str(address[0])
        try:
            loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {host}")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _loopback_only(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _loopback_only(address)
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def _block_real_network() -> Iterator[None]:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]
