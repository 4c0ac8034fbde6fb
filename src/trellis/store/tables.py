"""Every table Trellis owns, declared once with SQLAlchemy Core.

The same schema runs on SQLite and Postgres. Timestamps are plain numbers so
they compare and sort identically on both: ``*_ns`` columns are Unix epoch
nanoseconds (what spans record), ``*_at`` columns are Unix epoch seconds.
Migrations under ``migrations/versions`` are the source of truth for the
database; this module mirrors them for queries (a test checks they agree).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "metadata",
    "api_keys",
    "traces",
    "spans",
    "scores",
    "collections",
    "documents",
    "chunks",
    "alert_rules",
    "alerts",
    "workflow_workers",
    "workflow_runs",
    "workflow_steps",
    "workflow_effects",
    "memory_sessions",
    "memory_turns",
    "memories",
    "eval_datasets",
    "eval_runs",
    "eval_results",
    "eval_schedule_runs",
    "eval_queues",
    "eval_queue_items",
    "eval_labels",
    "projects",
    "access_state",
    "audit_log",
    "JSONType",
    "limits",
    "ui_sessions",
    "VERSION_TABLE",
    "include_name",
]

#: Alembic's bookkeeping table; named so it cannot clash with a host application's own Alembic.
VERSION_TABLE = "trellis_schema_version"

#: JSON text on SQLite, JSONB on Postgres (indexable, compact).
JSONType = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("scopes", JSONType, nullable=False),
    Column("allowed_models", JSONType, nullable=True),
    # Cache answers for this key even when the request is not deterministic.
    Column("cache", Boolean, nullable=False, server_default=false()),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
    Column("project_id", String(64), nullable=False, default="default", server_default="default"),
    # Past it the key answers 401 key_expired (revision 0012_projects).
    Column("expires_at", Float, nullable=True),
    # The secret a rotation replaced, still valid until previous_expires_at (the grace).
    Column("previous_hash", String(64), nullable=True),
    Column("previous_expires_at", Float, nullable=True),
    Index("ix_api_keys_previous_hash", "previous_hash"),
)

#: Rate limits and budgets of one subject: ``key:<key id>`` or ``project:<project id>``
#: (access/limits.py). A NULL column is no limit of that kind.
limits = Table(
    "limits",
    metadata,
    Column("subject", String(200), primary_key=True),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("max_concurrent", Integer, nullable=True),
    Column("daily_usd", Float, nullable=True),
    Column("monthly_usd", Float, nullable=True),
    Column("alert_thresholds", JSONType, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

#: Columns of the covering index statistics read (start_ns first: queries are by window).
STATS_INDEX_COLUMNS = (
    "start_ns", "model", "key_id", "kind", "status", "duration_ms",
    "input_tokens", "output_tokens", "cost", "cache_hit",
)  # fmt: skip

traces = Table(
    "traces",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(), nullable=False),
    Column("name", String(), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Column("status", String(), nullable=False),
    Column("model", String(), nullable=True),
    Column("response_model", String(), nullable=True),
    Column("provider", String(), nullable=True),
    Column("key_id", String(32), nullable=True),
    Column("input_tokens", Integer, nullable=True),
    Column("output_tokens", Integer, nullable=True),
    Column("cost", Float, nullable=True),
    Column("cache_hit", Boolean, nullable=False, default=False),
    Column("ttft_ms", Float, nullable=True),
    Column("attributes", JSONType, nullable=True),
    Column("project_id", String(64), nullable=False, default="default", server_default="default"),
    Index("ix_traces_start_ns", "start_ns"),
    Index("ix_traces_model_start_ns", "model", "start_ns"),
    Index("ix_traces_key_id_start_ns", "key_id", "start_ns"),
    Index("ix_traces_status", "status"),
    Index("ix_traces_project_id_start_ns", "project_id", "start_ns"),
    # Covers GET /v1/stats: the window's rows are read from this index alone (0003).
    Index("ix_traces_stats", *STATS_INDEX_COLUMNS),
)

spans = Table(
    "spans",
    metadata,
    Column(
        "trace_id",
        String(32),
        ForeignKey("traces.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("id", String(16), primary_key=True),
    Column("parent_id", String(16), nullable=True),
    Column("name", String(), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Column("status", String(), nullable=False),
    Column("attributes", JSONType, nullable=True),
    Column("events", JSONType, nullable=True),
    # No separate index on trace_id: it leads the primary key, whose index serves lookups by trace.
)

# --- scores (revision 0004_scores) ------------------------------------------

scores = Table(
    "scores",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "trace_id",
        String(32),
        ForeignKey("traces.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", String(), nullable=False),
    Column("value", Float, nullable=False),
    Column("comment", Text, nullable=True),
    # api (trellis.observe.api.score), user (POST /v1/traces/{id}/scores) or eval.
    Column("source", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("project_id", String(64), nullable=False, default="default", server_default="default"),
    Index("ix_scores_trace_id", "trace_id"),
    Index("ix_scores_name_created_at", "name", "created_at"),
)


# --- retrieval (revision 0002_retrieval) ------------------------------------

collections = Table(
    "collections",
    metadata,
    Column("id", String(32), primary_key=True),
    # The name in the default project, ``<project>/<name>`` in another (names are a
    # project's own; trellis.retrieval.index.stored_name).
    Column("name", String(), nullable=False, unique=True),
    Column("embedder", String(), nullable=False),
    Column("dimension", Integer, nullable=False),
    Column("metadata", JSONType, nullable=True),
    Column("created_at", Float, nullable=False),
    # Bumped by every write to the collection, so in-process vector caches know when to reload.
    Column("version", BigInteger, nullable=False, server_default="0"),
    Column("project_id", String(64), nullable=False, default="default", server_default="default"),
)

documents = Table(
    "documents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "collection_id",
        String(32),
        ForeignKey("collections.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("external_id", String(), nullable=False),
    Column("source", String(), nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("metadata", JSONType, nullable=True),
    Column("text", Text, nullable=False),
    Column("chunk_count", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Character offset where each page starts (PDFs; revision 0007), for re-indexing.
    Column("pages", JSONType, nullable=True),
    UniqueConstraint("collection_id", "external_id"),
)

chunks = Table(
    "chunks",
    metadata,
    # INTEGER PRIMARY KEY on SQLite, so the id is the rowid.
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column(
        "collection_id",
        String(32),
        ForeignKey("collections.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "document_id",
        String(32),
        ForeignKey("documents.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("ordinal", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("char_start", Integer, nullable=False),
    Column("char_end", Integer, nullable=False),
    Column("token_count", Integer, nullable=False),
    Column("metadata", JSONType, nullable=True),
    # float32 little-endian, ``dimension`` values (the collection's embedder).
    Column("embedding", LargeBinary, nullable=False),
    Index("ix_chunks_collection_id", "collection_id"),
    Index("ix_chunks_document_id_ordinal", "document_id", "ordinal"),
)

# --- alerts (revision 0005_alerts) ------------------------------------------

alert_rules = Table(
    "alert_rules",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(), nullable=False),
    # The validated rule (settings.AlertRule) as JSON: new rule fields need no migration.
    Column("spec", JSONType, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("project_id", String(64), nullable=False, default="default", server_default="default"),
    # Names are a project's own (revision 0012_projects).
    UniqueConstraint("project_id", "name"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", String(32), primary_key=True),
    # No foreign key: rules from settings live in memory, not in alert_rules.
    Column("rule_id", String(64), nullable=False),
    Column("rule_name", String(), nullable=False),
    Column("kind", String(), nullable=False),
    Column("group_key", String(), nullable=True),
    Column("state", String(16), nullable=False),
    Column("value", Float, nullable=True),
    Column("threshold", Float, nullable=True),
    Column("message", Text, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("fired_at", Float, nullable=True),
    Column("resolved_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    # rule id + group while the alert is pending or firing, NULL once resolved: the unique
    # constraint keeps one open alert per rule and group even across replicas.
    Column("open_key", String(), nullable=True, unique=True),
    Column("project_id", String(64), nullable=False, default="default", server_default="default"),
    Index("ix_alerts_started_at", "started_at"),
)

# --- workflows (trellis.orchestration; revision 0008_workflows) ------------------------

#: Processes running workflows: lets a restarted host recover its dead processes' runs at once.
workflow_workers = Table(
    "workflow_workers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("hostname", String(), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)

#: One row per run: the latest checkpoint (state + cursor) and the lease that owns it.
workflow_runs = Table(
    "workflow_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("workflow", String(), nullable=False),
    Column("workflow_version", String(16), nullable=False),
    # queued | running | waiting | succeeded | failed | cancelled
    Column("status", String(16), nullable=False),
    Column("input", JSONType, nullable=False),
    Column("state", JSONType, nullable=False),
    Column("output", JSONType, nullable=True),
    # While running: the error handed to a fallback/goto step; when failed: why.
    Column("error", JSONType, nullable=True),
    # The cursor: the step to run next (NULL once finished).
    Column("next_step", String(), nullable=True),
    # The last committed step's seq (0 before the first).
    Column("seq", Integer, nullable=False, server_default="0"),
    Column("trace_id", String(32), nullable=False),
    Column("key_id", String(32), nullable=True),
    # The conversation the run belongs to (revision 0010_run_sessions).
    Column("session_id", String(200), nullable=True),
    Column("waiting_for", JSONType, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    Column("lease_owner", String(32), nullable=True),
    # The fencing token: +1 per claim; every checkpoint must match it.
    Column("lease_epoch", Integer, nullable=False, server_default="0"),
    Column("lease_until", Float, nullable=True),
    Column("recoveries", Integer, nullable=False, server_default="0"),
    Column("input_tokens", Integer, nullable=False, server_default="0"),
    Column("output_tokens", Integer, nullable=False, server_default="0"),
    Column("cost", Float, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("project_id", String(64), nullable=False, default="default", server_default="default"),
    Index("ix_workflow_runs_project_id_created_at", "project_id", "created_at"),
    Index("ix_workflow_runs_status_lease_until", "status", "lease_until"),
    Index("ix_workflow_runs_workflow_created_at", "workflow", "created_at"),
    Index("ix_workflow_runs_lease_owner", "lease_owner"),
    Index("ix_workflow_runs_finished_at", "finished_at"),
)

#: The checkpoint log: one row per completed step execution, append-only.
workflow_steps = Table(
    "workflow_steps",
    metadata,
    Column(
        "run_id",
        String(32),
        ForeignKey("workflow_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("step", String(), nullable=False),
    Column("kind", String(16), nullable=False),
    # The parallel branch or agent iteration a row belongs to ("" for the step itself).
    Column("branch", String(), nullable=False, server_default=""),
    # ok | error | skipped | waiting
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("output", JSONType, nullable=True),
    Column("state", JSONType, nullable=True),
    Column("next_step", String(), nullable=True),
    Column("error", JSONType, nullable=True),
    Column("events", JSONType, nullable=True),
    Column("attributes", JSONType, nullable=True),
    Column("span_id", String(16), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("model", String(), nullable=True),
    Column("input_tokens", Integer, nullable=True),
    Column("output_tokens", Integer, nullable=True),
    Column("cost", Float, nullable=True),
)

#: Idempotency records of side-effecting tools: a completed effect is never repeated.
workflow_effects = Table(
    "workflow_effects",
    metadata,
    Column("key", String(200), primary_key=True),
    Column(
        "run_id",
        String(32),
        ForeignKey("workflow_runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("step", String(), nullable=False),
    Column("seq", Integer, nullable=False),
    # sha256 of the canonical JSON arguments: the same key with other arguments is a conflict.
    Column("args_hash", String(64), nullable=False),
    # started | done | failed
    Column("status", String(16), nullable=False),
    Column("result", JSONType, nullable=True),
    Column("error", JSONType, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Index("ix_workflow_effects_run_id", "run_id"),
)

# --- memory (revision 0009_memory) -------------------------------------------

memory_sessions = Table(
    "memory_sessions",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    # The API key that created the session ("" in-process without a key): its namespace.
    Column("owner", String(64), nullable=False),
    Column("session_id", String(200), nullable=False),
    # The running summary of every turn up to ``summarized_through`` (a memory_turns id).
    Column("summary", Text, nullable=True),
    Column("summarized_through", BigInteger, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("owner", "session_id"),
    Index("ix_memory_sessions_updated_at", "updated_at"),
)

memory_turns = Table(
    "memory_turns",
    metadata,
    # Ascending ids order the conversation; concurrent writers never collide on them.
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column(
        "session_pk",
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("memory_sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", String(16), nullable=False),
    # The message as sent (ChatMessage without None fields).
    Column("message", JSONType, nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("trace_id", String(32), nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ix_memory_turns_session_pk_id", "session_pk", "id"),
)

memories = Table(
    "memories",
    metadata,
    Column("id", String(32), primary_key=True),
    # Namespace: the API key that wrote it, then the user it is about.
    Column("owner", String(64), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("text", Text, nullable=False),
    # float32 little-endian unit vector from ``embedder`` (the same encoding as chunks).
    Column("embedding", LargeBinary, nullable=False),
    Column("embedder", String(), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_memories_owner_user_id", "owner", "user_id"),
)

# --- evals (revision 0011_evals) ----------------------------------------------

eval_datasets = Table(
    "eval_datasets",
    metadata,
    # Datasets are named per project (revision 0012_projects).
    Column("project_id", String(64), primary_key=True, server_default="default"),
    Column("name", String(100), primary_key=True),
    # Content hash of the cases (trellis.evals.datasets.content_hash).
    Column("version", String(12), primary_key=True),
    Column("cases", JSONType, nullable=False),
    Column("case_count", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

eval_runs = Table(
    "eval_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    # The suite as validated (candidates, metrics, repeats, concurrency).
    Column("suite", JSONType, nullable=False),
    # ``name@version`` of the dataset the run evaluates.
    Column("dataset", String(120), nullable=False),
    # running | succeeded | failed
    Column("status", String(16), nullable=False),
    # cases x candidates x repeats
    Column("total", Integer, nullable=False),
    Column("error", Text, nullable=True),
    # The API key that started the run over HTTP (None in process).
    Column("key_id", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # The schedule (evals.schedules) that ran it; None for runs started by hand
    # (revision 0013_eval_schedules).
    Column("schedule", String(100), nullable=True),
    Column("project_id", String(64), nullable=False, default="default", server_default="default"),
    Index("ix_eval_runs_project_id_created_at", "project_id", "created_at"),
)

eval_results = Table(
    "eval_results",
    metadata,
    Column("run_id", String(32), ForeignKey("eval_runs.id", ondelete="CASCADE"), primary_key=True),
    Column("case_id", String(200), primary_key=True),
    Column("candidate", String(100), primary_key=True),
    Column("repeat", Integer, primary_key=True),
    # output, metrics, latency_ms, tokens, cost, trace_id, error
    Column("result", JSONType, nullable=False),
    Column("created_at", Float, nullable=False),
)

# --- scheduled eval runs (revision 0013_eval_schedules) ----------------------------

#: One row per (schedule, due time): the unique pair is the claim, so of several replicas
#: only the one whose insert wins runs it. Then the outcome of the run against its baseline.
eval_schedule_runs = Table(
    "eval_schedule_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("schedule", String(100), nullable=False),
    # The cron time this run is for (POSIX seconds); the claim time for a run by hand.
    Column("due_at", Float, nullable=False),
    # cron | missed (the due time passed while no server ran) | manual
    Column("trigger", String(16), nullable=False),
    # running | passed | regressed | failed
    Column("status", String(16), nullable=False),
    Column("run_id", String(32), nullable=True),
    Column("baseline_run_id", String(32), nullable=True),
    Column("reason", Text, nullable=True),
    # {candidate: Comparison.to_dict()} against the baseline run
    Column("comparison", JSONType, nullable=True),
    # The quantities past a fail_on threshold: [{candidate, name, baseline, ...}]
    Column("regressions", JSONType, nullable=True),
    Column("claimed_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    UniqueConstraint("schedule", "due_at"),
    Index("ix_eval_schedule_runs_schedule_finished_at", "schedule", "finished_at"),
)

# --- human evaluation (revision 0014_eval_labels) -------------------------------------

eval_queues = Table(
    "eval_queues",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    # Where the items came from: {"run_id": ...} or {"traces": {filters}}.
    Column("source", JSONType, nullable=False),
    # The label scale: {"type": "range", "min", "max", "pass"} or {"type": "pass_fail"}.
    Column("scale", JSONType, nullable=False),
    Column("instructions", Text, nullable=True),
    Column("item_count", Integer, nullable=False),
    # The API key that created the queue (None in process).
    Column("key_id", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    # The project: a run's queue takes the run's, a traces queue its creator's.
    Column("project_id", String(64), nullable=False, default="default", server_default="default"),
    Index("ix_eval_queues_project_id_created_at", "project_id", "created_at"),
)

eval_queue_items = Table(
    "eval_queue_items",
    metadata,
    Column(
        "queue_id", String(32), ForeignKey("eval_queues.id", ondelete="CASCADE"), primary_key=True
    ),
    # 1, 2, ... in the queue's order.
    Column("item_id", Integer, primary_key=True),
    Column("case_id", String(200), nullable=False),
    # From a run: the candidate and repeat whose output is under review.
    Column("candidate", String(100), nullable=True),
    Column("repeat", Integer, nullable=True),
    Column("trace_id", String(64), nullable=True),
    # The case as a dataset case (input, expected, context, metadata).
    Column("case", JSONType, nullable=False),
    Column("output", Text, nullable=False),
    # The run's rubric judges: {metric: {score (0-1), raw, low, high, reason}}.
    Column("judge", JSONType, nullable=True),
    # Who took the item last and when (the next item skips fresh claims).
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_at", Float, nullable=True),
    Column("labelled", Boolean, nullable=False),
    Index("ix_eval_queue_items_queue_id_labelled", "queue_id", "labelled"),
)

eval_labels = Table(
    "eval_labels",
    metadata,
    Column("queue_id", String(32), primary_key=True),
    Column("item_id", Integer, primary_key=True),
    # In the queue's range (None on a pass/fail queue).
    Column("score", Float, nullable=True),
    Column("passed", Boolean, nullable=False),
    # The corrected or reference answer the labeller wrote.
    Column("reference", Text, nullable=True),
    Column("comment", Text, nullable=True),
    # The labeller's API key id and name (or the name given in process).
    Column("labeller", String(64), nullable=True),
    Column("labeller_name", String(200), nullable=True),
    Column("created_at", Float, nullable=False),
    ForeignKeyConstraint(
        ["queue_id", "item_id"],
        ["eval_queue_items.queue_id", "eval_queue_items.item_id"],
        name="fk_eval_labels_queue_id_eval_queue_items",
        ondelete="CASCADE",
    ),
)

# --- projects and access (revision 0012_projects) --------------------------------

#: The tenants: every key, collection, trace, rule, run... belongs to one.
projects = Table(
    "projects",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(), nullable=False),
    Column("created_at", Float, nullable=False),
    # Prompt-injection guard overrides (settings.ProjectGuard); NULL: none (0017_project_guard).
    Column("guard", JSONType, nullable=True),
)

#: One row (id 1) whose version every key change bumps in its transaction; each process
#: polls it to drop its cached key verifications (revocation reaches every replica).
access_state = Table(
    "access_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)

#: Administrative actions: who (key), what (action, target, redacted detail), when, from where.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("at", Float, nullable=False),
    Column("actor_id", String(32), nullable=True),
    Column("actor_name", String(), nullable=True),
    Column("project_id", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(), nullable=True),
    Column("detail", JSONType, nullable=True),
    Column("client_ip", String(64), nullable=True),
    Column("user_agent", String(), nullable=True),
    Index("ix_audit_log_at", "at"),
    Index("ix_audit_log_actor_id_at", "actor_id", "at"),
    Index("ix_audit_log_project_id_at", "project_id", "at"),
)

# --- web UI (revision 0016_ui_sessions) ---------------------------------------

ui_sessions = Table(
    "ui_sessions",
    metadata,
    # SHA-256 (hex) of the session id in the browser's cookie: the id itself is not stored.
    Column("id_hash", String(64), primary_key=True),
    Column("key_id", String(64), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    # The project the built-in admin chose in the navigation (None: every project).
    Column("project_id", String(64), nullable=True),
    Index("ix_ui_sessions_key_id", "key_id"),
    Index("ix_ui_sessions_expires_at", "expires_at"),
)

#: The Postgres keyword index over chunks.fts_vector (GIN, revision 0006; SQLite's FTS5
#: table of revisions 0002-0006 is gone): raw DDL in migrations, invisible to this metadata.
_UNMANAGED_PREFIX = "chunks_fts"
#: Postgres retrieval objects (revision 0006_pgvector and the retrieval backend): the stored
#: tsvector (a generated column), the untyped pgvector column (only where pgvector is) and
#: one HNSW index per collection.
_UNMANAGED_COLUMNS = frozenset({"fts_vector", "embedding_vector"})
_UNMANAGED_INDEX_PREFIX = "chunks_vec_"


def include_name(name: str | None, type_: str, _parent_names: object) -> bool:
    """Alembic ``include_name`` hook: skip objects that migrations manage as raw DDL."""
    if name is None:
        return True
    if name.startswith(_UNMANAGED_PREFIX):
        return False
    if type_ == "column" and name in _UNMANAGED_COLUMNS:
        return False
    return not (type_ == "index" and name.startswith(_UNMANAGED_INDEX_PREFIX))
