"""Human evaluation: labelling queues of cases (from an eval run or from traces), their
items and the labels people give them.

Revision ID: 0014_eval_labels
Revises: 0013_eval_schedules

``eval_queues`` is one queue of a project (its source, its label scale);
``eval_queue_items`` one case to label (input, the output under review, the judge's
verdicts when the source run had a judge) with the claim that keeps two labellers off the
same item; ``eval_labels`` the label an item got (score, pass/fail, corrected answer,
comment, who gave it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0014_eval_labels"
down_revision = "0013_eval_schedules"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "eval_queues",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("source", _JSON, nullable=False),
        sa.Column("scale", _JSON, nullable=False),
        sa.Column("instructions", sa.Text, nullable=True),
        sa.Column("item_count", sa.Integer, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False, server_default="default"),
        sa.PrimaryKeyConstraint("id", name="pk_eval_queues"),
    )
    op.create_index(
        "ix_eval_queues_project_id_created_at", "eval_queues", ["project_id", "created_at"]
    )
    op.create_table(
        "eval_queue_items",
        sa.Column("queue_id", sa.String(32), nullable=False),
        sa.Column("item_id", sa.Integer, nullable=False),
        sa.Column("case_id", sa.String(200), nullable=False),
        sa.Column("candidate", sa.String(100), nullable=True),
        sa.Column("repeat", sa.Integer, nullable=True),
        sa.Column("trace_id", sa.String(64), nullable=True),
        sa.Column("case", _JSON, nullable=False),
        sa.Column("output", sa.Text, nullable=False),
        sa.Column("judge", _JSON, nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_at", sa.Float, nullable=True),
        sa.Column("labelled", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("queue_id", "item_id", name="pk_eval_queue_items"),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["eval_queues.id"],
            name="fk_eval_queue_items_queue_id_eval_queues",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_eval_queue_items_queue_id_labelled", "eval_queue_items", ["queue_id", "labelled"]
    )
    op.create_table(
        "eval_labels",
        sa.Column("queue_id", sa.String(32), nullable=False),
        sa.Column("item_id", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("reference", sa.Text, nullable=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("labeller", sa.String(64), nullable=True),
        sa.Column("labeller_name", sa.String(200), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("queue_id", "item_id", name="pk_eval_labels"),
        sa.ForeignKeyConstraint(
            ["queue_id", "item_id"],
            ["eval_queue_items.queue_id", "eval_queue_items.item_id"],
            name="fk_eval_labels_queue_id_eval_queue_items",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
