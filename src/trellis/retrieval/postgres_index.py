"""The Postgres retrieval backend: pgvector HNSW for vectors, full-text search for keywords.

Chunks live in the shared ``chunks`` table. Their vectors sit in an untyped pgvector
column, ``chunks.embedding_vector`` (collections use embedders of different sizes), and
each collection gets its own partial HNSW index over ``embedding_vector::vector(d)``
limited to its rows, created and dropped with the collection. Vector queries repeat the
index's exact expression and predicate (collection ids are inlined as literals: a
generic plan with a bound id could never prove the partial index applies), so the
planner uses it. Keyword search is, by default, the same BM25 as the embedded backend,
over postings held in process and caught up with the database by collection version
(:mod:`trellis.retrieval.snapshot_store`): ``ts_rank`` has no inverse document
frequency and measured well below BM25 (Cranfield nDCG@10 0.324 vs 0.38), and scored
every match of a broad query (slow at 100,000 chunks: README, Performance).
``keyword_rank="ts_rank"`` (or ``ts_rank_cd``) keeps ranking in Postgres, over
``chunks.fts_vector`` — ``to_tsvector('english', text)`` as a stored generated column
with a GIN index (revision ``0006_pgvector``) — for deployments that cannot hold
postings in memory.

pgvector is optional for the rest of Trellis: revision ``0006_pgvector`` installs it
when the server has it, and :meth:`PgIndex._ensure` repeats that (idempotently, under
an advisory lock) on first use, so a database migrated before pgvector was installed
starts working once it is. Without it every call raises :class:`PgvectorMissingError`
(HTTP 503) naming what to install.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.errors import InvalidRequestError, TrellisError
from trellis.retrieval.index import Filters, check_filters, keyword_terms
from trellis.retrieval.keyword import Analyzer
from trellis.retrieval.models import CollectionInfo
from trellis.retrieval.snapshot_store import SnapshotStore
from trellis.retrieval.table_index import TableIndex, query_vector
from trellis.store import Database
from trellis.store.tables import chunks as chunks_table
from trellis.store.tables import collections

__all__ = [
    "PgIndex",
    "PgvectorMissingError",
    "VECTOR_COLUMN",
    "tsquery_text",
    "vector_index_name",
    "vector_query",
]

#: The pgvector column on ``chunks`` (not in ``tables.py``: it exists only with pgvector).
VECTOR_COLUMN = "embedding_vector"
#: Per-collection HNSW indexes are named this plus the collection id.
VECTOR_INDEX_PREFIX = "chunks_vec_"
#: pgvector's defaults and limits.
DEFAULT_EF_SEARCH = 40
MAX_EF_SEARCH = 1000
MAX_VECTOR_DIMENSION = 2000  # HNSW over vector(d)
MAX_HALFVEC_DIMENSION = 4000  # HNSW over halfvec(d), for larger embedders
#: Rows an iterative (filtered) scan may visit before giving up; pgvector's default is 20,000.
MAX_SCAN_TUPLES = 100_000

KeywordRank = Literal["bm25", "ts_rank", "ts_rank_cd"]
#: Measured on Cranfield and ADI (nDCG@10, benchmarks/retrieval_quality.py --backend postgres).
DEFAULT_KEYWORD_RANK: KeywordRank = "bm25"
DEFAULT_RANK_NORMALIZATION = 1  # rank / (1 + log(document length))

_SAFE_ID = re.compile(r"[A-Za-z0-9_]{1,32}")
_INSTALL_LOCK = "trellis.pgvector"


class PgvectorMissingError(TrellisError):
    """The database has no pgvector, so retrieval cannot run there (the rest of Trellis can)."""

    status_code = 503
    error_type = "server_error"
    code = "pgvector_missing"


def vector_index_name(collection_id: str) -> str:
    """The HNSW index of one collection."""
    return VECTOR_INDEX_PREFIX + _safe_id(collection_id)


def _safe_id(collection_id: str) -> str:
    """A collection id fit to inline in SQL (ids are generated hex; this is the guard)."""
    if not _SAFE_ID.fullmatch(collection_id):
        raise InvalidRequestError(f"invalid collection id {collection_id!r}")
    return collection_id


def _vector_type(dimension: int) -> tuple[str, str]:
    """``(SQL type, HNSW operator class)`` for a dimension: vector up to 2,000, else halfvec."""
    if dimension <= MAX_VECTOR_DIMENSION:
        return f"vector({dimension})", "vector_cosine_ops"
    if dimension <= MAX_HALFVEC_DIMENSION:
        return f"halfvec({dimension})", "halfvec_cosine_ops"
    raise InvalidRequestError(
        f"the Postgres backend indexes at most {MAX_HALFVEC_DIMENSION} dimensions; "
        f"this embedder has {dimension}"
    )


def _index_ddl(collection_id: str, dimension: int) -> str:
    sql_type, opclass = _vector_type(dimension)
    cid = _safe_id(collection_id)
    return (
        f"CREATE INDEX IF NOT EXISTS {vector_index_name(cid)} ON chunks USING hnsw "
        f"(({VECTOR_COLUMN}::{sql_type}) {opclass}) WHERE collection_id = '{cid}'"
    )


def _drop_index_ddl(collection_id: str) -> str:
    return f"DROP INDEX IF EXISTS {vector_index_name(collection_id)}"


def tsquery_text(query: str) -> str | None:
    """A ``to_tsquery`` input: any of the query's terms, stop words dropped, each quoted.

    Terms come from :func:`trellis.retrieval.index.keyword_terms`: ``\\w+`` runs, which
    hold no quote, backslash or tsquery operator, and each is a quoted operand, so user
    input can never become tsquery syntax.
    """
    content = keyword_terms(query)
    if not content:
        return None
    return " | ".join(f"'{t}'" for t in content)


def _filter_json(filters: Filters | None) -> str | None:
    """Validated filters as one JSONB containment document (equality on each key)."""
    pairs = check_filters(filters)
    return json.dumps(dict(pairs)) if pairs else None


class PgIndex(TableIndex):
    """The Postgres backend: rows in the Trellis tables, pgvector HNSW, full-text search."""

    def __init__(
        self,
        database: Database,
        *,
        keyword_rank: KeywordRank = DEFAULT_KEYWORD_RANK,
        rank_normalization: int = DEFAULT_RANK_NORMALIZATION,
    ) -> None:
        if database.is_sqlite:
            raise InvalidRequestError("PgIndex needs a Postgres database")
        if keyword_rank not in get_args(KeywordRank) or not 0 <= rank_normalization < 64:
            raise InvalidRequestError(
                "keyword_rank: bm25, ts_rank or ts_rank_cd; normalization 0-63"
            )
        self.db = database
        #: Keyword scoring, as ``rank(to_tsvector(text), query, normalization)``.
        self.keyword_rank = keyword_rank
        self.rank_normalization = rank_normalization
        #: BM25 postings in process (keyword_rank "bm25"), caught up with the database.
        self.analyzer = Analyzer()
        self._snapshots = SnapshotStore(database, self.analyzer, vectors=False)
        self._installed = False
        self._ready_lock = asyncio.Lock()
        self._iterative_scan = True

    # --- pgvector ----------------------------------------------------------------

    async def _ready(self) -> None:
        await self._ensure()

    async def _drop_collection_objects(self, conn: AsyncConnection, collection_id: str) -> None:
        await conn.execute(text(_drop_index_ddl(collection_id)))

    async def _ensure(self) -> None:
        """Make sure pgvector, the vector column and every collection's index exist (once)."""
        if self._installed:
            return
        async with self._ready_lock:
            if self._installed:
                return
            async with self.db.engine.connect() as conn:
                version = await self._column_and_version(conn)
            if version is None:
                version = await self._install()
            # Iterative index scans (for filtered queries) arrived in pgvector 0.8.0.
            self._iterative_scan = _version_tuple(version) >= (0, 8, 0)
            self._installed = True

    @staticmethod
    async def _column_and_version(conn: AsyncConnection) -> str | None:
        """pgvector's version if the vector column exists (it cannot without the extension)."""
        row = (
            await conn.execute(
                text(
                    "SELECT e.extversion FROM pg_extension e WHERE e.extname = 'vector' "
                    "AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'chunks'::regclass "
                    "AND attname = :column AND NOT attisdropped)"
                ),
                {"column": VECTOR_COLUMN},
            )
        ).first()
        return None if row is None else str(row[0])

    async def _install(self) -> str:
        """Create the extension, the column and missing indexes, under the database's lock.

        Needed when the database was migrated before pgvector was installed on the server
        (revision 0006 then skipped it). Idempotent; concurrent replicas wait on the lock.
        """
        async with self.db.exclusive(_INSTALL_LOCK) as conn:
            available = (
                await conn.execute(
                    text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
                )
            ).first()
            if available is None:
                raise PgvectorMissingError(
                    "retrieval on Postgres needs the pgvector extension, which this PostgreSQL "
                    "server does not have: install it on the database server (e.g. the "
                    "postgresql-<version>-pgvector package, or scripts/install-pgvector.sh) "
                    "and retry; see 'Postgres backend' in docs/configuration.md"
                )
            try:
                async with conn.begin_nested():
                    await conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            except DBAPIError as exc:
                raise PgvectorMissingError(
                    "retrieval on Postgres needs the pgvector extension in this database, and "
                    f"creating it failed ({exc.orig}); ask a superuser to run "
                    "'CREATE EXTENSION vector;' in it and retry"
                ) from exc
            await conn.execute(
                text(f"ALTER TABLE chunks ADD COLUMN IF NOT EXISTS {VECTOR_COLUMN} vector")
            )
            existing = await conn.execute(select(collections.c.id, collections.c.dimension))
            for collection_id, dimension in existing.all():
                await conn.execute(text(_index_ddl(collection_id, dimension)))
            version = (
                await conn.execute(
                    text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                )
            ).scalar_one()
        return str(version)

    # --- collections -------------------------------------------------------------

    def _check_dimension(self, dimension: int) -> None:
        _vector_type(dimension)

    async def _create_collection_objects(self, conn: AsyncConnection, info: CollectionInfo) -> None:
        # Empty, so instant; in the same transaction, so no collection lacks one.
        await conn.execute(text(_index_ddl(info.id, info.dimension)))

    async def drop_vector_index(self, collection: CollectionInfo) -> None:
        """Drop a collection's HNSW index before a large load (then :meth:`build_vector_index`).

        One build after the load is several times faster than maintaining the graph row
        by row. Meanwhile vector search stays correct: it scans the collection exactly.
        """
        await self._ensure()
        async with self.db.exclusive(f"trellis.collection.{collection.id}") as conn:
            await conn.execute(text(_drop_index_ddl(collection.id)))

    async def build_vector_index(
        self, collection: CollectionInfo, *, maintenance_work_mem: str = "1GB"
    ) -> None:
        """(Re)build a collection's HNSW index, with memory enough to keep the graph in RAM."""
        if not re.fullmatch(r"\d+\s*[kMG]?B", maintenance_work_mem):
            raise InvalidRequestError("maintenance_work_mem: a size such as '512MB'")
        await self._ensure()
        async with self.db.write() as conn:
            await conn.execute(text(f"SET LOCAL maintenance_work_mem = '{maintenance_work_mem}'"))
            await conn.execute(text(_drop_index_ddl(collection.id)))
            await conn.execute(text(_index_ddl(collection.id, collection.dimension)))

    # --- documents ---------------------------------------------------------------

    def _encode_vectors(self, vectors: np.ndarray) -> list[list[float]]:
        # Plain float lists go out as binary real[] (asyncpg encodes them in C), then are
        # cast to vector in the server: no per-value text formatting, no codec to register.
        return vectors.astype(np.float32, copy=False).tolist()  # type: ignore[no-any-return]

    async def _insert_chunks(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], vectors: Sequence[Any]
    ) -> None:
        await conn.execute(
            _INSERT_CHUNK,
            [{**row, "vector": vector} for row, vector in zip(rows, vectors, strict=True)],
        )

    async def keyword_search(
        self, collection: CollectionInfo, query: str, limit: int, filters: Filters | None = None
    ) -> list[tuple[int, float]]:
        if self.keyword_rank == "bm25":
            return await self._bm25(collection, query, limit, filters)
        tsquery = tsquery_text(query)
        where = _filter_json(filters)
        if tsquery is None or limit < 1:
            return []
        await self._ensure()
        join = " JOIN documents d ON d.id = c.document_id" if where else ""
        condition = " AND d.metadata @> CAST(:filter AS jsonb)" if where else ""
        sql = text(
            f"SELECT c.id, {self.keyword_rank}(c.fts_vector, q.q, "
            f"{int(self.rank_normalization)}) AS score "
            f"FROM chunks c{join}, to_tsquery('english', :query) AS q(q) "
            "WHERE c.fts_vector @@ q.q "
            f"AND c.collection_id = :cid{condition} "
            "ORDER BY score DESC, c.id LIMIT :limit"
        )
        params: dict[str, Any] = {"query": tsquery, "cid": collection.id, "limit": limit}
        if where:
            params["filter"] = where
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(sql, params)
            return [(int(row[0]), float(row[1])) for row in rows]

    async def _documents_matching(
        self, collection: CollectionInfo, filters: list[tuple[str, Any]]
    ) -> list[str]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id FROM documents WHERE collection_id = :cid "
                    "AND metadata @> CAST(:filter AS jsonb)"
                ),
                {"cid": collection.id, "filter": json.dumps(dict(filters))},
            )
            return [row[0] for row in rows]

    async def vector_search(
        self,
        collection: CollectionInfo,
        vector: np.ndarray,
        limit: int,
        filters: Filters | None = None,
    ) -> list[tuple[int, float]]:
        query = query_vector(collection, vector)
        where = _filter_json(filters)
        if limit < 1:
            return []
        await self._ensure()
        sql, params = vector_query(collection, query, limit, where)
        async with self.db.engine.connect() as conn, conn.begin():
            for setting in self._search_settings(limit, filtered=where is not None):
                await conn.execute(text(setting))
            rows = await conn.execute(text(sql), params)
            return [(int(row[0]), float(row[1])) for row in rows]

    def _search_settings(self, limit: int, *, filtered: bool) -> list[str]:
        """``SET LOCAL`` statements: a candidate list as deep as ``limit``, iterative if filtered.

        HNSW returns at most ``ef_search`` rows per scan; with a filter, pgvector 0.8's
        iterative scan keeps walking the graph until enough rows pass (strict order keeps
        the results sorted by distance), so a selective filter still fills ``limit``.
        """
        settings = []
        ef_search = min(max(limit, DEFAULT_EF_SEARCH), MAX_EF_SEARCH)
        if ef_search != DEFAULT_EF_SEARCH:
            settings.append(f"SET LOCAL hnsw.ef_search = {ef_search}")
        if self._iterative_scan and (filtered or limit > MAX_EF_SEARCH):
            settings.append("SET LOCAL hnsw.iterative_scan = strict_order")
            settings.append(f"SET LOCAL hnsw.max_scan_tuples = {MAX_SCAN_TUPLES}")
        return settings


