"""Plain data shared by the retrieval modules: documents, chunks, collections, hits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Document",
    "Chunk",
    "CollectionInfo",
    "DocumentInfo",
    "DocumentWrite",
    "Hit",
    "IngestReport",
    "SearchMode",
]

SearchMode = Literal["keyword", "vector", "hybrid"]


@dataclass(frozen=True, slots=True)
class Document:
    """Text as a loader produced it; offsets of chunks and pages point into ``text``.

    ``id`` names the document inside its collection (a BEIR ``_id``, a caller's id, or
    the file path); re-ingesting under the same id replaces the earlier version.
    ``pages`` holds the character offset where each page starts (PDFs only).
    """

    id: str
    text: str
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    pages: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Chunk:
    """A span ``text[start:end]`` of a document, small enough for the embedder."""

    ordinal: int
    start: int
    end: int
    text: str
    token_count: int
    headings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """One document with its chunks and their vectors: what an index stores for it.

    ``content_hash`` is what re-ingestion compares to skip unchanged documents;
    ``chunk_metadata`` and ``vectors`` line up with ``chunks``.
    """

    id: str
    text: str
    content_hash: str
    chunks: Sequence[Chunk]
    chunk_metadata: Sequence[Mapping[str, Any]]
    vectors: np.ndarray
    source: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    pages: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    id: str
    name: str
    embedder: str
    dimension: int
    created_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    documents: int = 0
    chunks: int = 0
    #: Bumped by every write to the collection (compare-and-swap for re-indexing).
    version: int = 0
    #: The project that owns the collection (``trellis.access.projects``).
    project_id: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "project": self.project_id,
            "embedder": {"name": self.embedder, "dimension": self.dimension},
            "created_at": self.created_at,
            "metadata": self.metadata,
            "documents": self.documents,
            "chunks": self.chunks,
        }


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    id: str
    source: str | None
    content_hash: str
    metadata: dict[str, Any]
    chunks: int
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "content_hash": self.content_hash,
            "metadata": self.metadata,
            "chunks": self.chunks,
            "updated_at": self.updated_at,
        }


@dataclass(slots=True)
class Hit:
    """One retrieved chunk with everything a citation or a trace needs.

    ``scores`` holds every score that contributed: ``keyword`` (BM25, higher is better),
    ``vector`` (cosine), and for hybrid search the fused ``hybrid`` score; ``score`` is
    the one the ranking used.
    """

    chunk_id: int
    document_id: str
    text: str
    start: int
    end: int
    score: float
    scores: dict[str, float]
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    chunk_metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_id": self.chunk_id,
            "document_id": self.document_id,
            "source": self.source,
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "score": self.score,
            "scores": self.scores,
            "metadata": self.metadata,
            "chunk_metadata": self.chunk_metadata,
        }


@dataclass(slots=True)
class IngestReport:
    """What an ingestion did, file by file: nothing is skipped silently."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    chunks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "replaced": self.replaced,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "chunks": self.chunks,
        }
