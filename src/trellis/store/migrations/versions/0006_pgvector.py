"""The Postgres retrieval backend: a stored tsvector, and pgvector when the server has it.

Revision ID: 0006_pgvector
Revises: 0005_alerts

Postgres only; SQLite is untouched.

Keyword search ranks every match, and recomputing ``to_tsvector`` per matching row
(its cost: README, Performance) made a broad query over 100,000 chunks take
seconds; so the tsvector is now stored (a generated column, ``fts_vector``) and the
GIN index moves onto it, replacing 0002's expression index.

The vector column has no fixed dimension (collections use different embedders); each
collection's partial HNSW index is created with the collection
(``trellis.retrieval.postgres_index``), so this revision creates none.

pgvector is optional for the rest of Trellis, so this revision never fails for want of
it: when the server has no pgvector, or this role may not create extensions, it skips
the extension and the vector column, and the Postgres retrieval backend repeats those
steps (idempotently, under an advisory lock) on first use, once pgvector is there, or
explains what to install.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0006_pgvector"
down_revision = "0005_alerts"
branch_labels = None
depends_on = None

logger = logging.getLogger("trellis.store.migrations")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE chunks ADD COLUMN fts_vector tsvector "
        "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED"
    )
    op.execute("CREATE INDEX chunks_fts_vector_gin ON chunks USING gin (fts_vector)")
    op.execute("DROP INDEX IF EXISTS chunks_fts_gin")
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    if available is None:
        logger.info("pgvector is not installed on this server: retrieval will need it later")
        return
    try:
        # A savepoint, so a refusal (not a superuser) leaves the migration's transaction usable.
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except sa.exc.DBAPIError as exc:
        logger.warning("cannot create the pgvector extension (%s): retrieval needs it", exc.orig)
        return
    bind.execute(sa.text("ALTER TABLE chunks ADD COLUMN IF NOT EXISTS embedding_vector vector"))


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
