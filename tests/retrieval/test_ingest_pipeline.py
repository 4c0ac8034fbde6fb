"""The ingestion pipeline: chunking, embedding and writing overlap, and nothing gets mixed up.

A deterministic fake embedder (vector = hash of the text) makes every chunk's vector
checkable, and records when it runs so the overlap of the stages is observable.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from trellis.errors import ContextLengthExceededError
from trellis.retrieval import Retrieval, SQLiteIndex
from trellis.retrieval.chunking import ChunkingConfig, chunk_text
from trellis.retrieval.models import Document
from trellis.store import Database


class HashEmbedder:
    """Word-counting, hash-vector embedder; optionally slow, or failing on call ``fail_on``."""

    name = "hash-test"
    dimension = 16
    max_tokens = 256

    def __init__(self, *, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.calls = 0
        self.embedding = threading.Event()
        self.counted_while_embedding = 0
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        if self.embedding.is_set():
            with self._lock:
                self.counted_while_embedding += 1
        return len(text.split()) + 2

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.calls += 1
            call = self.calls
        if call == self.fail_on:
            raise ContextLengthExceededError("too long (injected)", param="input")
        self.embedding.set()
        try:
            time.sleep(self.delay)
        finally:
            self.embedding.clear()
        return np.stack([vector(text) for text in texts]) if texts else np.zeros((0, 16))


def vector(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    values = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
    return values / np.linalg.norm(values)


def documents(count: int) -> list[Document]:
    """Documents of 300 distinct one-word sentences: three chunks each at 120 tokens."""
    docs = []
    for n in range(count):
        paragraphs = [" ".join(f"doc{n}para{p}word{w}." for w in range(100)) for p in range(3)]
        docs.append(Document(id=f"doc-{n}", text="\n\n".join(paragraphs)))
    return docs


async def test_every_chunk_keeps_its_own_vector_across_batches(database: Database) -> None:
    retrieval = Retrieval(
        SQLiteIndex(database),
        HashEmbedder(),  # type: ignore[arg-type]
        chunking=ChunkingConfig(target_tokens=120, overlap_tokens=0),
        batch_chunks=5,
    )
    await retrieval.create_collection("c")
    report = await retrieval.add_documents("c", documents(20))
    assert sorted(report.added) == sorted(f"doc-{n}" for n in range(20))
    assert report.chunks == 60
    docs = documents(20)
    for n in (0, 7, 19):
        for chunk in chunk_text(docs[n].text, HashEmbedder(), retrieval.chunking):
            (hit,) = await retrieval.search("c", chunk.text, mode="vector", top_k=1)
            assert (hit.document_id, hit.text) == (f"doc-{n}", chunk.text)
            assert hit.score == pytest.approx(1.0, abs=1e-5)


async def test_chunking_runs_while_a_batch_embeds(database: Database) -> None:
    embedder = HashEmbedder(delay=0.2)
    retrieval = Retrieval(
        SQLiteIndex(database),
        embedder,  # type: ignore[arg-type]
        chunking=ChunkingConfig(target_tokens=120, overlap_tokens=0),
        batch_chunks=6,
    )
    await retrieval.create_collection("c")
    await retrieval.add_documents("c", documents(40))
    assert embedder.calls == 20
    assert embedder.counted_while_embedding > 0


async def test_an_embedding_error_surfaces_unwrapped_and_leaves_whole_documents(
    database: Database,
) -> None:
    config = ChunkingConfig(target_tokens=120, overlap_tokens=0)
    index = SQLiteIndex(database)
    failing = Retrieval(index, HashEmbedder(fail_on=3), chunking=config, batch_chunks=6)  # type: ignore[arg-type]
    await failing.create_collection("c")
    with pytest.raises(ContextLengthExceededError, match="injected"):
        await failing.add_documents("c", documents(20))
    written = await failing.list_documents("c", limit=100)
    # Batches one and two (two documents each) were written before the third failed.
    assert sorted(doc.id for doc in written) == ["doc-0", "doc-1", "doc-2", "doc-3"]
    assert all(doc.chunks == 3 for doc in written)

    working = Retrieval(index, HashEmbedder(), chunking=config, batch_chunks=6)  # type: ignore[arg-type]
    report = await working.add_documents("c", documents(20))
    assert len(report.unchanged) == 4 and len(report.added) == 16
