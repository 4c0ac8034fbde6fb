"""Database access: one async engine (SQLite or Postgres), the tables, and migrations."""

from __future__ import annotations

from trellis.store.db import Database, normalize_url
from trellis.store.tables import api_keys, metadata, spans, traces

__all__ = ["Database", "normalize_url", "metadata", "api_keys", "traces", "spans"]
