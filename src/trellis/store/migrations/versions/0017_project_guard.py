"""Per-project prompt-injection guard overrides.

Revision ID: 0017_project_guard
Revises: 0016_ui_sessions

A nullable JSON column ``guard`` on ``projects``: ``{input?, retrieved?, tool_outputs?}``,
each a guard stage ``{mode, threshold}`` (settings.ProjectGuard). NULL: the project uses
the server-wide ``guard`` settings (a model alias's own ``guard`` still wins).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0017_project_guard"
down_revision: str | None = "0016_ui_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "projects",
        sa.Column("guard", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True),
    )


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
