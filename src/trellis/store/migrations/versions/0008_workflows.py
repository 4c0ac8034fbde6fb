"""Durable workflows: runs (state + cursor + lease), the step log, idempotency records.

Revision ID: 0008_workflows
Revises: 0007_document_pages

``workflow_runs`` holds each run's latest checkpoint and the lease that owns it (owner,
epoch, expiry; the epoch is the fencing token every checkpoint checks). ``workflow_steps``
is the append-only log of completed steps, written in the same transaction as the
checkpoint. ``workflow_effects`` records side-effecting tool calls under their idempotency
key so a resumed run never repeats one. ``workflow_workers`` lets a restarted host recover
its dead processes' runs without waiting for their leases to expire.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008_workflows"
down_revision = "0007_document_pages"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "workflow_workers",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("hostname", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_workflow_workers"),
    )
    op.create_table(
        "workflow_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("workflow", sa.String(), nullable=False),
        sa.Column("workflow_version", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input", _JSON, nullable=False),
        sa.Column("state", _JSON, nullable=False),
        sa.Column("output", _JSON, nullable=True),
        sa.Column("error", _JSON, nullable=True),
        sa.Column("next_step", sa.String(), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("waiting_for", _JSON, nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("lease_owner", sa.String(32), nullable=True),
        sa.Column("lease_epoch", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("recoveries", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cost", sa.Float(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_workflow_runs"),
    )
    op.create_index(
        "ix_workflow_runs_status_lease_until", "workflow_runs", ["status", "lease_until"]
    )
    op.create_index(
        "ix_workflow_runs_workflow_created_at", "workflow_runs", ["workflow", "created_at"]
    )
    op.create_index("ix_workflow_runs_lease_owner", "workflow_runs", ["lease_owner"])
    op.create_table(
        "workflow_steps",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("step", sa.String(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("branch", sa.String(), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("output", _JSON, nullable=True),
        sa.Column("state", _JSON, nullable=True),
        sa.Column("next_step", sa.String(), nullable=True),
        sa.Column("error", _JSON, nullable=True),
        sa.Column("events", _JSON, nullable=True),
        sa.Column("attributes", _JSON, nullable=True),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("end_ns", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["workflow_runs.id"],
            name="fk_workflow_steps_run_id_workflow_runs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "seq", name="pk_workflow_steps"),
    )
    op.create_table(
        "workflow_effects",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("step", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("args_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", _JSON, nullable=True),
        sa.Column("error", _JSON, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["workflow_runs.id"],
            name="fk_workflow_effects_run_id_workflow_runs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key", name="pk_workflow_effects"),
    )
    op.create_index("ix_workflow_effects_run_id", "workflow_effects", ["run_id"])


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
