"""Web UI sign-in sessions in the database.

Revision ID: 0016_ui_sessions
Revises: 0015_limits

One row per signed-in browser: the SHA-256 of the session id the cookie carries (a copy
of this table signs nobody in), the API key id, the CSRF token, when it started, when it
was last used and when it expires, and the project the built-in admin chose (none:
every project). Several workers and replicas share the sessions, and
they survive a restart.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_ui_sessions"
down_revision: str | None = "0015_limits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id_hash", name="pk_ui_sessions"),
    )
    op.create_index("ix_ui_sessions_key_id", "ui_sessions", ["key_id"])
    op.create_index("ix_ui_sessions_expires_at", "ui_sessions", ["expires_at"])


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
