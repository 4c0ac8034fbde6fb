"""Document page offsets (kept for re-indexing); SQLite's unused FTS5 index goes.

Revision ID: 0007_document_pages
Revises: 0006_pgvector

``documents.pages`` holds the character offset where each page of a PDF starts, so a
re-index (new embedder or chunking) can give new chunks their page numbers again.

The embedded backend now ranks keywords with BM25 over in-memory postings
(``trellis.retrieval.keyword``), so the FTS5 table and the triggers that kept it in
step with ``chunks`` only cost writes and disk: they are dropped. Postgres keeps its
GIN full-text index, which its backend searches.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007_document_pages"
down_revision = "0006_pgvector"
branch_labels = None
depends_on = None

# Frozen copy of the JSON type as of this revision: migrations never import live table code.
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("documents", sa.Column("pages", _JSON, nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("chunks_fts_insert", "chunks_fts_delete", "chunks_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS chunks_fts")


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
