"""Observability: a covering index for statistics over the traces table.

Revision ID: 0003_observability
Revises: 0002_retrieval

``GET /v1/stats`` reads every trace of a window; with this index SQLite (and a
Postgres index-only scan) reads those columns from the index alone instead of
fetching each wide row (its attributes JSON) from the table.
"""

from __future__ import annotations

from alembic import op

revision = "0003_observability"
down_revision = "0002_retrieval"
branch_labels = None
depends_on = None

# Frozen copy as of this revision: migrations never import live table code.
_STATS_COLUMNS = [
    "start_ns", "model", "key_id", "kind", "status", "duration_ms",
    "input_tokens", "output_tokens", "cost", "cache_hit",
]  # fmt: skip


def upgrade() -> None:
    op.create_index("ix_traces_stats", "traces", _STATS_COLUMNS)


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