def vector_query(
    collection: CollectionInfo, vector: np.ndarray, limit: int, filter_json: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The nearest-neighbour SQL and its parameters; public so tests can EXPLAIN it.

    The distance expression and the ``collection_id`` literal match the collection's
    partial HNSW index word for word; anything else and the planner cannot use it.
    """
    sql_type, _ = _vector_type(collection.dimension)
    cid = _safe_id(collection.id)
    distance = f"(c.{VECTOR_COLUMN}::{sql_type}) <=> CAST(CAST(:vector AS real[]) AS {sql_type})"
    condition = ""
    params: dict[str, Any] = {"vector": vector.astype(np.float32).tolist(), "limit": limit}
    if filter_json is not None:
        condition = (
            " AND c.document_id IN (SELECT d.id FROM documents d "
            f"WHERE d.collection_id = '{cid}' AND d.metadata @> CAST(:filter AS jsonb))"
        )
        params["filter"] = filter_json
    sql = (
        f"SELECT c.id, 1 - ({distance}) AS score FROM chunks c "
        f"WHERE c.collection_id = '{cid}'{condition} "
        f"ORDER BY {distance} LIMIT :limit"
    )
    return sql, params


_INSERT_CHUNK = text(
    "INSERT INTO chunks (collection_id, document_id, ordinal, text, char_start, char_end, "
    f"token_count, metadata, embedding, {VECTOR_COLUMN}) VALUES (:collection_id, :document_id, "
    ":ordinal, :text, :char_start, :char_end, :token_count, :metadata, CAST('' AS bytea), "
    "CAST(CAST(:vector AS real[]) AS vector))"
).bindparams(bindparam("metadata", type_=chunks_table.c.metadata.type))


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])
