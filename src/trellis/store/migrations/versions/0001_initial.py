"""Initial schema: api_keys, traces, spans.

Revision ID: 0001_initial
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copy of the JSON type as of this revision: migrations never import live table code.
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("scopes", _JSON, nullable=False),
        sa.Column("allowed_models", _JSON, nullable=True),
        sa.Column("cache", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.Column("last_used_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_table(
        "traces",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("end_ns", sa.BigInteger(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("response_model", sa.String(), nullable=True),
        sa.Column("provider", sa.String(), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("attributes", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_traces"),
    )
    op.create_index("ix_traces_start_ns", "traces", ["start_ns"])
    op.create_index("ix_traces_model_start_ns", "traces", ["model", "start_ns"])
    op.create_index("ix_traces_key_id_start_ns", "traces", ["key_id", "start_ns"])
    op.create_index("ix_traces_status", "traces", ["status"])
    op.create_table(
        "spans",
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.String(16), nullable=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("end_ns", sa.BigInteger(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attributes", _JSON, nullable=True),
        sa.Column("events", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("trace_id", "id", name="pk_spans"),
        sa.ForeignKeyConstraint(
            ["trace_id"],
            ["traces.id"],
            name="fk_spans_trace_id_traces",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
