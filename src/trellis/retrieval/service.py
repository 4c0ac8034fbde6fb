"""The retrieval API: collections, idempotent ingestion, and keyword/vector/hybrid search.

:class:`Retrieval` is what the server, the CLI and library users call. It owns
the pipeline (load -> chunk -> embed -> write) and fusion; storage and the two
base searches belong to an :class:`~trellis.retrieval.index.Index`. Chunking
and embedding run in worker threads so an event loop serving requests stays
responsive, and the stages overlap (a batch is chunked and the previous one
written while another embeds); each batch of whole documents is written in one
transaction, so a crash leaves every document either fully ingested or untouched.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trellis.errors import InvalidRequestError, NotFoundError
from trellis.nesting import DEFAULT_MAX_DEPTH, check_depth, exceeds_depth, too_deep
from trellis.retrieval.chunking import ChunkingConfig, TokenCounter, chunk_text
from trellis.retrieval.fusion import FusionConfig, fuse
from trellis.retrieval.index import Filters, Index
from trellis.retrieval.loaders import LoaderError, iter_files, load_path, record_to_document
from trellis.retrieval.models import (
    Chunk,
    CollectionInfo,
    Document,
    DocumentInfo,
    DocumentWrite,
    Hit,
    IngestReport,
    SearchMode,
)
from trellis.retrieval.query_vector import embed_query

__all__ = ["Embedder", "Retrieval", "DEFAULT_FUSION"]

logger = logging.getLogger(__name__)

#: Hybrid default: equal weights on min-max-normalised scores of each list's top
#: ``hybrid_depth``. It beat RRF (k=20 or 60) on both collections at hand with either
#: BM25 k1 (benchmarks/retrieval_quality.py: Cranfield 0.415 vs 0.411, ADI 0.544 vs
#: 0.505), and unlike RRF it keeps how far apart scores are, not only their order.
DEFAULT_FUSION = FusionConfig(method="weighted", k=60.0, weights=(0.5, 0.5))

MAX_TOP_K = 1000


class Embedder(TokenCounter, Protocol):
    """A synchronous embedding model (``MiniLMEmbedder`` is one); called from worker threads."""

    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


Progress = Callable[[int, int], None]
_Batch = list[tuple[Document, list[Chunk]]]


class Retrieval:
    """Collections over one :class:`Index`, embedded with one :class:`Embedder`."""

    def __init__(
        self,
        index: Index,
        embedder: Embedder,
        *,
        chunking: ChunkingConfig | None = None,
        fusion: FusionConfig | None = None,
        batch_chunks: int = 64,
        hybrid_depth: int = 100,
        max_json_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.chunking = chunking or ChunkingConfig()
        self.fusion = fusion or DEFAULT_FUSION
        self.batch_chunks = batch_chunks
        self.hybrid_depth = hybrid_depth
        #: The deepest metadata stored (``Settings.max_json_depth``): a deeper value could
        #: be stored but not encoded again, breaking every listing and search over it.
        self.max_json_depth = max_json_depth

    # --- collections -----------------------------------------------------------

    async def create_collection(
        self, name: str, metadata: Mapping[str, Any] | None = None, project_id: str = "default"
    ) -> CollectionInfo:
        check_depth(metadata, self.max_json_depth, what="Collection metadata", param="metadata")
        return await self.index.create_collection(
            name, self.embedder.name, self.embedder.dimension, metadata, project_id
        )

    # Collection names are a project's own: every method names the collection by project
    # and name (the default project unless told).

    async def get_collection(self, name: str, project_id: str = "default") -> CollectionInfo:
        return await self.index.get_collection(name, project_id=project_id)

    async def list_collections(self, project_id: str | None = None) -> list[CollectionInfo]:
        """Every collection (of ``project_id`` when given)."""
        return await self.index.list_collections(project_id)

    async def delete_collection(self, name: str, project_id: str = "default") -> None:
        await self.index.delete_collection(name, project_id)

    async def list_documents(
        self, name: str, *, limit: int = 100, offset: int = 0, project_id: str = "default"
    ) -> list[DocumentInfo]:
        return await self.index.list_documents(
            await self.get_collection(name, project_id), limit=limit, offset=offset
        )

    async def delete_document(
        self, name: str, document_id: str, project_id: str = "default"
    ) -> None:
        collection = await self.get_collection(name, project_id)
        if not await self.index.delete_document(collection, document_id):
            raise NotFoundError(f"no document {document_id!r} in collection {name!r}")

    async def _usable(self, name: str, project_id: str = "default") -> CollectionInfo:
        collection = await self.index.get_collection(name, counts=False, project_id=project_id)
        if (collection.embedder, collection.dimension) != (
            self.embedder.name,
            self.embedder.dimension,
        ):
            raise InvalidRequestError(
                f"collection {name!r} was built with {collection.embedder} "
                f"({collection.dimension} dimensions), not {self.embedder.name} "
                f"({self.embedder.dimension}); switching embedder needs an explicit re-index",
                code="embedder_mismatch",
            )
        return collection

    # --- ingestion ---------------------------------------------------------------

    async def ingest(
        self,
        name: str,
        paths: Iterable[str | Path],
        *,
        metadata: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
        project_id: str = "default",
    ) -> IngestReport:
        """Files and folders; an unreadable file lands in ``report.failed``, the rest go on."""
        check_depth(metadata, self.max_json_depth, what="The metadata", param="metadata")
        collection = await self._usable(name, project_id)
        report = IngestReport()
        pending: list[Document] = []
        for path in iter_files(paths):
            try:
                loaded = await asyncio.to_thread(load_path, path)
                for doc in loaded:
                    if exceeds_depth(doc.metadata, self.max_json_depth):
                        raise LoaderError(str(path), self._too_deep(doc).message)
            except LoaderError as exc:
                logger.warning("skipping %s: %s", exc.source, exc.reason)
                report.failed[exc.source] = exc.reason
                continue
            pending.extend(_with_metadata(doc, metadata) for doc in loaded)
            if len(pending) >= 64:
                await self._ingest_documents(collection, pending, report, progress)
                pending = []
        await self._ingest_documents(collection, pending, report, progress)
        return report

    async def add_documents(
        self,
        name: str,
        docs: Iterable[Document | Mapping[str, Any]],
        *,
        progress: Progress | None = None,
        project_id: str = "default",
    ) -> IngestReport:
        """Documents given as objects or JSON-like dicts (``id``, ``text``, ``metadata``...)."""
        collection = await self._usable(name, project_id)
        parsed = [
            doc if isinstance(doc, Document) else record_to_document(doc, f"documents[{n}]")
            for n, doc in enumerate(docs)
        ]
        for n, doc in enumerate(parsed):
            if not doc.id:
                raise InvalidRequestError("every document needs a non-empty id")
            if exceeds_depth(doc.metadata, self.max_json_depth):
                raise self._too_deep(doc, f"documents[{n}].metadata")
        report = IngestReport()
        await self._ingest_documents(collection, parsed, report, progress)
        return report

    def _too_deep(self, doc: Document, param: str | None = None) -> InvalidRequestError:
        """The error for a document whose metadata nests past ``max_json_depth``."""
        return too_deep(f"The metadata of document {doc.id!r}", self.max_json_depth, param)

    def content_hash(self, doc: Document) -> str:
        """Changes whenever the stored result would: text, metadata, source, embedder, chunking."""
        payload = {
            "text": doc.text,
            "metadata": doc.metadata,
            "source": doc.source,
            "pages": doc.pages,
            "embedder": [self.embedder.name, self.embedder.dimension],
            "chunking": [
                self.chunking.target_tokens,
                self.chunking.overlap_tokens,
                self.chunking.max_tokens,
            ],
        }
        encoded = json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(encoded.encode()).hexdigest()

    async def _ingest_documents(
        self,
        collection: CollectionInfo,
        docs: Sequence[Document],
        report: IngestReport,
        progress: Progress | None,
    ) -> None:
        # The last version of an id within one call wins.
        unique = list({doc.id: doc for doc in docs}.values())
        if not unique:
            return
        hashes = {doc.id: self.content_hash(doc) for doc in unique}
        existing = await self.index.document_hashes(collection, list(hashes))
        todo = []
        for doc in unique:
            if existing.get(doc.id) == hashes[doc.id]:
                report.unchanged.append(doc.id)
            else:
                todo.append(doc)
        if progress and len(todo) < len(unique):
            progress(len(unique) - len(todo), 0)
        # A pipeline of three stages joined by one-slot queues: while a batch embeds
        # (most of the time), the next documents are chunked and the previous batch is
        # written. Batches hold whole documents, about ``batch_chunks`` chunks each.
        # A failure travels down the queues like a batch, so everything embedded before
        # it is still written (as it was before the stages overlapped), then it is raised.
        to_embed: asyncio.Queue[_Batch | Exception | None] = asyncio.Queue(maxsize=1)
        to_write: asyncio.Queue[tuple[_Batch, np.ndarray] | Exception | None] = asyncio.Queue(
            maxsize=1
        )

        async def chunk_stage() -> None:
            batch: _Batch = []
            size = 0
            try:
                for start in range(0, len(todo), 16):
                    group = todo[start : start + 16]
                    chunked = await asyncio.to_thread(self._chunk_all, group)
                    for doc, doc_chunks in zip(group, chunked, strict=True):
                        batch.append((doc, doc_chunks))
                        size += len(doc_chunks)
                        if size >= self.batch_chunks:
                            await to_embed.put(batch)
                            batch, size = [], 0
            except Exception as exc:
                await to_embed.put(exc)
                return
            if batch:
                await to_embed.put(batch)
            await to_embed.put(None)

        async def embed_stage() -> None:
            while True:
                batch = await to_embed.get()
                if batch is None or isinstance(batch, Exception):
                    await to_write.put(batch)
                    return
                texts = [chunk.text for _, doc_chunks in batch for chunk in doc_chunks]
                try:
                    vectors = await asyncio.to_thread(self.embedder.embed, texts)
                except Exception as exc:
                    await to_write.put(exc)
                    return
                await to_write.put((batch, vectors))

        async def write_stage() -> None:
            while (item := await to_write.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                batch, vectors = item
                await self._write_batch(
                    collection, batch, vectors, hashes, existing, report, progress
                )

        await _run_stages(chunk_stage(), embed_stage(), write_stage())

    def _chunk_all(self, docs: Sequence[Document]) -> list[list[Chunk]]:
        return [chunk_text(doc.text, self.embedder, self.chunking) for doc in docs]

    async def _write_batch(
        self,
        collection: CollectionInfo,
        batch: _Batch,
        vectors: np.ndarray,
        hashes: Mapping[str, str],
        existing: Mapping[str, str],
        report: IngestReport,
        progress: Progress | None,
    ) -> None:
        chunk_count = sum(len(doc_chunks) for _, doc_chunks in batch)
        writes: list[DocumentWrite] = []
        row = 0
        for doc, doc_chunks in batch:
            writes.append(
                DocumentWrite(
                    id=doc.id,
                    text=doc.text,
                    content_hash=hashes[doc.id],
                    chunks=doc_chunks,
                    chunk_metadata=[_chunk_metadata(doc, chunk) for chunk in doc_chunks],
                    vectors=vectors[row : row + len(doc_chunks)],
                    source=doc.source,
                    metadata=doc.metadata,
                    pages=doc.pages,
                )
            )
            row += len(doc_chunks)
        # One transaction per batch: whole documents only, so a crash still leaves
        # every document either fully written or not at all.
        replaced = await self.index.write_documents(collection, writes)
        for write, was_replaced in zip(writes, replaced, strict=True):
            (report.replaced if was_replaced or write.id in existing else report.added).append(
                write.id
            )
            report.chunks += len(write.chunks)
        if progress:
            progress(len(batch), chunk_count)

    async def reindex(
        self, name: str, *, progress: Progress | None = None, project_id: str = "default"
    ) -> IngestReport:
        """Re-chunk and re-embed every document with this service's embedder and chunking.

        The way to switch a collection's embedder. Documents go into a staging collection
        (``reindex.<collection id>``) that takes the collection's place in one transaction
        at the end, so searches keep working on the old vectors meanwhile and a crash leaves
        the collection as it was (the next re-index starts the staging copy over). A write
        to the collection during the re-index makes the swap fail with a 409, not vanish.
        """
        target = await self.index.get_collection(name, project_id=project_id)
        staging_name = f"reindex.{target.id}"
        with contextlib.suppress(NotFoundError):  # a crashed re-index's leftovers
            await self.index.delete_collection(staging_name, target.project_id)
        staging = await self.index.create_collection(
            staging_name,
            self.embedder.name,
            self.embedder.dimension,
            target.metadata,
            target.project_id,
        )
        report = IngestReport()
        after: str | None = None
        try:
            while docs := await self.index.read_documents(target, after=after, limit=64):
                await self._ingest_documents(staging, docs, report, progress)
                after = docs[-1].id
            await self.index.replace_collection(target, staging)
        except BaseException:
            await asyncio.shield(self._drop_quietly(staging_name, target.project_id))
            raise
        # Every document was written anew; "added" is how ingestion counts that.
        report.replaced, report.added = report.added + report.replaced, []
        return report

    async def _drop_quietly(self, name: str, project_id: str) -> None:
        try:
            await self.index.delete_collection(name, project_id)
        except Exception:  # the original failure is the one worth reporting
            logger.warning("could not remove the staging collection %s", name, exc_info=True)

    # --- search ------------------------------------------------------------------

    async def search(
        self,
        name: str,
        query: str,
        *,
        mode: SearchMode = "hybrid",
        top_k: int = 10,
        filters: Filters | None = None,
        min_score: float | None = None,
        fusion: FusionConfig | None = None,
        project_id: str = "default",
    ) -> list[Hit]:
        """Best-first hits in ``project_id``'s collection ``name``. ``min_score`` applies to
        the score the mode ranks by.

        Queries of any length up to :data:`~trellis.retrieval.query_vector.MAX_QUERY_TOKENS`
        word pieces are searched: keyword search reads all of it, and one longer than the
        embedder's window is embedded in windows whose vectors are averaged.

        keyword: BM25 (unbounded, higher is better); vector: cosine in [-1, 1];
        hybrid: the fused score (weighted: in [0, 1]; RRF: about 1/(k+rank) per list).
        """
        if mode not in ("keyword", "vector", "hybrid"):
            raise InvalidRequestError(
                f"mode must be keyword, vector or hybrid, not {mode!r}", param="mode"
            )
        if not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise InvalidRequestError(f"top_k must be between 1 and {MAX_TOP_K}", param="top_k")
        if not isinstance(query, str) or not query.strip():
            raise InvalidRequestError("query must be a non-empty string", param="query")
        collection = await self._usable(name, project_id)
        depth = top_k if mode != "hybrid" else max(top_k, self.hybrid_depth)

        keyword: list[tuple[int, float]] = []
        vector: list[tuple[int, float]] = []
        if mode == "keyword":
            keyword = await self.index.keyword_search(collection, query, depth, filters)
        elif mode == "vector":
            vector = await self._vector(collection, query, depth, filters)
        else:
            keyword, vector = await asyncio.gather(
                self.index.keyword_search(collection, query, depth, filters),
                self._vector(collection, query, depth, filters),
            )

        ranked = (
            keyword
            if mode == "keyword"
            else vector
            if mode == "vector"
            else fuse(keyword, vector, fusion or self.fusion)
        )
        ranked = [pair for pair in ranked if min_score is None or pair[1] >= min_score][:top_k]
        found = await self.index.fetch_chunks([chunk_id for chunk_id, _ in ranked])
        keyword_scores, vector_scores = dict(keyword), dict(vector)
        hits = []
        for chunk_id, score in ranked:
            hit = found.get(chunk_id)
            if hit is None:  # deleted between search and fetch
                continue
            hit.score = score
            if chunk_id in keyword_scores:
                hit.scores["keyword"] = keyword_scores[chunk_id]
            if chunk_id in vector_scores:
                hit.scores["vector"] = vector_scores[chunk_id]
            if mode == "hybrid":
                hit.scores["hybrid"] = score
            hits.append(hit)
        return hits

    async def _vector(
        self, collection: CollectionInfo, query: str, depth: int, filters: Filters | None
    ) -> list[tuple[int, float]]:
        # A query longer than the embedder's window is embedded in windows and averaged
        # (query_vector); the keyword side always reads the whole query.
        vector = await asyncio.to_thread(embed_query, self.embedder, query)
        return await self.index.vector_search(collection, vector, depth, filters)


async def _run_stages(*stages: Coroutine[Any, Any, None]) -> None:
    """Run pipeline stages concurrently; the first failure cancels the rest and is raised as is.

    (``asyncio.TaskGroup`` would wrap it in an ExceptionGroup, hiding the API error type.)
    """
    tasks = [asyncio.ensure_future(stage) for stage in stages]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task in done and (error := task.exception()) is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _with_metadata(doc: Document, extra: Mapping[str, Any] | None) -> Document:
    if not extra:
        return doc
    return Document(
        id=doc.id,
        text=doc.text,
        source=doc.source,
        metadata={**doc.metadata, **extra},
        pages=doc.pages,
    )


def _chunk_metadata(doc: Document, chunk: Chunk) -> dict[str, Any]:
    extra: dict[str, Any] = {"tokens": chunk.token_count}
    if chunk.headings:
        extra["headings"] = list(chunk.headings)
    if doc.pages:
        first = bisect.bisect_right(doc.pages, chunk.start)
        last = bisect.bisect_right(doc.pages, max(chunk.start, chunk.end - 1))
        extra["page_start"], extra["page_end"] = first, last
    return extra
