"""Projects and access control: who owns what, key expiry and rotation, the audit log.

Revision ID: 0012_projects
Revises: 0011_evals

``projects`` holds the tenants; every owned table gets ``project_id`` (NOT NULL, default
``'default'``) and the rows that exist move into the ``default`` project created here.
Admin keys made before projects keep spanning every project (project ``*``).
``api_keys`` gains ``expires_at`` and the rotated-out secret (``previous_hash``, valid until
``previous_expires_at``). ``access_state`` is one row whose ``version`` every key change
bumps in its own transaction: each process polls it to drop its verification cache.
``audit_log`` records administrative actions. Eval datasets and alert rules are named per
project, so their primary key and unique name gain ``project_id`` (batch-mode table
rebuilds on SQLite).
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0012_projects"
down_revision = "0011_evals"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")

#: Tables whose rows belong to one project (memory rows belong to a key, hence a project).
OWNED = (
    "api_keys",
    "collections",
    "traces",
    "scores",
    "alert_rules",
    "alerts",
    "eval_runs",
    "workflow_runs",
)


def _project_column() -> sa.Column[str]:
    return sa.Column("project_id", sa.String(64), nullable=False, server_default="default")


def upgrade() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
    )
    op.bulk_insert(projects, [{"id": "default", "name": "Default", "created_at": time.time()}])
    state = op.create_table(
        "access_state",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_access_state"),
    )
    op.bulk_insert(state, [{"id": 1, "version": 0}])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor_id", sa.String(32), nullable=True),
        sa.Column("actor_name", sa.String(), nullable=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(), nullable=True),
        sa.Column("detail", _JSON, nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_actor_id_at", "audit_log", ["actor_id", "at"])
    op.create_index("ix_audit_log_project_id_at", "audit_log", ["project_id", "at"])

    # Existing rows take the server default: they move into the default project.
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(_project_column())
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("previous_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("previous_expires_at", sa.Float, nullable=True))
    op.create_index("ix_api_keys_previous_hash", "api_keys", ["previous_hash"])
    _admins_span_projects()
    op.create_index("ix_traces_project_id_start_ns", "traces", ["project_id", "start_ns"])
    op.create_index(
        "ix_workflow_runs_project_id_created_at", "workflow_runs", ["project_id", "created_at"]
    )
    op.create_index("ix_eval_runs_project_id_created_at", "eval_runs", ["project_id", "created_at"])
    # Alert rule names are unique per project, not across projects.
    with op.batch_alter_table("alert_rules", recreate="always") as batch:
        batch.drop_constraint("uq_alert_rules_name", type_="unique")
        batch.create_unique_constraint("uq_alert_rules_project_id_name", ["project_id", "name"])
    with op.batch_alter_table("eval_datasets", recreate="always") as batch:
        batch.add_column(_project_column())
        batch.drop_constraint("pk_eval_datasets", type_="primary")
        batch.create_primary_key("pk_eval_datasets", ["project_id", "name", "version"])


def _admins_span_projects() -> None:
    """Admin keys made before projects administered everything: they keep doing so (the
    project ``*``); every other key moves into the default project with the data."""
    keys = sa.table(
        "api_keys", sa.column("id", sa.String), sa.column("scopes", _JSON),
        sa.column("project_id", sa.String),
    )  # fmt: skip
    bind = op.get_bind()
    admins = [key_id for key_id, scopes in bind.execute(sa.select(keys.c.id, keys.c.scopes))
              if "admin" in (scopes or ())]  # fmt: skip
    if admins:
        bind.execute(sa.update(keys).where(keys.c.id.in_(admins)).values(project_id="*"))


def downgrade() -> None:
    raise NotImplementedError("Trellis migrations are forward-only")
