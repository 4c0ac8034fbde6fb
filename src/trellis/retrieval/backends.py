"""The index for a database: one place decides, so the runtime and the CLI agree."""

from __future__ import annotations

from trellis.retrieval.index import Index
from trellis.retrieval.postgres_index import DEFAULT_KEYWORD_RANK, KeywordRank, PgIndex
from trellis.retrieval.sqlite_index import SQLiteIndex
from trellis.store import Database

__all__ = ["index_for"]


def index_for(
    database: Database, *, postgres_keyword_rank: KeywordRank = DEFAULT_KEYWORD_RANK
) -> Index:
    """:class:`SQLiteIndex` on SQLite, :class:`PgIndex` (pgvector HNSW) on Postgres."""
    if database.is_sqlite:
        return SQLiteIndex(database)
    return PgIndex(database, keyword_rank=postgres_keyword_rank)
