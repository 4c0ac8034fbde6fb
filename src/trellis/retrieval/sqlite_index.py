"""The embedded retrieval backend: chunks, FTS5 keyword index and vectors in SQLite.

SQLite keeps chunks, metadata and float32 embeddings in the Trellis database.
Keyword search is FTS5's BM25 (porter-stemmed unicode61 tokens, English stop
words dropped from the query); vector search is exact cosine over a numpy
matrix cached per collection and reloaded when the collection's ``version``
(bumped in every write transaction) changes, so several processes sharing the
file never search stale vectors.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.errors import InvalidRequestError, NotFoundError
from trellis.retrieval.index import (
    Filters,
    check_filters,
    collection_info,
    fts_query,
    validate_collection_name,
)
from trellis.retrieval.models import Chunk, CollectionInfo, DocumentInfo, Hit
from trellis.store import Database
from trellis.store.tables import chunks as chunks_table
from trellis.store.tables import collections, documents

__all__ = ["SQLiteIndex"]


@dataclass(slots=True)
class _Matrix:
    """One collection's vectors in memory, as of ``version``."""

    version: int
    chunk_ids: np.ndarray  # int64, one per row
    doc_rows: np.ndarray  # int32 index into doc_ids, one per row
    doc_index: dict[str, int]  # documents.id -> position
    vectors: np.ndarray  # float32 (rows, dimension)


def _stack(rows: Sequence[Any], dimension: int) -> _Matrix:
    doc_index: dict[str, int] = {}
    chunk_ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    doc_rows = np.fromiter(
        (doc_index.setdefault(row[1], len(doc_index)) for row in rows),
        dtype=np.int32,
        count=len(rows),
    )
    blob = b"".join(row[2] for row in rows)
    vectors = np.frombuffer(blob, dtype="<f4").reshape(len(rows), dimension)
    return _Matrix(0, chunk_ids, doc_rows, doc_index, vectors)


def _sqlite_filters(filters: Filters | None) -> list[tuple[str, Any]]:
    """Validated filters as ``(JSON path, value)`` pairs for ``json_extract``."""
    return [(f'$."{key}"', value) for key, value in check_filters(filters)]


def _filter_sql(pairs: list[tuple[str, Any]], alias: str) -> tuple[str, dict[str, Any]]:
    clauses, params = [], {}
    for n, (path, value) in enumerate(pairs):
        clauses.append(f"json_extract({alias}.metadata, :fp{n}) = :fv{n}")
        params[f"fp{n}"], params[f"fv{n}"] = path, value
    return "".join(f" AND {c}" for c in clauses), params


