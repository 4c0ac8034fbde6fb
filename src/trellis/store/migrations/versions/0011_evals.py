"""Evaluation: stored datasets (versioned by content hash), runs and per-case results.

Revision ID: 0011_evals
Revises: 0010_run_sessions

``eval_datasets`` keeps each version of a dataset once (name + content hash) with its
cases as JSON. ``eval_runs`` is one run of a suite; ``eval_results`` one row per case,
candidate and repeat, written as each finishes, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0011_evals"
down_revision = "0010_run_sessions"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "eval_datasets",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("version", sa.String(12), nullable=False),
        sa.Column("cases", _JSON, nullable=False),
        sa.Column("case_count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="pk_eval_datasets"),
    )
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("suite", _JSON, nullable=False),
        sa.Column("dataset", sa.String(120), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_eval_runs"),
    )
    op.create_table(
        "eval_results",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("case_id", sa.String(200), nullable=False),
        sa.Column("candidate", sa.String(100), nullable=False),
        sa.Column("repeat", sa.Integer, nullable=False),
        sa.Column("result", _JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "case_id", "candidate", "repeat", name="pk_eval_results"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["eval_runs.id"],
            name="fk_eval_results_run_id_eval_runs",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
