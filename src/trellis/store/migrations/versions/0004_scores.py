"""Scores: numbers attached to a trace (user feedback, evaluator results, API calls).

Revision ID: 0004_scores
Revises: 0003_observability

A trace has any number of scores; they are deleted with it (the retention job
deletes them explicitly first, the foreign key cascades for everything else).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_scores"
down_revision = "0003_observability"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scores",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_scores"),
        sa.ForeignKeyConstraint(
            ["trace_id"], ["traces.id"], name="fk_scores_trace_id_traces", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_scores_trace_id", "scores", ["trace_id"])
    op.create_index("ix_scores_name_created_at", "scores", ["name", "created_at"])


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
