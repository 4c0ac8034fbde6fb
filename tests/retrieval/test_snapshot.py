"""The SQLite backend's in-memory snapshots follow the database exactly, write by write."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from trellis.retrieval import SQLiteIndex
from trellis.retrieval.models import Chunk, CollectionInfo
from trellis.store import Database

WORDS = [
    "shock",
    "wave",
    "boundary",
    "layer",
    "flow",
    "heat",
    "transfer",
    "laminar",
    "turbulent",
    "pressure",
    "drag",
]


def _vectors(count: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.normal(size=(count, 8)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def _write(
    index: SQLiteIndex,
    collection: CollectionInfo,
    document_id: str,
    texts: list[str],
    rng: np.random.Generator,
    metadata: dict[str, str] | None = None,
) -> None:
    await index.write_document(
        collection,
        document_id,
        text=" ".join(texts),
        source=None,
        metadata=metadata or {},
        content_hash=str(rng.random()),
        chunks=[Chunk(n, 0, len(t), t, 5) for n, t in enumerate(texts)],
        chunk_metadata=[{} for _ in texts],
        vectors=_vectors(len(texts), rng),
    )


async def _results(index: SQLiteIndex, name: str) -> list[object]:
    collection = await index.get_collection(name, counts=False)
    probe = _vectors(1, np.random.default_rng(99))[0]
    return [
        await index.keyword_search(collection, "shock wave flow", 50),
        await index.keyword_search(collection, "heat", 50, {"group": "a"}),
        await index.vector_search(collection, probe, 50),
        await index.vector_search(collection, probe, 50, {"group": "b"}),
    ]


def _same(left: list[object], right: list[object]) -> None:
    for mine, theirs in zip(left, right, strict=True):
        assert [c for c, _ in mine] == [c for c, _ in theirs]  # type: ignore[attr-defined]
        assert np.allclose([s for _, s in mine], [s for _, s in theirs])  # type: ignore[attr-defined]


async def test_incremental_catch_up_equals_a_fresh_load(database: Database) -> None:
    rng = np.random.default_rng(1)
    words = random.Random(2)
    writer = SQLiteIndex(database)
    collection = await writer.create_collection("docs", "test", 8)

    def texts() -> list[str]:
        return [" ".join(words.choice(WORDS) for _ in range(12)) for _ in range(3)]

    for number in range(40):
        group = "a" if number % 2 else "b"
        await _write(writer, collection, f"d{number}", texts(), rng, {"group": group})
    searcher = SQLiteIndex(database)  # another process sharing the file, in effect
    await _results(searcher, "docs")
    for step in range(30):
        action = step % 3
        target = f"d{words.randrange(50)}"
        if action == 0:
            await _write(writer, collection, target, texts(), rng, {"group": "a"})
        elif action == 1:
            await writer.delete_document(collection, target)
        else:
            await _write(writer, collection, f"new{step}", texts(), rng, {"group": "b"})
        _same(await _results(searcher, "docs"), await _results(SQLiteIndex(database), "docs"))


async def test_statistics_are_per_collection(tmp_path: Path, database: Database) -> None:
    rng = np.random.default_rng(3)
    index = SQLiteIndex(database)
    big = await index.create_collection("big", "test", 8)
    small = await index.create_collection("small", "test", 8)
    for number in range(200):
        await _write(index, big, f"b{number}", ["shock wave"], rng)
    for number in range(20):
        await _write(index, small, f"s{number}", [f"a shock and {number} other words"], rng)

    alone_db = Database(f"sqlite+aiosqlite:///{tmp_path / 'alone.db'}")
    await alone_db.connect()
    try:
        alone = SQLiteIndex(alone_db)
        only = await alone.create_collection("small", "test", 8)
        for number in range(20):
            await _write(alone, only, f"s{number}", [f"a shock and {number} other words"], rng)
        beside = await index.keyword_search(small, "shock wave", 10)
        isolated = await alone.keyword_search(only, "shock wave", 10)
        assert len(beside) == 10
        assert np.allclose([s for _, s in beside], [s for _, s in isolated])
    finally:
        await alone_db.close()


async def test_deleted_collection_drops_its_snapshot(database: Database) -> None:
    rng = np.random.default_rng(4)
    index = SQLiteIndex(database)
    collection = await index.create_collection("docs", "test", 8)
    await _write(index, collection, "d", ["shock wave"], rng)
    assert await index.keyword_search(collection, "shock", 5)
    await index.delete_collection("docs")
    recreated = await index.create_collection("docs", "test", 8)
    assert await index.keyword_search(recreated, "shock", 5) == []
