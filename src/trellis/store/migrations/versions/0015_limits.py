"""Rate limits and budgets per API key and per project.

Revision ID: 0015_limits
Revises: 0011_evals

One row per subject (``key:<key id>`` or ``project:<project id>``) with its requests and
tokens per minute, concurrent requests, daily and monthly spend in USD, and the budget
fractions that raise alerts. The counters themselves live in Redis or in process, never
here: this table is what an admin set.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0015_limits"
down_revision: str | None = "0014_eval_labels"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "limits",
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("daily_usd", sa.Float(), nullable=True),
        sa.Column("monthly_usd", sa.Float(), nullable=True),
        sa.Column("alert_thresholds", _JSON, nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("subject", name="pk_limits"),
    )


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
