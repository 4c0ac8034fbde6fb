"""Scheduled eval runs: the claim and outcome of each (schedule, due time), and the
schedule that ran an eval run.

Revision ID: 0013_eval_schedules
Revises: 0011_evals

``eval_schedule_runs`` has one row per schedule and due time; the unique pair is how one
replica of several claims a due run. ``eval_runs.schedule`` tags the runs a schedule made.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0013_eval_schedules"
down_revision = "0012_projects"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "eval_schedule_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("schedule", sa.String(100), nullable=False),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("baseline_run_id", sa.String(32), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("comparison", _JSON, nullable=True),
        sa.Column("regressions", _JSON, nullable=True),
        sa.Column("claimed_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_eval_schedule_runs"),
        sa.UniqueConstraint("schedule", "due_at", name="uq_eval_schedule_runs_schedule_due_at"),
    )
    op.create_index(
        "ix_eval_schedule_runs_schedule_finished_at",
        "eval_schedule_runs",
        ["schedule", "finished_at"],
    )
    op.add_column("eval_runs", sa.Column("schedule", sa.String(100), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
