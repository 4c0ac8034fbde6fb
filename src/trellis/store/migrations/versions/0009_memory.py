"""Memory: conversation sessions and their turns, and long-term memories per user.

Revision ID: 0009_memory
Revises: 0008_workflows

``memory_sessions`` is one conversation per (API key, session id) with its running
summary; ``memory_turns`` the stored messages in order. Turns up to
``summarized_through`` are covered by the summary and no longer sent upstream; they
stay in the table so nothing said is lost. ``memories`` holds facts about a user
(per API key), each with its embedding encoded like ``chunks.embedding``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009_memory"
down_revision = "0008_workflows"
branch_labels = None
depends_on = None

# Frozen copies of the types as of this revision: migrations never import live table code.
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "memory_sessions",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(200), nullable=False),
        sa.Column("summary", sa.Text, nullable=True),
        sa.Column("summarized_through", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_memory_sessions"),
        sa.UniqueConstraint("owner", "session_id", name="uq_memory_sessions_owner_session_id"),
    )
    op.create_table(
        "memory_turns",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("session_pk", _ID, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("message", _JSON, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_memory_turns"),
        sa.ForeignKeyConstraint(
            ["session_pk"],
            ["memory_sessions.id"],
            name="fk_memory_turns_session_pk_memory_sessions",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_memory_turns_session_pk_id", "memory_turns", ["session_pk", "id"])
    op.create_table(
        "memories",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("embedder", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_memories"),
    )
    op.create_index("ix_memories_owner_user_id", "memories", ["owner", "user_id"])


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
