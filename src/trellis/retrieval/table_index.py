"""What both retrieval backends share: collections, documents and chunks in the Trellis tables.

SQLite and Postgres keep the same rows in the same tables (``collections``,
``documents``, ``chunks``; revisions 0002-0007), so everything but encoding vectors
and searching is one implementation here. A backend fills in hooks: how it encodes
and inserts chunk vectors (``_encode_vectors``, ``_insert_chunks``), and its own
objects: :meth:`TableIndex._ready` (Postgres makes sure pgvector is there) and
:meth:`TableIndex._drop_collection_objects` (Postgres drops the collection's HNSW
index in the transaction that deletes its rows).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.errors import ConflictError, InvalidRequestError, NotFoundError
from trellis.retrieval.index import (
    Filters,
    check_filters,
    collection_info,
    in_batches,
    stored_name,
    validate_collection_name,
)
from trellis.retrieval.models import (
    Chunk,
    CollectionInfo,
    Document,
    DocumentInfo,
    DocumentWrite,
    Hit,
)
from trellis.retrieval.snapshot import Snapshot
from trellis.retrieval.snapshot_store import SnapshotStore, collection_version
from trellis.store import Database
from trellis.store.tables import chunks as chunks_table
from trellis.store.tables import collections, documents

__all__ = ["TableIndex", "check_vectors", "chunk_rows", "query_vector"]


def check_vectors(collection: CollectionInfo, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
    """One vector per chunk, of the collection's dimension (else a 400 naming the fix)."""
    if vectors.ndim != 2 or vectors.shape != (len(chunks), collection.dimension):
        raise InvalidRequestError(
            f"collection {collection.name!r} holds {collection.dimension}-dimensional "
            f"vectors ({collection.embedder}); got shape {tuple(vectors.shape)}. Switching "
            "embedder needs an explicit re-index.",
            code="dimension_mismatch",
        )


def query_vector(collection: CollectionInfo, vector: np.ndarray) -> np.ndarray:
    """The query as flat float32 of the collection's dimension (else a 400)."""
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    if query.shape[0] != collection.dimension:
        raise InvalidRequestError(
            f"collection {collection.name!r} holds {collection.dimension}-dimensional "
            f"vectors; the query vector has {query.shape[0]}",
            code="dimension_mismatch",
        )
    return query


