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
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.errors import ConflictError, InvalidRequestError, NotFoundError
from trellis.retrieval.index import (
    Filters,
    check_filters,
    collection_info,
    validate_collection_name,
)
from trellis.retrieval.keyword import Analyzer
from trellis.retrieval.models import Chunk, CollectionInfo, Document, DocumentInfo, Hit
from trellis.retrieval.snapshot_store import SnapshotStore
from trellis.store import Database
from trellis.store.tables import chunks as chunks_table
from trellis.store.tables import collections, documents

__all__ = ["SQLiteIndex"]


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
        self.analyzer = Analyzer()
        self._snapshots = SnapshotStore(database, self.analyzer)

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
        self._snapshots.forget(info.id)

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
        pages: Sequence[int] = (),
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
                    pages=list(pages) or None,
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

    async def read_documents(
        self, collection: CollectionInfo, *, after: str | None = None, limit: int = 100
    ) -> list[Document]:
        query = (
            select(
                documents.c.external_id,
                documents.c.text,
                documents.c.source,
                documents.c.metadata,
                documents.c.pages,
            )
            .where(documents.c.collection_id == collection.id)
            .order_by(documents.c.external_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(documents.c.external_id > after)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Document(
                id=row[0],
                text=row[1],
                source=row[2],
                metadata=dict(row[3] or {}),
                pages=tuple(row[4] or ()),
            )
            for row in rows
        ]

    async def replace_collection(
        self, target: CollectionInfo, staging: CollectionInfo
    ) -> CollectionInfo:
        async with self.db.exclusive(f"trellis.collection.{target.id}") as conn:
            version = (
                await conn.execute(
                    select(collections.c.version).where(collections.c.id == target.id)
                )
            ).scalar()
            if version is None:
                raise NotFoundError(f"collection {target.name!r} was deleted")
            if version != target.version:
                raise ConflictError(
                    f"collection {target.name!r} was written to during the re-index; run it again"
                )
            await conn.execute(
                delete(chunks_table).where(chunks_table.c.collection_id == target.id)
            )
            await conn.execute(delete(collections).where(collections.c.id == target.id))
            await conn.execute(
                update(collections)
                .where(collections.c.id == staging.id)
                .values(name=target.name, version=collections.c.version + 1)
            )
        self._snapshots.forget(target.id)
        return await self.get_collection(target.name)

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
        if limit < 1 or not self.analyzer.query_terms(query):
            return []
        pairs = _sqlite_filters(filters)
        documents = await self._matching_documents(collection, pairs) if pairs else None
        snapshot = await self._snapshots.get(collection)
        allowed = None if documents is None else snapshot.allowed_rows(documents)
        return snapshot.keyword_search(query, limit, allowed)

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
        pairs = _sqlite_filters(filters)
        documents = await self._matching_documents(collection, pairs) if pairs else None
        snapshot = await self._snapshots.get(collection)
        allowed = None if documents is None else snapshot.allowed_rows(documents)
        return await asyncio.to_thread(snapshot.vector_searcher(query, limit, allowed))

    async def _matching_documents(
        self, collection: CollectionInfo, pairs: list[tuple[str, Any]]
    ) -> list[str]:
        where, params = _filter_sql(pairs, "d")
        sql = text(f"SELECT d.id FROM documents d WHERE d.collection_id = :cid{where}")
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(sql, {"cid": collection.id, **params})
            return [row[0] for row in rows]

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
