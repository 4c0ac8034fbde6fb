"""Only on Postgres: per-collection HNSW indexes, their use, and life without pgvector."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from trellis.retrieval import PgIndex, index_for
from trellis.retrieval.index import keyword_terms
from trellis.retrieval.models import Chunk, CollectionInfo
from trellis.retrieval.postgres_index import (
    PgvectorMissingError,
    tsquery_text,
    vector_index_name,
    vector_query,
)
from trellis.settings import Settings
from trellis.store import Database

from ..conftest import _admin, run_sync
from .conftest import empty_retrieval_tables

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg(retrieval_postgres_url: str) -> AsyncIterator[Database]:
    db = Database(retrieval_postgres_url)
    await db.connect()
    await empty_retrieval_tables(db)
    yield db
    await db.close()


async def _write(
    index: PgIndex, collection: CollectionInfo, doc: str, vectors: np.ndarray, **metadata: Any
) -> None:
    body = f"text of {doc}"
    await index.write_document(
        collection,
        doc,
        text=body,
        source=None,
        metadata=metadata,
        content_hash=doc,
        chunks=[Chunk(n, 0, len(body), body, 3) for n in range(len(vectors))],
        chunk_metadata=[{} for _ in vectors],
        vectors=vectors.astype(np.float32),
    )


async def _indexes(db: Database) -> dict[str, str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'chunks'")
        )
        return {row[0]: row[1] for row in rows}


async def test_each_collection_has_its_own_hnsw_index_dropped_with_it(pg: Database) -> None:
    index = PgIndex(pg)
    small = await index.create_collection("small", "e", 4)
    wide = await index.create_collection("wide", "e", 3072)  # past vector's 2,000: halfvec
    found = await _indexes(pg)
    definition = found[vector_index_name(small.id)]
    assert "USING hnsw" in definition and "vector(4)" in definition
    assert "vector_cosine_ops" in definition and f"'{small.id}'" in definition
    assert "halfvec(3072)" in found[vector_index_name(wide.id)]
    await _write(index, wide, "w", np.ones((1, 3072)))
    assert len(await index.vector_search(wide, np.ones(3072), 5)) == 1

    await index.delete_collection("small")
    found = await _indexes(pg)
    assert vector_index_name(small.id) not in found and vector_index_name(wide.id) in found


async def test_vector_queries_use_the_collections_index(pg: Database) -> None:
    index = PgIndex(pg)
    collection = await index.create_collection("docs", "e", 4)
    other = await index.create_collection("other", "e", 4)
    rng = np.random.default_rng(1)
    for n in range(20):
        await _write(index, collection, f"d{n}", rng.normal(size=(3, 4)), even=n % 2 == 0)
    query = np.array([1.0, 0.0, 0.0, 0.0])
    async with pg.engine.connect() as conn, conn.begin():
        # Tiny tables favour a sequential scan; forbidding it shows the index *can* serve
        # the query (an expression or predicate that does not match would still seq-scan).
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        for filters in (None, '{"even": true}'):
            sql, params = vector_query(collection, query, 5, filters)
            plan = "\n".join(row[0] for row in await conn.execute(text("EXPLAIN " + sql), params))
            assert f"Index Scan using {vector_index_name(collection.id)}" in plan, plan
            assert vector_index_name(other.id) not in plan


async def test_filtered_search_fills_the_limit_past_the_candidate_list(pg: Database) -> None:
    # 400 documents near the query, 30 far from it that pass the filter: a plain HNSW scan
    # (ef_search 40) would find none of the 30; the iterative scan keeps going.
    index = PgIndex(pg)
    collection = await index.create_collection("docs", "e", 8)
    rng = np.random.default_rng(2)
    query = np.zeros(8)
    query[0] = 1.0
    wanted: dict[str, np.ndarray] = {}
    for n in range(430):
        vector = rng.normal(0, 0.1, size=(1, 8))
        keep = n % 43 == 0 or n >= 400
        vector[0, 0 if not keep else 1] += 1.0
        if keep and len(wanted) < 30:
            wanted[f"d{n}"] = vector[0]
        await _write(index, collection, f"d{n}", vector, keep=keep and f"d{n}" in wanted)
    hits = await index.vector_search(collection, query, 20, {"keep": True})
    assert len(hits) == 20
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)
    found = await index.fetch_chunks([chunk_id for chunk_id, _ in hits])
    assert {hit.document_id for hit in found.values()} <= set(wanted)
    exact = sorted((float(v @ query / np.linalg.norm(v)) for v in wanted.values()), reverse=True)[
        :20
    ]
    assert np.allclose(scores, exact, atol=1e-5)


async def test_scores_and_filters_match_sqlite_semantics(pg: Database) -> None:
    index = PgIndex(pg)
    collection = await index.create_collection("docs", "e", 2)
    await _write(index, collection, "a", np.array([[1.0, 0.0]]), n=1962, flag=True, s="x")
    await _write(index, collection, "b", np.array([[0.0, 1.0]]), n=1962.0, flag=False, s="1962")
    hits = await index.vector_search(collection, np.array([1.0, 0.0]), 5)
    assert [round(score, 6) for _, score in hits] == [1.0, 0.0]  # cosine similarity
    assert len(await index.vector_search(collection, np.ones(2), 5, {"n": 1962})) == 2
    assert len(await index.vector_search(collection, np.ones(2), 5, {"flag": True})) == 1
    assert len(await index.vector_search(collection, np.ones(2), 5, {"s": "1962"})) == 1
    assert len(await index.vector_search(collection, np.ones(2), 5, {"s": 1962})) == 0
    assert await index.keyword_search(collection, "text", 5, {"flag": False}) != []


def test_tsquery_terms_are_the_shared_keyword_terms_and_inert() -> None:
    query = "wings AND \"drag\" OR NEAR(x) the it's a:b & !c | d<->e ' \\"
    assert tsquery_text(query) is not None and keyword_terms(query)
    assert tsquery_text(query).split(" | ") == [f"'{t}'" for t in keyword_terms(query)]
    assert tsquery_text("the of") == "'the' | 'of'"
    assert tsquery_text(" ... ") is None


@pytest.mark.parametrize("rank", ["bm25", "ts_rank", "ts_rank_cd"])
async def test_hostile_keyword_queries_are_plain_terms(pg: Database, rank: Any) -> None:
    index = PgIndex(pg, keyword_rank=rank)
    collection = await index.create_collection("docs", "e", 2)
    await _write(index, collection, "a", np.ones((1, 2)))
    for query in ("text') | ('", "!text & (of", "text:* <-> of", "'; DROP TABLE chunks; --"):
        assert len(await index.keyword_search(collection, query, 5)) <= 1


@pytest.mark.parametrize("rank", ["ts_rank", "ts_rank_cd"])
async def test_ranking_in_postgres_finds_and_filters(pg: Database, rank: Any) -> None:
    index = PgIndex(pg, keyword_rank=rank)
    collection = await index.create_collection("docs", "e", 2)
    await _write(index, collection, "wing", np.ones((1, 2)), topic="aero")
    await _write(index, collection, "heat", np.ones((1, 2)), topic="thermal")
    hits = await index.keyword_search(collection, "wings", 5)
    found = await index.fetch_chunks([chunk for chunk, _ in hits])
    assert [found[chunk].document_id for chunk, _ in hits] == ["wing"]
    assert await index.keyword_search(collection, "text", 5, {"topic": "thermal"}) != []
    assert await index.keyword_search(collection, "wing", 5, {"topic": "thermal"}) == []


async def test_bm25_follows_writes_from_another_index(pg: Database) -> None:
    reader, writer = PgIndex(pg), PgIndex(pg)
    collection = await writer.create_collection("docs", "e", 2)
    await _write(writer, collection, "wing", np.ones((1, 2)))
    assert len(await reader.keyword_search(collection, "wing", 5)) == 1
    await _write(writer, collection, "wings", np.ones((1, 2)))
    assert len(await reader.keyword_search(collection, "wing", 5)) == 2
    await writer.delete_document(collection, "wing")
    assert len(await reader.keyword_search(collection, "wing", 5)) == 1


# --- without pgvector ----------------------------------------------------------------------


@pytest.fixture
def unprivileged_url(new_postgres_database: Any) -> Iterator[tuple[str, str]]:
    """A database owned by a role that may not create extensions: pgvector cannot appear."""
    admin_url = make_url(new_postgres_database())
    name = admin_url.database
    role = f"trellis_norole_{secrets.token_hex(4)}"
    server = admin_url.set(database="postgres").render_as_string(hide_password=False)
    run_sync(
        _admin(server, f'CREATE ROLE "{role}" LOGIN', f'ALTER DATABASE "{name}" OWNER TO "{role}"')
    )
    yield (
        admin_url.set(username=role).render_as_string(hide_password=False),
        admin_url.render_as_string(hide_password=False),
    )
    run_sync(
        _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'DROP ROLE "{role}"')
    )


@pytest.mark.pgvector
async def test_without_pgvector_retrieval_explains_and_later_recovers(
    unprivileged_url: tuple[str, str],
) -> None:
    user_url, admin_url = unprivileged_url
    db = Database(user_url)
    await db.connect()  # migrations pass: 0006 skips what it may not do
    try:
        index = PgIndex(db)
        for _ in range(2):  # the same clear error each time, not a one-off
            with pytest.raises(PgvectorMissingError, match="CREATE EXTENSION vector") as info:
                await index.list_collections()
            assert info.value.status_code == 503 and info.value.code == "pgvector_missing"
        # An administrator installs the extension; the running index picks it up.
        await _admin(admin_url, "CREATE EXTENSION vector")
        collection = await index.create_collection("docs", "e", 2)
        await _write(index, collection, "a", np.array([[1.0, 0.0]]))
        assert [s for _, s in await index.vector_search(collection, np.ones(2), 3)] == [
            pytest.approx(2**-0.5)
        ]
        assert vector_index_name(collection.id) in await _indexes(db)
    finally:
        await db.close()


@pytest.mark.pgvector
async def test_a_database_migrated_before_pgvector_gets_it_on_first_use(
    new_postgres_database: Any,
) -> None:
    db = Database(new_postgres_database())
    await db.connect()
    try:
        # As if revision 0006 had run while the server had no pgvector.
        async with db.engine.begin() as conn:
            await conn.execute(text("DROP EXTENSION vector CASCADE"))
        replicas = [PgIndex(db), PgIndex(db)]
        # Two replicas at once: the advisory lock lets one install, the other finds it done.
        first, second = await asyncio.gather(
            replicas[0].create_collection("a", "e", 2), replicas[1].create_collection("b", "e", 2)
        )
        for index, collection in zip(replicas, (first, second), strict=True):
            await _write(index, collection, "x", np.array([[0.0, 1.0]]))
            assert len(await index.vector_search(collection, np.array([0.0, 1.0]), 3)) == 1
        found = await _indexes(db)
        assert vector_index_name(first.id) in found and vector_index_name(second.id) in found
    finally:
        await db.close()


async def test_keyword_ranking_comes_from_settings(pg: Database) -> None:
    settings = Settings(retrieval={"postgres_keyword_rank": "ts_rank"})
    chosen = index_for(pg, postgres_keyword_rank=settings.retrieval.postgres_keyword_rank)
    assert isinstance(chosen, PgIndex) and chosen.keyword_rank == "ts_rank"
    assert isinstance(index_for(pg), PgIndex) and index_for(pg).keyword_rank == "bm25"  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        Settings(retrieval={"postgres_keyword_rank": "tf-idf"})
