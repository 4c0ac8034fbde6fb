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
    Index,
    Integer,
    MetaData,
    String,
    Table,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = ["metadata", "api_keys", "traces", "spans", "JSONType", "VERSION_TABLE"]

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
)

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
    Index("ix_traces_start_ns", "start_ns"),
    Index("ix_traces_model_start_ns", "model", "start_ns"),
    Index("ix_traces_key_id_start_ns", "key_id", "start_ns"),
    Index("ix_traces_status", "status"),
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
