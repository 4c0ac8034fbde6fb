"""Per-collection :class:`~trellis.retrieval.snapshot.Snapshot` objects that follow one database.

Both backends use it: SQLite for vectors and BM25, Postgres for BM25 only (its
vectors stay in pgvector's HNSW index). Before each search the store compares
the collection's ``version`` (bumped by every write transaction) with its
snapshot's; if it moved, it loads, in one consistent read, only the documents
that appeared and tombstones those that went. Several processes or replicas
sharing the database therefore never search stale data, and a write costs each
of them what it changed, not the whole collection.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.errors import NotFoundError
from trellis.retrieval.index import in_batches
from trellis.retrieval.keyword import Analyzer
from trellis.retrieval.models import CollectionInfo
from trellis.retrieval.snapshot import Rows, Snapshot
from trellis.store import Database
from trellis.store.tables import chunks as chunks_table
from trellis.store.tables import collections, documents

__all__ = ["SnapshotStore", "collection_version"]

#: Rebuild a snapshot from scratch once this share of its rows are tombstones.
REBUILD_DEAD_FRACTION = 0.3


async def collection_version(conn: AsyncConnection, collection: CollectionInfo) -> int:
    """The collection's current version (bumped by every write), or 404 if it was deleted."""
    version = (
        await conn.execute(select(collections.c.version).where(collections.c.id == collection.id))
    ).scalar()
    if version is None:
        raise NotFoundError(f"collection {collection.name!r} was deleted")
    return int(version)


class SnapshotStore:
    """Snapshots of the collections of ``database``; ``vectors=False`` keeps BM25 only."""

    def __init__(self, database: Database, analyzer: Analyzer, *, vectors: bool = True) -> None:
        self.db = database
        self.analyzer = analyzer
        self.vectors = vectors
        self._snapshots: dict[str, Snapshot] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    def forget(self, collection_id: str) -> None:
        """Drop a collection's snapshot (deleted or replaced)."""
        self._snapshots.pop(collection_id, None)
        self._loading.pop(collection_id, None)

    async def get(self, collection: CollectionInfo) -> Snapshot:
        """The collection's snapshot, caught up with the database."""
        async with self.db.engine.connect() as conn:
            version = await collection_version(conn, collection)
        cached = self._snapshots.get(collection.id)
        if cached is not None and cached.version == version:
            return cached
        lock = self._loading.setdefault(collection.id, asyncio.Lock())
        async with lock:
            cached = self._snapshots.get(collection.id)
            if cached is not None and cached.version >= version:
                return cached
            if cached is not None and cached.dead_fraction > REBUILD_DEAD_FRACTION:
                cached = None
            snapshot = await self._catch_up(collection, cached)
            self._snapshots[collection.id] = snapshot
            return snapshot

    async def _catch_up(self, collection: CollectionInfo, cached: Snapshot | None) -> Snapshot:
        """Load what changed since ``cached`` (everything if None) in one read transaction."""
        columns = [chunks_table.c.id, chunks_table.c.document_id, chunks_table.c.text]
        if self.vectors:
            columns.append(chunks_table.c.embedding)
        wanted = select(*columns)
        async with self.db.engine.connect() as conn:
            if not self.db.is_sqlite:
                # Version and rows from one snapshot (SQLite's read transactions already are).
                await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                version = await collection_version(conn, collection)
                current = {
                    row[0]
                    for row in await conn.execute(
                        select(documents.c.id).where(documents.c.collection_id == collection.id)
                    )
                }
                removed: list[str] = []
                added: list[str] = []
                if cached is not None:
                    added = [doc for doc in current if doc not in cached.documents]
                    removed = [doc for doc in cached.documents if doc not in current]
                    if len(added) > len(current) // 2:
                        cached = None
                if cached is None:
                    query = wanted.where(chunks_table.c.collection_id == collection.id)
                    rows = list((await conn.execute(query.order_by(chunks_table.c.id))).all())
                else:
                    rows = []
                    for batch in in_batches(added):
                        query = wanted.where(chunks_table.c.document_id.in_(batch))
                        rows.extend((await conn.execute(query.order_by(chunks_table.c.id))).all())
        dimension = collection.dimension if self.vectors else 0
        fresh = await asyncio.to_thread(
            Rows.build,
            self.analyzer,
            [row[0] for row in rows],
            [row[1] for row in rows],
            [row[2] for row in rows],
            [row[3] for row in rows] if self.vectors else [b""] * len(rows),
            dimension,
        )
        snapshot = cached if cached is not None else Snapshot(dimension, self.analyzer)
        # Both in one synchronous step: searches never see half of a catch-up.
        snapshot.remove_documents(removed)
        snapshot.append(fresh)
        snapshot.version = version
        return snapshot
