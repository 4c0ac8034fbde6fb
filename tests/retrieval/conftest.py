"""Fixtures for retrieval tests: one real MiniLM per session, a fresh SQLite service per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trellis.inference.providers.local_embedder import MiniLMEmbedder
from trellis.retrieval import Retrieval, SQLiteIndex
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


@pytest.fixture
def retrieval(database: Database, embedder: MiniLMEmbedder) -> Retrieval:
    return Retrieval(SQLiteIndex(database), embedder)