def chunk_rows(
    collection: CollectionInfo,
    document: str,
    chunks: Sequence[Chunk],
    chunk_metadata: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """``chunks`` rows of one document, without the vector (each backend stores its own)."""
    return [
        {
            "collection_id": collection.id,
            "document_id": document,
            "ordinal": chunk.ordinal,
            "text": chunk.text,
            "char_start": chunk.start,
            "char_end": chunk.end,
            "token_count": chunk.token_count,
            "metadata": dict(extra),
        }
        for chunk, extra in zip(chunks, chunk_metadata, strict=True)
    ]


class TableIndex:
    """The table-level half of an :class:`~trellis.retrieval.index.Index`; see the module."""

    db: Database
    #: In-process search state per collection (forgotten when a collection goes).
    _snapshots: SnapshotStore

    async def _ready(self) -> None:
        """Called before touching retrieval rows; a backend makes its extensions ready."""

    def _check_dimension(self, dimension: int) -> None:
        """Refuse dimensions the backend cannot index (before anything is written)."""

    async def _create_collection_objects(self, conn: AsyncConnection, info: CollectionInfo) -> None:
        """Create a backend's per-collection objects, inside the creating transaction."""

    async def _drop_collection_objects(self, conn: AsyncConnection, collection_id: str) -> None:
        """Drop a backend's per-collection objects, inside the deleting transaction."""

    def _encode_vectors(self, vectors: np.ndarray) -> Sequence[Any]:
        """Each chunk's vector as the backend binds it (done before taking the write lock)."""
        raise NotImplementedError

    async def _insert_chunks(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], vectors: Sequence[Any]
    ) -> None:
        """Insert chunk rows (``chunk_rows``, of one or more documents) with their vectors."""
        raise NotImplementedError

    async def _documents_matching(
        self, collection: CollectionInfo, filters: list[tuple[str, Any]]
    ) -> list[str]:
        """Internal ids of the collection's documents whose metadata passes ``filters``
        (validated ``(key, value)`` equality tests), in the backend's JSON dialect."""
        raise NotImplementedError

    async def _snapshot_rows(
        self, collection: CollectionInfo, filters: list[tuple[str, Any]]
    ) -> tuple[Snapshot, np.ndarray | None]:
        """The caught-up snapshot and the rows ``filters`` allow (None: every row)."""
        documents = await self._documents_matching(collection, filters) if filters else None
        snapshot = await self._snapshots.get(collection)
        return snapshot, None if documents is None else snapshot.allowed_rows(documents)

    async def _bm25(
        self, collection: CollectionInfo, query: str, limit: int, filters: Filters | None
    ) -> list[tuple[int, float]]:
        """BM25 over the collection's in-process postings (both backends rank the same)."""
        pairs = check_filters(filters)
        if limit < 1 or not self._snapshots.analyzer.query_terms(query):
            return []
        snapshot, allowed = await self._snapshot_rows(collection, pairs)
        return snapshot.keyword_search(query, limit, allowed)

    async def create_collection(
        self,
        name: str,
        embedder: str,
        dimension: int,
        metadata: Mapping[str, Any] | None = None,
        project_id: str = "default",
    ) -> CollectionInfo:
        validate_collection_name(name)
        if dimension < 1:
            raise InvalidRequestError("an embedder dimension must be positive")
        self._check_dimension(dimension)
        await self._ready()
        info = CollectionInfo(
            id=secrets.token_hex(16),
            name=name,
            embedder=embedder,
            dimension=dimension,
            created_at=time.time(),
            metadata=dict(metadata or {}),
            project_id=project_id,
        )
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    insert(collections).values(
                        id=info.id,
                        name=stored_name(project_id, name),
                        embedder=embedder,
                        dimension=dimension,
                        metadata=info.metadata,
                        created_at=info.created_at,
                        version=0,
                        project_id=project_id,
                    )
                )
                await self._create_collection_objects(conn, info)
        except IntegrityError as exc:
            raise InvalidRequestError(
                f"collection {name!r} already exists", code="collection_exists", param="name"
            ) from exc
        return info

    async def get_collection(
        self, name: str, *, counts: bool = True, project_id: str = "default"
    ) -> CollectionInfo:
        # Counting sums over every document row of the collection (tens of ms at 100,000
        # chunks); search and ingestion only need identity and embedder, so they skip it.
        found = await self._collections(name, counts=counts, project_id=project_id)
        if not found:
            raise NotFoundError(f"no collection named {name!r}")
        return found[0]

    async def list_collections(self, project_id: str | None = None) -> list[CollectionInfo]:
        return await self._collections(None, project_id=project_id)

    async def _collections(
        self, name: str | None, *, counts: bool = True, project_id: str | None = None
    ) -> list[CollectionInfo]:
        """By name (of ``project_id``, the default project when None), or every collection
        (of ``project_id`` when given)."""
        await self._ready()
        stored = None if name is None else stored_name(project_id or "default", name)
        if not counts and stored is not None:
            async with self.db.engine.connect() as conn:
                row = (
                    await conn.execute(select(collections).where(collections.c.name == stored))
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
        if stored is not None:
            query = query.where(collections.c.name == stored)
        elif project_id is not None:
            query = query.where(collections.c.project_id == project_id)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [collection_info(row, int(row[-2]), int(row[-1])) for row in rows]

    async def delete_collection(self, name: str, project_id: str = "default") -> None:
        info = await self.get_collection(name, counts=False, project_id=project_id)
        async with self.db.exclusive(f"trellis.collection.{info.id}") as conn:
            await conn.execute(delete(chunks_table).where(chunks_table.c.collection_id == info.id))
            await conn.execute(delete(collections).where(collections.c.id == info.id))
            await self._drop_collection_objects(conn, info.id)
        self._snapshots.forget(info.id)

    async def document_hashes(
        self, collection: CollectionInfo, document_ids: Sequence[str]
    ) -> dict[str, str]:
        await self._ready()
        found: dict[str, str] = {}
        async with self.db.engine.connect() as conn:
            for batch in in_batches(document_ids):
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
        write = DocumentWrite(
            id=document_id,
            text=text,
            content_hash=content_hash,
            chunks=chunks,
            chunk_metadata=chunk_metadata,
            vectors=vectors,
            source=source,
            metadata=metadata,
            pages=pages,
        )
        return (await self.write_documents(collection, [write]))[0]

    async def write_documents(
        self, collection: CollectionInfo, writes: Sequence[DocumentWrite]
    ) -> list[bool]:
        ids = [write.id for write in writes]
        if len(set(ids)) != len(ids):
            twice = next(name for name in ids if ids.count(name) > 1)
            raise InvalidRequestError(f"document {twice!r} appears twice in one write")
        for write in writes:
            check_vectors(collection, write.chunks, write.vectors)
        if not writes:
            return []
        await self._ready()
        now = time.time()
        document_rows: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        vectors: list[Any] = []
        for write in writes:
            # Every version gets a fresh internal id: that is how snapshots tell a
            # replaced document from an unchanged one.
            internal_id = secrets.token_hex(16)
            document_rows.append(
                {
                    "id": internal_id,
                    "collection_id": collection.id,
                    "external_id": write.id,
                    "source": write.source,
                    "content_hash": write.content_hash,
                    "metadata": dict(write.metadata),
                    "text": write.text,
                    "chunk_count": len(write.chunks),
                    "created_at": now,
                    "updated_at": now,
                    "pages": list(write.pages) or None,
                }
            )
            rows.extend(chunk_rows(collection, internal_id, write.chunks, write.chunk_metadata))
            vectors.extend(self._encode_vectors(write.vectors))
        async with self.db.exclusive(f"trellis.collection.{collection.id}") as conn:
            replaced = await self._delete_documents(conn, collection, ids)
            await conn.execute(insert(documents), document_rows)
            if rows:
                await self._insert_chunks(conn, rows, vectors)
            await self._bump(conn, collection)
        return [name in replaced for name in ids]

    async def delete_document(self, collection: CollectionInfo, document_id: str) -> bool:
        await self._ready()
        async with self.db.exclusive(f"trellis.collection.{collection.id}") as conn:
            deleted = await self._delete_documents(conn, collection, [document_id])
            if deleted:
                await self._bump(conn, collection)
        return bool(deleted)

    async def _delete_documents(
        self, conn: AsyncConnection, collection: CollectionInfo, document_ids: Sequence[str]
    ) -> set[str]:
        """Remove documents and (by cascade) their chunks from every index, in this
        transaction; returns the ids that existed."""
        deleted: set[str] = set()
        for batch in in_batches(document_ids):
            result = await conn.execute(
                delete(documents)
                .where(
                    documents.c.collection_id == collection.id,
                    documents.c.external_id.in_(batch),
                )
                .returning(documents.c.external_id)
            )
            deleted.update(row[0] for row in result)
        return deleted

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
        await self._ready()
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
        await self._ready()
        async with self.db.exclusive(f"trellis.collection.{target.id}") as conn:
            if await collection_version(conn, target) != target.version:
                raise ConflictError(
                    f"collection {target.name!r} was written to during the re-index; run it again"
                )
            await conn.execute(
                delete(chunks_table).where(chunks_table.c.collection_id == target.id)
            )
            await conn.execute(delete(collections).where(collections.c.id == target.id))
            await self._drop_collection_objects(conn, target.id)
            # The staging collection keeps its id, so its own indexes stay valid as they are.
            await conn.execute(
                update(collections)
                .where(collections.c.id == staging.id)
                .values(
                    name=stored_name(target.project_id, target.name),
                    project_id=target.project_id,
                    created_at=target.created_at,
                    version=collections.c.version + 1,
                )
            )
        self._snapshots.forget(target.id)
        return await self.get_collection(target.name, project_id=target.project_id)

    async def list_documents(
        self, collection: CollectionInfo, *, limit: int = 100, offset: int = 0
    ) -> list[DocumentInfo]:
        await self._ready()
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

    async def fetch_chunks(self, chunk_ids: Sequence[int]) -> dict[int, Hit]:
        found: dict[int, Hit] = {}
        if not chunk_ids:
            return found
        await self._ready()
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
            for batch in in_batches(chunk_ids):
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
