"""Where chunks live and how they are found: the :class:`Index` protocol and what backends share.

The protocol is what the service layer needs and nothing more, so each backend
(``sqlite_index.SQLiteIndex``, the Postgres one beside it) runs the same tests.
Scores follow one convention: higher is better.

"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from trellis.errors import InvalidRequestError
from trellis.retrieval.models import (
    Chunk,
    CollectionInfo,
    Document,
    DocumentInfo,
    DocumentWrite,
    Hit,
)
from trellis.retrieval.stopwords import ENGLISH_STOPWORDS

__all__ = [
    "Index",
    "Filters",
    "check_filters",
    "collection_info",
    "in_batches",
    "keyword_terms",
    "validate_collection_name",
]

#: Metadata equality filters: ``{"lang": "en", "year": 2024}``.
Filters = Mapping[str, str | int | float | bool]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FILTER_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TERM = re.compile(r"\w+", re.UNICODE)
T = TypeVar("T")


def validate_collection_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            param="name",
        )
    return name


def stored_name(project_id: str, name: str) -> str:
    """``collections.name`` for collection ``name`` of ``project_id``: the name itself in
    the default project (as before projects), ``<project>/<name>`` elsewhere ('/' is in
    neither alphabet). Names are a project's own this way while the column keeps its unique
    constraint: dropping it means rebuilding the table on SQLite, and dropping
    ``collections`` there cascades to every document."""
    return name if project_id == "default" else f"{project_id}/{name}"


def shown_name(stored: str) -> str:
    """The collection's own name from its ``collections.name``."""
    return stored.rpartition("/")[2]


#: Values bound in one ``IN (...)`` list: well inside SQLite's and Postgres' parameter limits.
IN_LIST_SIZE = 500


def in_batches(values: Sequence[T]) -> Iterator[list[T]]:
    """``values`` in slices of at most :data:`IN_LIST_SIZE`, one per ``IN (...)`` query."""
    for start in range(0, len(values), IN_LIST_SIZE):
        yield list(values[start : start + IN_LIST_SIZE])


def keyword_terms(query: str) -> list[str]:
    """Distinct lower-cased ``\\w+`` terms of a query, stop words dropped (unless that
    leaves none), for a backend's own full-text syntax: such terms hold no quote or operator."""
    terms = list(dict.fromkeys(t.lower() for t in _TERM.findall(query)))
    return [t for t in terms if t not in ENGLISH_STOPWORDS] or terms


def collection_info(row: Any, document_count: int, chunk_count: int) -> CollectionInfo:
    """A :class:`CollectionInfo` from a ``collections`` row and its counts."""
    return CollectionInfo(
        id=row.id,
        name=shown_name(row.name),
        embedder=row.embedder,
        dimension=row.dimension,
        created_at=row.created_at,
        metadata=row.metadata or {},
        documents=document_count,
        chunks=chunk_count,
        version=int(row.version or 0),
        project_id=getattr(row, "project_id", None) or "default",
    )


def check_filters(filters: Filters | None) -> list[tuple[str, Any]]:
    """Validated ``(key, value)`` pairs: keys are plain names, values scalars (else a 400)."""
    pairs = []
    for key, value in (filters or {}).items():
        if not isinstance(key, str) or not _FILTER_KEY.fullmatch(key):
            raise InvalidRequestError(
                f"invalid filter key {key!r}: use letters, digits, '_' or '-'", param="filters"
            )
        if not isinstance(value, str | int | float | bool):
            raise InvalidRequestError(
                f"filter {key!r} must be a string, number or boolean", param="filters"
            )
        pairs.append((key, value))
    return pairs


class Index(Protocol):
    """Storage and search for collections of chunks; every backend passes the same tests."""

    async def create_collection(
        self,
        name: str,
        embedder: str,
        dimension: int,
        metadata: Mapping[str, Any] | None = None,
        project_id: str = "default",
    ) -> CollectionInfo: ...

    async def get_collection(
        self, name: str, *, counts: bool = True, project_id: str = "default"
    ) -> CollectionInfo:
        """``project_id``'s collection; ``counts=False`` skips the document/chunk counts
        (left at 0)."""
        ...

    async def list_collections(self, project_id: str | None = None) -> list[CollectionInfo]:
        """Every collection (of ``project_id`` when given), by name."""
        ...

    async def delete_collection(self, name: str, project_id: str = "default") -> None: ...

    async def document_hashes(
        self, collection: CollectionInfo, document_ids: Sequence[str]
    ) -> dict[str, str]: ...

    async def write_document(
        self,
        collection: CollectionInfo,
        document_id: str,
        *,
        text: str,
        source: str | None,
        metadata: Mapping[str, Any],
        content_hash: str,
        chunks: Sequence[Chunk],
        chunk_metadata: Sequence[Mapping[str, Any]],
        vectors: np.ndarray,
        pages: Sequence[int] = (),
    ) -> bool:
        """Insert or replace one document and its chunks atomically; True if it replaced one."""
        ...

    async def write_documents(
        self, collection: CollectionInfo, writes: Sequence[DocumentWrite]
    ) -> list[bool]:
        """Insert or replace several documents in one transaction (all or none of them).

        Returns, per write, whether it replaced an earlier version. Ingestion writes a
        batch at a time: one transaction per document cost more than the writes.
        """
        ...

    async def read_documents(
        self, collection: CollectionInfo, *, after: str | None = None, limit: int = 100
    ) -> list[Document]:
        """Whole documents (text, source, metadata, pages) by id, those after ``after``."""
        ...

    async def replace_collection(
        self, target: CollectionInfo, staging: CollectionInfo
    ) -> CollectionInfo:
        """Atomically drop ``target`` and give its name to ``staging`` (a re-index's result).

        Raises :class:`~trellis.errors.ConflictError` if ``target`` was written since
        ``target.version`` was read, so no concurrent write is silently lost.
        """
        ...

    async def delete_document(self, collection: CollectionInfo, document_id: str) -> bool: ...

    async def list_documents(
        self, collection: CollectionInfo, *, limit: int = 100, offset: int = 0
    ) -> list[DocumentInfo]: ...

    async def keyword_search(
        self, collection: CollectionInfo, query: str, limit: int, filters: Filters | None = None
    ) -> list[tuple[int, float]]: ...

    async def vector_search(
        self,
        collection: CollectionInfo,
        vector: np.ndarray,
        limit: int,
        filters: Filters | None = None,
    ) -> list[tuple[int, float]]: ...

    async def fetch_chunks(self, chunk_ids: Sequence[int]) -> dict[int, Hit]:
        """Hits (scores empty) for the given chunk ids, with text, offsets and metadata."""
        ...
