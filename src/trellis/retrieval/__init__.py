"""Retrieval: load, chunk, embed and index documents; keyword, vector and hybrid search.

Use :class:`Retrieval` over an :class:`Index` (:class:`SQLiteIndex` for the embedded
database, :class:`PgIndex` for Postgres; :func:`index_for` picks) with an embedder such
as the bundled ``MiniLMEmbedder``.
"""

from __future__ import annotations

from trellis.retrieval.backends import index_for
from trellis.retrieval.chunking import ChunkingConfig, chunk_text
from trellis.retrieval.fusion import FusionConfig, reciprocal_rank_fusion, weighted_fusion
from trellis.retrieval.index import Index
from trellis.retrieval.loaders import LoaderError, load_path
from trellis.retrieval.models import (
    Chunk,
    CollectionInfo,
    Document,
    DocumentInfo,
    DocumentWrite,
    Hit,
    IngestReport,
)
from trellis.retrieval.postgres_index import PgIndex
from trellis.retrieval.service import Embedder, Retrieval
from trellis.retrieval.sqlite_index import SQLiteIndex

__all__ = [
    "Chunk",
    "ChunkingConfig",
    "CollectionInfo",
    "Document",
    "DocumentInfo",
    "DocumentWrite",
    "Embedder",
    "FusionConfig",
    "Hit",
    "Index",
    "IngestReport",
    "LoaderError",
    "PgIndex",
    "Retrieval",
    "SQLiteIndex",
    "chunk_text",
    "index_for",
    "load_path",
    "reciprocal_rank_fusion",
    "weighted_fusion",
]
