"""SQLiteIndex specifics: collection counts and the like."""

from __future__ import annotations

import numpy as np

from trellis.retrieval import SQLiteIndex
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


async def test_get_collection_without_counts(database: Database) -> None:
    index = SQLiteIndex(database)
    created = await index.create_collection("docs", "e", 4)
    await _fill(index, created, ["one text", "another text"])
    counted = await index.get_collection("docs")
    light = await index.get_collection("docs", counts=False)
    assert (counted.documents, counted.chunks) == (2, 2)
    assert (light.id, light.embedder, light.dimension) == (created.id, "e", 4)
    assert (light.documents, light.chunks) == (0, 0)
