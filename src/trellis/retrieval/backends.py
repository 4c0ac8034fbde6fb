"""The index for a database: one place decides, so the runtime and the CLI agree."""

from __future__ import annotations

from trellis.retrieval.index import Index
from trellis.retrieval.postgres_index import PgIndex
from trellis.retrieval.sqlite_index import SQLiteIndex
from trellis.store import Database

__all__ = ["index_for"]


def index_for(database: Database) -> Index:
    """:class:`SQLiteIndex` on SQLite, :class:`PgIndex` (pgvector + full-text) on Postgres."""
    return SQLiteIndex(database) if database.is_sqlite else PgIndex(database)
