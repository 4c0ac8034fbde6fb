"""One collection's search state in memory: vectors, BM25 postings, and which rows are live.

The embedded backend searches these instead of the database: exact cosine over
a float32 matrix and BM25 over :class:`~trellis.retrieval.keyword.KeywordIndex`.
The database stays the source of truth; a snapshot follows it *by document*
(every write replaces whole documents, and each write gets a fresh internal
document id), so catching up after a write loads only the documents that
appeared and tombstones the rows of those that went. Rows are append-only;
when tombstones pile up the owner rebuilds the snapshot from scratch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from trellis.retrieval.keyword import Analysed, Analyzer, KeywordIndex

__all__ = ["Snapshot", "Rows"]


@dataclass(slots=True)
class Rows:
    """Chunks to append: parallel sequences, plus their analysed text (worker-thread work)."""

    chunk_ids: Sequence[int]
    document_ids: Sequence[str]
    vectors: np.ndarray  # float32 (n, dimension)
    analysed: Analysed

    @classmethod
    def build(
        cls,
        analyzer: Analyzer,
        chunk_ids: Sequence[int],
        document_ids: Sequence[str],
        texts: Sequence[str],
        embeddings: Sequence[bytes],
        dimension: int,
    ) -> Rows:
        """Decode vectors and analyse texts (CPU-bound: call from a worker thread)."""
        blob = b"".join(embeddings)
        vectors = np.frombuffer(blob, dtype="<f4").reshape(len(chunk_ids), dimension)
        return cls(chunk_ids, document_ids, vectors, KeywordIndex.analyse(analyzer, texts))


class Snapshot:
    """Rows of one collection as of ``version``; see the module docstring."""

    def __init__(self, dimension: int, analyzer: Analyzer) -> None:
        self.version = -1
        self.dimension = dimension
        self.keyword = KeywordIndex(analyzer)
        self._chunk_ids = np.zeros(0, np.int64)
        self._doc_rows = np.zeros(0, np.int32)
        self._vectors = np.zeros((0, dimension), np.float32)
        self._count = 0
        #: Internal document id -> position; positions index ``_doc_rows``' values.
        self.documents: dict[str, int] = {}
        self._next_position = 0

    @property
    def rows(self) -> int:
        return self._count

    @property
    def live_rows(self) -> int:
        return self.keyword.live_rows

    @property
    def dead_fraction(self) -> float:
        return 1.0 - self.live_rows / self._count if self._count else 0.0

    def chunk_id(self, row: int) -> int:
        return int(self._chunk_ids[row])

    def append(self, rows: Rows) -> None:
        """Add rows (documents not yet in the snapshot) after the existing ones."""
        added = len(rows.chunk_ids)
        if not added:
            return
        needed = self._count + added
        if needed > len(self._chunk_ids):
            capacity = max(needed, 2 * len(self._chunk_ids), 1024)
            self._chunk_ids = _grow(self._chunk_ids, capacity)
            self._doc_rows = _grow(self._doc_rows, capacity)
            self._vectors = _grow(self._vectors, capacity)
        span = slice(self._count, needed)
        self._chunk_ids[span] = np.asarray(rows.chunk_ids, np.int64)
        positions = []
        for doc in rows.document_ids:
            position = self.documents.get(doc)
            if position is None:
                position = self.documents[doc] = self._next_position
                self._next_position += 1
            positions.append(position)
        self._doc_rows[span] = positions
        self._vectors[span] = rows.vectors
        self.keyword.add(rows.analysed)
        self._count = needed

    def remove_documents(self, document_ids: Sequence[str]) -> None:
        """Tombstone every row of these documents."""
        positions = [self.documents.pop(doc) for doc in document_ids if doc in self.documents]
        if not positions:
            return
        gone = np.isin(self._doc_rows[: self._count], np.asarray(positions, np.int32))
        self.keyword.remove(np.flatnonzero(gone))

    def allowed_rows(self, document_ids: Sequence[str]) -> np.ndarray:
        """Row mask: rows of these documents (internal ids) only."""
        mask = np.zeros(self._next_position, bool)
        positions = [self.documents[doc] for doc in document_ids if doc in self.documents]
        mask[np.asarray(positions, np.int64)] = True
        return mask[self._doc_rows[: self._count]]

    def vector_searcher(
        self, query: np.ndarray, limit: int, allowed: np.ndarray | None = None
    ) -> Callable[[], list[tuple[int, float]]]:
        """Exact cosine (unit vectors) over the rows as of now, as a call for a worker thread.

        Call this on the thread that owns the snapshot: it captures the live rows, so the
        returned search (best ``limit`` as ``(chunk id, score)``) may run elsewhere while
        the owner appends. The matrix product is the costliest step of a search and
        releases the GIL, so it need not hold up the event loop.
        """
        count = self._count
        vectors, chunk_ids = self._vectors[:count], self._chunk_ids[:count]
        live = self.keyword.alive[:count]
        mask = live.copy() if allowed is None else live & allowed

        def search() -> list[tuple[int, float]]:
            wanted = min(limit, int(mask.sum()))
            if wanted < 1:
                return []
            scores = np.where(mask, vectors @ query, -np.inf)
            top = np.argpartition(-scores, wanted - 1)[:wanted]
            top = top[np.argsort(-scores[top], kind="stable")]
            return [(int(chunk_ids[i]), float(scores[i])) for i in top]

        return search

    def vector_search(
        self, query: np.ndarray, limit: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Exact cosine (vectors are unit length): best ``limit`` as ``(chunk id, score)``."""
        return self.vector_searcher(query, limit, allowed)()

    def keyword_search(
        self, query: str, limit: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """BM25: best ``limit`` as ``(chunk id, score)``."""
        return [
            (int(self._chunk_ids[row]), score)
            for row, score in self.keyword.search(query, limit, allowed)
        ]


def _grow(array: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.zeros((capacity, *array.shape[1:]), array.dtype)
    grown[: len(array)] = array
    return grown
