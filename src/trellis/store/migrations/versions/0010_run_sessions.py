"""Workflow runs in conversations: the session a run belongs to, and retention by age.

Revision ID: 0010_run_sessions
Revises: 0009_memory

``workflow_runs.session_id`` names the conversation (``memory_sessions.session_id`` in the
namespace of the run's key) whose turns the run's ``llm(session=True)`` steps see and to
which the run adds its question and answer. The index on ``finished_at`` serves retention,
which deletes finished runs oldest first; the one on ``memory_sessions.updated_at`` serves
the retention of idle sessions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_run_sessions"
down_revision = "0009_memory"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workflow_runs", sa.Column("session_id", sa.String(200), nullable=True))
    op.create_index("ix_workflow_runs_finished_at", "workflow_runs", ["finished_at"])
    op.create_index("ix_memory_sessions_updated_at", "memory_sessions", ["updated_at"])


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