class SQLiteIndex:
    """The embedded backend: everything in the Trellis SQLite database."""

    def __init__(self, database: Database) -> None:
        if not database.is_sqlite:
            raise InvalidRequestError("SQLiteIndex needs a SQLite database")
        self.db = database
        self._matrices: dict[str, _Matrix] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    # --- collections -----------------------------------------------------------

    async def create_collection(
        self, name: str, embedder: str, dimension: int, metadata: Mapping[str, Any] | None = None
    ) -> CollectionInfo:
        validate_collection_name(name)
        if dimension < 1:
            raise InvalidRequestError("an embedder dimension must be positive")
        info = CollectionInfo(
            id=secrets.token_hex(16),
            name=name,
            embedder=embedder,
            dimension=dimension,
            created_at=time.time(),
            metadata=dict(metadata or {}),
        )
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    insert(collections).values(
                        id=info.id,
                        name=name,
                        embedder=embedder,
                        dimension=dimension,
                        metadata=info.metadata,
                        created_at=info.created_at,
                        version=0,
                    )
                )
        except IntegrityError as exc:
            raise InvalidRequestError(
                f"collection {name!r} already exists", code="collection_exists", param="name"
            ) from exc
        return info

    async def get_collection(self, name: str, *, counts: bool = True) -> CollectionInfo:
        # Counting sums over every document row of the collection (tens of ms at 100,000
        # chunks); search and ingestion only need identity and embedder, so they skip it.
        found = await self._collections(name, counts=counts)
        if not found:
            raise NotFoundError(f"no collection named {name!r}")
        return found[0]

    async def list_collections(self) -> list[CollectionInfo]:
        return await self._collections(None)

    async def _collections(self, name: str | None, *, counts: bool = True) -> list[CollectionInfo]:
        if not counts and name is not None:
            async with self.db.engine.connect() as conn:
                row = (
                    await conn.execute(select(collections).where(collections.c.name == name))
                ).first()
            return [] if row is None else [collection_info(row, 0, 0)]
        doc_counts = (
            select(
                documents.c.collection_id,
                func.count().label("docs"),
                func.coalesce(func.sum(documents.c.chunk_count), 0).label("chunks"),
            )
            .group_by(documents.c.collection_id)
            .subquery()
        )
        query = (
            select(
                collections,
                func.coalesce(doc_counts.c.docs, 0),
                func.coalesce(doc_counts.c.chunks, 0),
            )
            .outerjoin(doc_counts, doc_counts.c.collection_id == collections.c.id)
            .order_by(collections.c.name)
        )
        if name is not None:
            query = query.where(collections.c.name == name)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [collection_info(row, int(row[-2]), int(row[-1])) for row in rows]

    async def delete_collection(self, name: str) -> None:
        info = await self.get_collection(name)
        async with self.db.exclusive(f"trellis.collection.{info.id}") as conn:
            # Chunks first, so the FTS triggers see each row; the cascade would do it too.
            await conn.execute(delete(chunks_table).where(chunks_table.c.collection_id == info.id))
            await conn.execute(delete(collections).where(collections.c.id == info.id))
        self._matrices.pop(info.id, None)

    # --- documents -------------------------------------------------------------

    async def document_hashes(
        self, collection: CollectionInfo, document_ids: Sequence[str]
    ) -> dict[str, str]:
        found: dict[str, str] = {}
        async with self.db.engine.connect() as conn:
            for start in range(0, len(document_ids), 500):
                batch = list(document_ids[start : start + 500])
                rows = await conn.execute(
                    select(documents.c.external_id, documents.c.content_hash).where(
                        documents.c.collection_id == collection.id,
                        documents.c.external_id.in_(batch),
                    )
                )
                found.update({row[0]: row[1] for row in rows})
        return found

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
    ) -> bool:
        if vectors.ndim != 2 or vectors.shape != (len(chunks), collection.dimension):
            raise InvalidRequestError(
                f"collection {collection.name!r} holds {collection.dimension}-dimensional "
                f"vectors ({collection.embedder}); got shape {tuple(vectors.shape)}. Switching "
                "embedder needs an explicit re-index.",
                code="dimension_mismatch",
            )
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        now = time.time()
        internal_id = secrets.token_hex(16)
        async with self.db.exclusive(f"trellis.collection.{collection.id}") as conn:
            replaced = await self._delete_document(conn, collection, document_id)
            await conn.execute(
                insert(documents).values(
                    id=internal_id,
                    collection_id=collection.id,
                    external_id=document_id,
                    source=source,
                    content_hash=content_hash,
                    metadata=dict(metadata),
                    text=text,
                    chunk_count=len(chunks),
                    created_at=now,
                    updated_at=now,
                )
            )
            if chunks:
                await conn.execute(
                    insert(chunks_table),
                    [
                        {
                            "collection_id": collection.id,
                            "document_id": internal_id,
                            "ordinal": chunk.ordinal,
                            "text": chunk.text,
                            "char_start": chunk.start,
                            "char_end": chunk.end,
                            "token_count": chunk.token_count,
                            "metadata": dict(extra),
                            "embedding": vectors[row].tobytes(),
                        }
                        for row, (chunk, extra) in enumerate(
                            zip(chunks, chunk_metadata, strict=True)
                        )
                    ],
                )
            await self._bump(conn, collection)
        return replaced

    async def delete_document(self, collection: CollectionInfo, document_id: str) -> bool:
        async with self.db.exclusive(f"trellis.collection.{collection.id}") as conn:
            deleted = await self._delete_document(conn, collection, document_id)
            if deleted:
                await self._bump(conn, collection)
        return deleted

    async def _delete_document(
        self, conn: AsyncConnection, collection: CollectionInfo, document_id: str
    ) -> bool:
        """Remove a document and (by cascade, FTS triggers included) all its chunks."""
        result = await conn.execute(
            delete(documents).where(
                documents.c.collection_id == collection.id,
                documents.c.external_id == document_id,
            )
        )
        return bool(result.rowcount)

    async def _bump(self, conn: AsyncConnection, collection: CollectionInfo) -> None:
        result = await conn.execute(
            update(collections)
            .where(collections.c.id == collection.id)
            .values(version=collections.c.version + 1)
        )
        if not result.rowcount:
            raise NotFoundError(f"collection {collection.name!r} was deleted")

    async def list_documents(
        self, collection: CollectionInfo, *, limit: int = 100, offset: int = 0
    ) -> list[DocumentInfo]:
        query = (
            select(
                documents.c.external_id,
                documents.c.source,
                documents.c.content_hash,
                documents.c.metadata,
                documents.c.chunk_count,
                documents.c.updated_at,
            )
            .where(documents.c.collection_id == collection.id)
            .order_by(documents.c.external_id)
            .limit(limit)
            .offset(offset)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            DocumentInfo(
                id=row[0],
                source=row[1],
                content_hash=row[2],
                metadata=row[3] or {},
                chunks=row[4],
                updated_at=row[5],
            )
            for row in rows
        ]

    # --- search ----------------------------------------------------------------

    async def keyword_search(
        self, collection: CollectionInfo, query: str, limit: int, filters: Filters | None = None
    ) -> list[tuple[int, float]]:
        match = fts_query(query)
        if match is None or limit < 1:
            return []
        where, params = _filter_sql(_sqlite_filters(filters), "d")
        if not where:
            windowed = await self._keyword_window(collection, match, limit)
            if windowed is not None:
                return windowed
        join = " JOIN documents d ON d.id = c.document_id" if where else ""
        sql = text(
            "SELECT f.rowid, bm25(chunks_fts) AS rank FROM chunks_fts f "
            f"JOIN chunks c ON c.id = f.rowid{join} "
            f"WHERE chunks_fts MATCH :match AND c.collection_id = :cid{where} "
            "ORDER BY rank LIMIT :limit"
        )
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                sql, {"match": match, "cid": collection.id, "limit": limit, **params}
            )
            # FTS5's bm25() is negative, lower is better: flip it to "higher is better".
            return [(int(row[0]), -float(row[1])) for row in rows]

    async def _keyword_window(
        self, collection: CollectionInfo, match: str, limit: int
    ) -> list[tuple[int, float]] | None:
        """The collection's top ``limit`` from FTS5's global top ``window``, or None if unsure.

        Joining every match to ``chunks`` to test its collection costs more than BM25
        itself on broad OR queries (about half of a 100,000-chunk collection matches a
        typical ten-term query). BM25's statistics are table-wide either way, so ranking
        the whole FTS table first and filtering a window of the best rows gives the same
        order; it is exact whenever the window holds ``limit`` of the collection's rows or
        holds every match. Otherwise (many collections, this one small) the caller falls
        back to the exhaustive join.
        """
        window = max(4 * limit, 200)
        async with self.db.engine.connect() as conn:
            ranked = (
                await conn.execute(
                    text(
                        "SELECT rowid, bm25(chunks_fts) AS r FROM chunks_fts "
                        "WHERE chunks_fts MATCH :match ORDER BY r LIMIT :window"
                    ),
                    {"match": match, "window": window},
                )
            ).all()
            if not ranked:
                return []
            mine = {
                int(row[0])
                for row in await conn.execute(
                    select(chunks_table.c.id).where(
                        chunks_table.c.id.in_([int(row[0]) for row in ranked]),
                        chunks_table.c.collection_id == collection.id,
                    )
                )
            }
        if len(mine) < limit and len(ranked) == window:
            return None
        # FTS5's bm25() is negative, lower is better: flip it to "higher is better".
        hits = [(int(row[0]), -float(row[1])) for row in ranked if int(row[0]) in mine]
        return hits[:limit]

    async def vector_search(
        self,
        collection: CollectionInfo,
        vector: np.ndarray,
        limit: int,
        filters: Filters | None = None,
    ) -> list[tuple[int, float]]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != collection.dimension:
            raise InvalidRequestError(
                f"collection {collection.name!r} holds {collection.dimension}-dimensional "
                f"vectors; the query vector has {query.shape[0]}",
                code="dimension_mismatch",
            )
        matrix = await self._matrix(collection)
        if limit < 1 or not len(matrix.chunk_ids):
            return []
        scores = matrix.vectors @ query
        pairs = _sqlite_filters(filters)
        if pairs:
            allowed = np.zeros(len(matrix.doc_index), dtype=bool)
            for internal_id in await self._matching_documents(collection, pairs):
                position = matrix.doc_index.get(internal_id)
                if position is not None:
                    allowed[position] = True
            scores = np.where(allowed[matrix.doc_rows], scores, -np.inf)
        count = min(limit, len(scores))
        top = np.argpartition(-scores, count - 1)[:count]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(matrix.chunk_ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]

    async def _matching_documents(
        self, collection: CollectionInfo, pairs: list[tuple[str, Any]]
    ) -> list[str]:
        where, params = _filter_sql(pairs, "d")
        sql = text(f"SELECT d.id FROM documents d WHERE d.collection_id = :cid{where}")
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(sql, {"cid": collection.id, **params})
            return [row[0] for row in rows]

    async def _matrix(self, collection: CollectionInfo) -> _Matrix:
        async with self.db.engine.connect() as conn:
            version = (
                await conn.execute(
                    select(collections.c.version).where(collections.c.id == collection.id)
                )
            ).scalar()
        if version is None:
            raise NotFoundError(f"collection {collection.name!r} was deleted")
        cached = self._matrices.get(collection.id)
        if cached is not None and cached.version == version:
            return cached
        lock = self._loading.setdefault(collection.id, asyncio.Lock())
        async with lock:
            cached = self._matrices.get(collection.id)
            if cached is not None and cached.version >= version:
                return cached
            # Version and rows from one read transaction, so they agree.
            async with self.db.engine.connect() as conn, conn.begin():
                version = (
                    await conn.execute(
                        select(collections.c.version).where(collections.c.id == collection.id)
                    )
                ).scalar_one()
                rows = (
                    await conn.execute(
                        select(
                            chunks_table.c.id,
                            chunks_table.c.document_id,
                            chunks_table.c.embedding,
                        )
                        .where(chunks_table.c.collection_id == collection.id)
                        .order_by(chunks_table.c.id)
                    )
                ).all()
            matrix = await asyncio.to_thread(_stack, rows, collection.dimension)
            matrix.version = version
            self._matrices[collection.id] = matrix
            return matrix

    async def fetch_chunks(self, chunk_ids: Sequence[int]) -> dict[int, Hit]:
        found: dict[int, Hit] = {}
        query = select(
            chunks_table.c.id,
            chunks_table.c.text,
            chunks_table.c.char_start,
            chunks_table.c.char_end,
            chunks_table.c.metadata,
            documents.c.external_id,
            documents.c.source,
            documents.c.metadata,
        ).join(documents, documents.c.id == chunks_table.c.document_id)
        async with self.db.engine.connect() as conn:
            for start in range(0, len(chunk_ids), 500):
                batch = list(chunk_ids[start : start + 500])
                for row in await conn.execute(query.where(chunks_table.c.id.in_(batch))):
                    found[int(row[0])] = Hit(
                        chunk_id=int(row[0]),
                        document_id=row[5],
                        text=row[1],
                        start=row[2],
                        end=row[3],
                        score=0.0,
                        scores={},
                        source=row[6],
                        metadata=row[7] or {},
                        chunk_metadata=row[4] or {},
                    )
        return found
