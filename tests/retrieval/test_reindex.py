"""Switching a collection's embedder is an explicit re-index that swaps in one step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trellis.errors import ConflictError, InvalidRequestError
from trellis.inference.local.embedder import MiniLMEmbedder, fit_dimensions
from trellis.retrieval import Document, Retrieval
from trellis.retrieval.index import Index
from trellis.retrieval.models import CollectionInfo

DOCS = [
    Document("wing", "Swept wings delay shock waves at transonic speeds.", "a.txt", {"t": "aero"}),
    Document(
        "report",
        "Page one is about heat transfer.\n\nPage two is about boundary layers.",
        "report.pdf",
        {"t": "thermal"},
        pages=(0, 34),
    ),
    Document("cake", "A sponge cake needs eggs, flour and sugar.", None, {"t": "food"}),
]


class ShortMiniLM:
    """The bundled model cut to 128 dimensions: another embedder, as a collection sees it."""

    def __init__(self, inner: MiniLMEmbedder, fail_after: int | None = None) -> None:
        self.inner, self.fail_after, self.seen = inner, fail_after, 0
        self.name, self.dimension, self.max_tokens = "minilm-128", 128, inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def embed(self, texts: Any) -> np.ndarray:
        self.seen += len(texts)
        if self.fail_after is not None and self.seen > self.fail_after:
            raise RuntimeError("power cut")
        return fit_dimensions(self.inner.embed(texts), 128)


async def _names(index: Index) -> list[str]:
    return [info.name for info in await index.list_collections()]


async def test_reindex_switches_the_embedder_and_keeps_documents(
    index: Index, embedder: MiniLMEmbedder
) -> None:
    old = Retrieval(index, embedder)  # type: ignore[arg-type]
    await old.create_collection("docs", {"owner": "team"})
    await old.add_documents("docs", DOCS)

    new = Retrieval(index, ShortMiniLM(embedder))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="re-index"):
        await new.search("docs", "shock waves")

    before = await index.get_collection("docs")
    seen: list[tuple[int, int]] = []
    report = await new.reindex("docs", progress=lambda d, c: seen.append((d, c)))
    assert sorted(report.replaced) == ["cake", "report", "wing"] and not report.failed
    assert sum(d for d, _ in seen) == 3

    info = await index.get_collection("docs")
    assert (info.embedder, info.dimension) == ("minilm-128", 128)
    assert info.created_at == before.created_at  # the same collection, rebuilt
    assert (info.documents, info.metadata) == (3, {"owner": "team"})
    assert await _names(index) == ["docs"]
    hits = await new.search("docs", "shock waves on swept wings", top_k=1)
    assert hits[0].document_id == "wing" and hits[0].source == "a.txt"
    pages = await new.search("docs", "boundary layers", mode="keyword", top_k=1)
    assert pages[0].document_id == "report"
    assert pages[0].chunk_metadata.get("page_start") in (1, 2)
    assert [doc.pages for doc in await index.read_documents(info) if doc.id == "report"] == [
        (0, 34)
    ]
    # Re-ingesting the same documents afterwards is a no-op: hashes follow the new embedder.
    again = await new.add_documents("docs", DOCS)
    assert sorted(again.unchanged) == ["cake", "report", "wing"]


async def test_an_interrupted_reindex_leaves_the_collection_as_it_was(
    index: Index, embedder: MiniLMEmbedder
) -> None:
    old = Retrieval(index, embedder)  # type: ignore[arg-type]
    await old.create_collection("docs")
    await old.add_documents("docs", DOCS)
    flaky = Retrieval(index, ShortMiniLM(embedder, fail_after=1), batch_chunks=1)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="power cut"):
        await flaky.reindex("docs")
    info = await index.get_collection("docs")
    assert (info.embedder, info.documents) == (embedder.name, 3)
    assert await _names(index) == ["docs"]  # the staging copy is gone
    assert (await old.search("docs", "sponge cake", top_k=1))[0].document_id == "cake"


class WriteDuringReindex:
    """The real index, plus a concurrent writer that adds a document mid-re-index."""

    def __init__(self, inner: Index, writer: Retrieval) -> None:
        self.inner, self.writer, self.calls = inner, writer, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read_documents(self, collection: CollectionInfo, **kwargs: Any) -> list[Document]:
        self.calls += 1
        if self.calls == 1:
            await self.writer.add_documents("docs", [Document("late", "A late arrival.")])
        return await self.inner.read_documents(collection, **kwargs)


async def test_a_write_during_reindex_is_a_conflict_not_a_loss(
    index: Index, embedder: MiniLMEmbedder
) -> None:
    old = Retrieval(index, embedder)  # type: ignore[arg-type]
    await old.create_collection("docs")
    await old.add_documents("docs", DOCS)
    racing = Retrieval(WriteDuringReindex(index, old), ShortMiniLM(embedder))  # type: ignore[arg-type]
    with pytest.raises(ConflictError):
        await racing.reindex("docs")
    info = await index.get_collection("docs")
    assert (info.embedder, info.documents) == (embedder.name, 4)
    assert await _names(index) == ["docs"]
