"""The embedded retrieval backend: chunks, documents and vectors in the Trellis SQLite file.

SQLite is the source of truth (every write is one transaction that also bumps the
collection's ``version``); searching happens in memory over a per-collection
:class:`~trellis.retrieval.snapshot.Snapshot`: exact cosine over a float32 matrix
and BM25 over numpy postings (:mod:`trellis.retrieval.keyword`). Before each search
the snapshot catches up with the database if the version moved, loading only the
documents that appeared and tombstoning those that went, so several processes
sharing the file never search stale data and a write costs what it changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.errors import InvalidRequestError
from trellis.retrieval.index import (
    Filters,
    check_filters,
)
from trellis.retrieval.keyword import Analyzer
from trellis.retrieval.models import CollectionInfo
from trellis.retrieval.snapshot_store import SnapshotStore
from trellis.retrieval.table_index import TableIndex, query_vector
from trellis.store import Database
from trellis.store.tables import chunks as chunks_table

__all__ = ["SQLiteIndex"]


def _filter_sql(filters: list[tuple[str, Any]], alias: str) -> tuple[str, dict[str, Any]]:
    """Validated ``(key, value)`` filters as ``json_extract`` equality tests."""
    clauses, params = [], {}
    for n, (key, value) in enumerate(filters):
        clauses.append(f"json_extract({alias}.metadata, :fp{n}) = :fv{n}")
        params[f"fp{n}"], params[f"fv{n}"] = f'$."{key}"', value
    return "".join(f" AND {c}" for c in clauses), params


class SQLiteIndex(TableIndex):
    """The embedded backend: everything in the Trellis SQLite database."""

    def __init__(self, database: Database) -> None:
        if not database.is_sqlite:
            raise InvalidRequestError("SQLiteIndex needs a SQLite database")
        self.db = database
        self.analyzer = Analyzer()
        self._snapshots = SnapshotStore(database, self.analyzer)

    # --- writes (vectors as float32 bytes beside the row) ---------------------------

    def _encode_vectors(self, vectors: np.ndarray) -> list[bytes]:
        return [vector.tobytes() for vector in np.ascontiguousarray(vectors, dtype="<f4")]

    async def _insert_chunks(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], vectors: Sequence[Any]
    ) -> None:
        await conn.execute(
            insert(chunks_table),
            [{**row, "embedding": vector} for row, vector in zip(rows, vectors, strict=True)],
        )

    async def keyword_search(
        self, collection: CollectionInfo, query: str, limit: int, filters: Filters | None = None
    ) -> list[tuple[int, float]]:
        return await self._bm25(collection, query, limit, filters)

    async def vector_search(
        self,
        collection: CollectionInfo,
        vector: np.ndarray,
        limit: int,
        filters: Filters | None = None,
    ) -> list[tuple[int, float]]:
        query = query_vector(collection, vector)
        snapshot, allowed = await self._snapshot_rows(collection, check_filters(filters))
        return await asyncio.to_thread(snapshot.vector_searcher(query, limit, allowed))

    async def _documents_matching(
        self, collection: CollectionInfo, filters: list[tuple[str, Any]]
    ) -> list[str]:
        where, params = _filter_sql(filters, "d")
        sql = text(f"SELECT d.id FROM documents d WHERE d.collection_id = :cid{where}")
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(sql, {"cid": collection.id, **params})
            return [row[0] for row in rows]
