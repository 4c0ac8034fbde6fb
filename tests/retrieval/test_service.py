"""The retrieval service on both indexes (SQLite, Postgres), with the real bundled embedder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from trellis.errors import InvalidRequestError, NotFoundError
from trellis.inference.local.embedder import MiniLMEmbedder
from trellis.retrieval import Document, DocumentWrite, Retrieval, SQLiteIndex, index_for
from trellis.retrieval.index import keyword_terms
from trellis.retrieval.models import Chunk
from trellis.store import Database

DOCS = [
    {
        "id": "wing",
        "text": "Swept wings delay shock waves at transonic speeds.",
        "metadata": {"topic": "aero", "year": 1960},
    },
    {
        "id": "heat",
        "text": "Heat transfer in hypersonic boundary layers raises skin temperature.",
        "metadata": {"topic": "thermal", "year": 1962},
    },
    {
        "id": "cake",
        "text": "Bake the sponge cake for thirty minutes at a moderate oven heat.",
        "metadata": {"topic": "cooking", "year": 2020},
    },
]


async def _counts(db: Database) -> tuple[int, int, int]:
    """Documents, chunks, and keyword-index entries for 'heat' (SQLite: a fresh in-memory
    snapshot built from the file, as another process would see it; Postgres: the GIN index)."""
    async with db.engine.connect() as conn:
        docs = (await conn.execute(text("SELECT count(*) FROM documents"))).scalar_one()
        chunks = (await conn.execute(text("SELECT count(*) FROM chunks"))).scalar_one()
        if not db.is_sqlite:
            keyword = (
                "SELECT count(*) FROM chunks WHERE fts_vector @@ to_tsquery('english', 'heat')"
            )
            return docs, chunks, (await conn.execute(text(keyword))).scalar_one()
    fresh = SQLiteIndex(db)
    found = 0
    for collection in await fresh.list_collections():
        found += len(await fresh.keyword_search(collection, "heat", 1000))
    return docs, chunks, found


async def test_collections_lifecycle(retrieval: Retrieval) -> None:
    created = await retrieval.create_collection("docs", {"team": "a"})
    assert (created.embedder, created.dimension) == ("all-minilm-l6-v2", 384)
    with pytest.raises(InvalidRequestError, match="already exists"):
        await retrieval.create_collection("docs")
    with pytest.raises(InvalidRequestError, match="invalid collection name"):
        await retrieval.create_collection("../etc")
    await retrieval.add_documents("docs", DOCS)
    info = await retrieval.get_collection("docs")
    assert (info.documents, info.chunks, info.metadata) == (3, 3, {"team": "a"})
    assert [c.name for c in await retrieval.list_collections()] == ["docs"]
    await retrieval.delete_collection("docs")
    with pytest.raises(NotFoundError):
        await retrieval.get_collection("docs")
    assert await _counts(retrieval.index.db) == (0, 0, 0)  # type: ignore[attr-defined]


async def test_search_modes_scores_offsets_filters(retrieval: Retrieval) -> None:
    await retrieval.create_collection("docs")
    await retrieval.add_documents("docs", DOCS)
    for mode in ("keyword", "vector", "hybrid"):
        hits = await retrieval.search("docs", "shock waves on swept wings", mode=mode, top_k=2)
        assert hits[0].document_id == "wing", mode
        assert hits[0].text == DOCS[0]["text"][hits[0].start : hits[0].end]
        assert hits[0].metadata["topic"] == "aero"
    hybrid = await retrieval.search("docs", "oven heat", mode="hybrid", top_k=3)
    assert {"keyword", "vector", "hybrid"} <= set(hybrid[0].scores)
    assert hybrid[0].score == hybrid[0].scores["hybrid"]

    filtered = await retrieval.search("docs", "heat", filters={"topic": "cooking"}, top_k=5)
    assert [h.document_id for h in filtered] == ["cake"]
    by_number = await retrieval.search("docs", "heat", mode="vector", filters={"year": 1962})
    assert [h.document_id for h in by_number] == ["heat"]
    strict = await retrieval.search("docs", "swept wings", mode="vector", min_score=0.3)
    assert strict and all(h.score >= 0.3 for h in strict)
    assert await retrieval.search("docs", "zzyzx qwxq", mode="keyword") == []
    with pytest.raises(InvalidRequestError):
        await retrieval.search("docs", "x", filters={"bad key'": 1})
    with pytest.raises(InvalidRequestError):
        await retrieval.search("docs", "x", mode="fuzzy")  # type: ignore[arg-type]


def test_keyword_terms_drop_syntax_and_stop_words() -> None:
    assert keyword_terms('wings AND "drag" OR NEAR(x) the') == ["wings", "drag", "near", "x"]
    assert keyword_terms("the of") == ["the", "of"]
    assert keyword_terms("  ...  ") == []


async def test_reingest_is_idempotent_and_changes_replace(retrieval: Retrieval) -> None:
    db = retrieval.index.db  # type: ignore[attr-defined]
    await retrieval.create_collection("docs")
    first = await retrieval.add_documents("docs", DOCS)
    assert sorted(first.added) == ["cake", "heat", "wing"]
    again = await retrieval.add_documents("docs", DOCS)
    assert sorted(again.unchanged) == ["cake", "heat", "wing"] and not again.added
    assert await _counts(db) == (3, 3, 2)

    changed = [{**DOCS[2], "text": "Knead the bread dough and let it rise overnight."}]
    report = await retrieval.add_documents("docs", changed)
    assert report.replaced == ["cake"]
    assert await _counts(db) == (3, 3, 1), "the old chunk left the keyword index"
    hits = await retrieval.search("docs", "bread dough", mode="vector", top_k=1)
    assert hits[0].document_id == "cake" and "bread" in hits[0].text

    await retrieval.delete_document("docs", "heat")
    assert await _counts(db) == (2, 2, 0)
    assert all(
        h.document_id != "heat" for h in await retrieval.search("docs", "hypersonic heat", top_k=5)
    )
    with pytest.raises(NotFoundError):
        await retrieval.delete_document("docs", "heat")


async def test_folder_ingestion_reports_and_skips_bad_files(
    retrieval: Retrieval, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "guide.md").write_text(
        "# Guide\n\n" + "Install the package with pip. " * 200 + "\n\n## Usage\n\nRun it.",
        encoding="utf-8",
    )
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (folder / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": d["id"], "text": d["text"]}) for d in DOCS), encoding="utf-8"
    )
    await retrieval.create_collection("files")
    report = await retrieval.ingest("files", [folder], metadata={"batch": "one"})
    assert list(report.failed) == [str((folder / "broken.pdf").resolve())]
    assert len(report.added) == 4 and report.chunks > 4
    hits = await retrieval.search("files", "how do I run it", top_k=3, filters={"batch": "one"})
    usage = next(h for h in hits if h.chunk_metadata.get("headings") == ["Guide", "Usage"])
    assert usage.source and usage.source.endswith("guide.md")


async def test_collection_embedder_is_enforced(
    backend_database: Database, embedder: MiniLMEmbedder
) -> None:
    index = index_for(backend_database)
    await index.create_collection("other", "some-embedder", 8)
    with pytest.raises(InvalidRequestError, match="re-index"):
        await Retrieval(index, embedder).add_documents("other", DOCS)
    info = await index.get_collection("other")
    doc = Document(id="x", text="abc")
    with pytest.raises(InvalidRequestError, match="dimension"):
        await index.write_document(
            info,
            "x",
            text=doc.text,
            source=None,
            metadata={},
            content_hash="h",
            chunks=[],
            chunk_metadata=[],
            vectors=np.zeros((1, 384), dtype=np.float32),
        )


class FailingEmbedder:
    """The real embedder until ``fail_after`` texts have been embedded, then a crash."""

    def __init__(self, inner: MiniLMEmbedder, fail_after: int) -> None:
        self.inner, self.fail_after, self.seen = inner, fail_after, 0
        self.name, self.dimension, self.max_tokens = inner.name, inner.dimension, inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def embed(self, texts: Any) -> np.ndarray:
        self.seen += len(texts)
        if self.seen > self.fail_after:
            raise RuntimeError("power cut")
        return self.inner.embed(texts)


async def test_a_crash_mid_ingestion_leaves_whole_documents_only(
    backend_database: Database, embedder: MiniLMEmbedder
) -> None:
    flaky = Retrieval(index_for(backend_database), FailingEmbedder(embedder, 2), batch_chunks=1)
    await flaky.create_collection("docs")
    with pytest.raises(RuntimeError, match="power cut"):
        await flaky.add_documents("docs", DOCS)
    docs, chunks, _ = await _counts(backend_database)
    assert (docs, chunks) == (2, 2)


async def test_a_failed_write_keeps_the_previous_version(retrieval: Retrieval) -> None:
    db = retrieval.index.db  # type: ignore[attr-defined]
    await retrieval.create_collection("docs")
    await retrieval.add_documents("docs", DOCS)
    info = await retrieval.get_collection("docs")
    chunk = Document(id="heat", text="new").text
    broken = [Chunk(0, 0, 3, chunk, 3), Chunk(1, 0, 3, None, 3)]  # type: ignore[arg-type]
    with pytest.raises(Exception, match="NOT NULL|not-null"):
        await retrieval.index.write_document(
            info,
            "heat",
            text="new",
            source=None,
            metadata={},
            content_hash="h2",
            chunks=broken,
            chunk_metadata=[{}, {}],
            vectors=np.zeros((2, 384), dtype=np.float32),
        )
    assert await _counts(db) == (3, 3, 2)
    hits = await retrieval.search("docs", "hypersonic", mode="keyword")
    assert hits[0].document_id == "heat"


def _write(doc_id: str, body: str | None, vector_count: int = 1) -> DocumentWrite:
    """A one-chunk document write; ``body=None`` makes a chunk the database refuses."""
    chunk = Chunk(0, 0, len(body or "x"), body, 3)  # type: ignore[arg-type]
    return DocumentWrite(
        id=doc_id,
        text=body or "x",
        content_hash=f"hash-{doc_id}-{body}",
        chunks=[chunk],
        chunk_metadata=[{}],
        vectors=np.zeros((vector_count, 384), dtype=np.float32),
    )


async def test_a_batch_write_is_one_transaction(retrieval: Retrieval) -> None:
    db = retrieval.index.db  # type: ignore[attr-defined]
    await retrieval.create_collection("docs")
    await retrieval.add_documents("docs", DOCS)
    info = await retrieval.get_collection("docs")
    # A new document, then a replacement whose chunk the database refuses: neither lands.
    with pytest.raises(Exception, match="NOT NULL|not-null"):
        await retrieval.index.write_documents(
            info, [_write("fresh", "new text"), _write("heat", None)]
        )
    assert await _counts(db) == (3, 3, 2)
    listed = {doc.id for doc in await retrieval.list_documents("docs")}
    assert listed == {"wing", "heat", "cake"}
    # A vector count that does not match the chunks is refused before anything is written.
    with pytest.raises(InvalidRequestError, match="dimension"):
        await retrieval.index.write_documents(info, [_write("fresh", "a"), _write("b", "b", 2)])
    assert await _counts(db) == (3, 3, 2)


async def test_a_batch_write_reports_replacements_and_refuses_repeats(retrieval: Retrieval) -> None:
    await retrieval.create_collection("docs")
    await retrieval.add_documents("docs", DOCS)
    info = await retrieval.get_collection("docs")
    replaced = await retrieval.index.write_documents(
        info, [_write("heat", "heat again"), _write("fresh", "brand new")]
    )
    assert replaced == [True, False]
    after = await retrieval.get_collection("docs")
    assert (after.documents, after.chunks) == (4, 4)
    assert after.version > info.version
    hits = await retrieval.search("docs", "again", mode="keyword")
    assert [hit.document_id for hit in hits] == ["heat"]
    with pytest.raises(InvalidRequestError, match="'fresh' appears twice"):
        await retrieval.index.write_documents(info, [_write("fresh", "a"), _write("fresh", "b")])
    assert await retrieval.index.write_documents(info, []) == []


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


async def test_stored_values_deeper_than_the_limit_are_refused(
    retrieval: Retrieval, tmp_path: Path
) -> None:
    """The library path checks the nesting limit where values are stored, as the HTTP edge
    does, so no stored collection or document can make listing or search fail."""
    with pytest.raises(InvalidRequestError, match="levels deep") as caught:
        await retrieval.create_collection("deep", {"x": _nested(256)})
    assert caught.value.code == "nesting_too_deep" and caught.value.param == "metadata"
    with pytest.raises(NotFoundError):
        await retrieval.get_collection("deep")

    await retrieval.create_collection("docs")
    deep = {"id": "deep", "text": "Otters crack shellfish.", "metadata": _nested(900)}
    with pytest.raises(InvalidRequestError, match="levels deep") as caught:
        await retrieval.add_documents("docs", [DOCS[0], deep])
    assert caught.value.param == "documents[1].metadata"
    assert (await retrieval.get_collection("docs")).documents == 0  # nothing written
    # Files: the deep record's file lands in the report's failures; the rest goes in.
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "deep.jsonl").write_text(json.dumps(deep), encoding="utf-8")
    (folder / "fine.jsonl").write_text(json.dumps(DOCS[1]), encoding="utf-8")
    report = await retrieval.ingest("docs", [folder])
    assert list(report.failed) == [str((folder / "deep.jsonl").resolve())]
    assert report.added == ["heat"]
    with pytest.raises(InvalidRequestError, match="levels deep"):
        await retrieval.ingest("docs", [folder], metadata={"x": _nested(100)})
    # A value at the limit is stored, listed and searched.
    await retrieval.add_documents("docs", [{**DOCS[2], "metadata": _nested(60)}])
    assert len(await retrieval.list_documents("docs")) == 2
    assert await retrieval.search("docs", "sponge cake", top_k=1)
    assert [c.name for c in await retrieval.list_collections()] == ["docs"]


async def test_a_query_longer_than_the_embedder_window_is_searched_whole(
    retrieval: Retrieval, embedder: MiniLMEmbedder
) -> None:
    """It was a 400 context_length_exceeded; the vector side now reads every window, so
    what the query asks for at its very end still decides the vector ranking."""
    await retrieval.create_collection("docs")
    await retrieval.add_documents("docs", DOCS)
    query = (
        "I would like to read something, and I hope that you can help me to find it. " * 20
        + "It should explain how long to bake a sponge cake in the oven."
    )
    assert embedder.count_tokens(query) > embedder.max_tokens
    for mode in ("vector", "hybrid", "keyword"):
        hits = await retrieval.search("docs", query, mode=mode, top_k=3)
        assert hits[0].document_id == "cake", mode
    hybrid = await retrieval.search("docs", query, top_k=1)
    assert {"keyword", "vector"} <= set(hybrid[0].scores)


async def test_collection_names_are_a_projects_own(retrieval: Retrieval) -> None:
    """The same name in two projects: two collections, each found only in its project,
    re-indexed and deleted there (both backends)."""
    for project, body in (("default", "Otters hold hands."), ("alpha", "Herons stand still.")):
        made = await retrieval.create_collection("zoo", project_id=project)
        assert (made.name, made.project_id) == ("zoo", project)
        await retrieval.add_documents("zoo", [{"id": "a", "text": body}], project_id=project)
    with pytest.raises(InvalidRequestError, match="already exists"):
        await retrieval.create_collection("zoo", project_id="alpha")
    assert [h.text for h in await retrieval.search("zoo", "herons", project_id="alpha")] == [
        "Herons stand still."
    ]
    assert [h.text for h in await retrieval.search("zoo", "otters", mode="keyword")] == [
        "Otters hold hands."
    ]
    with pytest.raises(NotFoundError):
        await retrieval.get_collection("zoo", "beta")
    listed = await retrieval.list_collections()
    assert sorted((c.project_id, c.name) for c in listed) == [("alpha", "zoo"), ("default", "zoo")]
    assert [c.project_id for c in await retrieval.list_collections("alpha")] == ["alpha"]
    await retrieval.reindex("zoo", project_id="alpha")
    reindexed = await retrieval.get_collection("zoo", "alpha")
    assert (reindexed.name, reindexed.project_id, reindexed.documents) == ("zoo", "alpha", 1)
    await retrieval.delete_collection("zoo", "alpha")
    assert (await retrieval.get_collection("zoo")).project_id == "default"
    assert [c.project_id for c in await retrieval.list_collections()] == ["default"]
