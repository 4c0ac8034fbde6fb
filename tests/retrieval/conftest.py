"""Fixtures for retrieval tests: one real MiniLM per session, a fresh index per test.

``retrieval`` and ``index`` run every test that uses them on both backends: SQLite
(a new file per test) and Postgres (one database for the session, emptied of
collections and their HNSW indexes before each test). ``database`` stays SQLite-only
for the tests of SQLite internals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from trellis.inference.local.embedder import MiniLMEmbedder
from trellis.retrieval import Retrieval, index_for
from trellis.retrieval.index import Index
from trellis.store import Database


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    model = MiniLMEmbedder()
    model.load()
    return model


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}")
    await db.connect()
    yield db
    await db.close()


@pytest.fixture(scope="session")
def retrieval_postgres_url(new_postgres_database: Any, pgvector_server: str) -> str:
    """A database of its own, so retrieval tests never meet other tests' rows."""
    return new_postgres_database()  # type: ignore[no-any-return]


async def empty_retrieval_tables(db: Database) -> None:
    """Drop every collection with its HNSW index (what delete_collection would do, at once)."""
    async with db.engine.begin() as conn:
        names = await conn.execute(
            text("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'chunks\\_vec\\_%'")
        )
        for (name,) in names.all():
            await conn.execute(text(f'DROP INDEX IF EXISTS "{name}"'))
        await conn.execute(text("TRUNCATE collections, documents, chunks"))


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.pgvector])]
)
async def backend_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Database]:
    """A migrated database on each backend, with no collections."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}")
        await db.connect()
    else:
        db = Database(request.getfixturevalue("retrieval_postgres_url"))
        await db.connect()
        await empty_retrieval_tables(db)
    yield db
    await db.close()


@pytest.fixture
def index(backend_database: Database) -> Index:
    return index_for(backend_database)


@pytest.fixture
def retrieval(index: Index, embedder: MiniLMEmbedder) -> Retrieval:
    return Retrieval(index, embedder)  # type: ignore[arg-type]
