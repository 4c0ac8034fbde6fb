"""SQLiteIndex search fast paths give the same answers as the exhaustive queries."""

from __future__ import annotations

import numpy as np
from sqlalchemy import text

from trellis.retrieval import SQLiteIndex
from trellis.retrieval.index import fts_query
from trellis.retrieval.models import Chunk, CollectionInfo
from trellis.store import Database


async def _fill(index: SQLiteIndex, collection: CollectionInfo, texts: list[str]) -> None:
    """One document per text, one chunk each, vectors irrelevant (unit e1)."""
    vectors = np.zeros((1, collection.dimension), dtype=np.float32)
    vectors[0, 0] = 1.0
    for number, body in enumerate(texts):
        await index.write_document(
            collection,
            f"d{number}",
            text=body,
            source=None,
            metadata={},
            content_hash=str(number),
            chunks=[Chunk(0, 0, len(body), body, 5)],
            chunk_metadata=[{}],
            vectors=vectors,
        )


async def _exhaustive(
    database: Database, collection: CollectionInfo, query: str, limit: int
) -> list[tuple[int, float]]:
    sql = text(
        "SELECT f.rowid, bm25(chunks_fts) AS rank FROM chunks_fts f "
        "JOIN chunks c ON c.id = f.rowid WHERE chunks_fts MATCH :match "
        "AND c.collection_id = :cid ORDER BY rank LIMIT :limit"
    )
    async with database.engine.connect() as conn:
        rows = await conn.execute(
            sql, {"match": fts_query(query), "cid": collection.id, "limit": limit}
        )
        return [(int(row[0]), -float(row[1])) for row in rows]


async def test_keyword_search_is_exact_beside_a_larger_collection(database: Database) -> None:
    # The big collection fills FTS5's global window with better-scoring rows (short,
    # term-dense), so the small collection's search must fall back to the exhaustive join.
    index = SQLiteIndex(database)
    big = await index.create_collection("big", "e", 4)
    small = await index.create_collection("small", "e", 4)
    await _fill(index, big, ["shock wave"] * 250)
    small_texts = [f"a long text about a shock and {n} other words in it" for n in range(30)]
    await _fill(index, small, small_texts)

    for collection, limit in [(small, 10), (small, 100), (big, 10), (big, 300)]:
        found = await index.keyword_search(collection, "shock wave", limit)
        expected = await _exhaustive(database, collection, "shock wave", limit)
        assert [chunk_id for chunk_id, _ in found] == [chunk_id for chunk_id, _ in expected]
        assert np.allclose([s for _, s in found], [s for _, s in expected])
    assert len(await index.keyword_search(small, "shock", 10)) == 10
    assert await index.keyword_search(small, "nowhere", 10) == []


async def test_get_collection_without_counts(database: Database) -> None:
    index = SQLiteIndex(database)
    created = await index.create_collection("docs", "e", 4)
    await _fill(index, created, ["one text", "another text"])
    counted = await index.get_collection("docs")
    light = await index.get_collection("docs", counts=False)
    assert (counted.documents, counted.chunks) == (2, 2)
    assert (light.id, light.embedder, light.dimension) == (created.id, "e", 4)
    assert (light.documents, light.chunks) == (0, 0)
