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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import insert, text

from trellis.errors import InvalidRequestError
from trellis.retrieval.index import (
    Filters,
    check_filters,
)
from trellis.retrieval.keyword import Analyzer
from trellis.retrieval.models import Chunk, CollectionInfo
from trellis.retrieval.snapshot_store import SnapshotStore
from trellis.retrieval.table_index import TableIndex, check_vectors, chunk_rows, query_vector
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

    async def write_document(
        self,
        collection: CollectionInfo,
        document_id: str,
        *,
        text: str,
        source: str | None,
        metadata: Mapping[str, Any],
        content_hash: str,
        chunks: Sequence[Chunk],
        chunk_metadata: Sequence[Mapping[str, Any]],
        vectors: np.ndarray,
        pages: Sequence[int] = (),
    ) -> bool:
        check_vectors(collection, chunks, vectors)
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        async with self.db.exclusive(f"trellis.collection.{collection.id}") as conn:
            replaced, internal_id = await self._replace_document_row(
                conn,
                collection,
                document_id,
                text=text,
                source=source,
                metadata=metadata,
                content_hash=content_hash,
                chunk_count=len(chunks),
                pages=pages,
            )
            if chunks:
                await conn.execute(
                    insert(chunks_table),
                    [
                        {**row, "embedding": vector.tobytes()}
                        for row, vector in zip(
                            chunk_rows(collection, internal_id, chunks, chunk_metadata),
                            vectors,
                            strict=True,
                        )
                    ],
                )
            await self._bump(conn, collection)
        return replaced

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
