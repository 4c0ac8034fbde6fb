"""0012_projects on a database that already holds rows at 0011, on SQLite and Postgres."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

from trellis.access.keys import KeyStore
from trellis.store import Database
from trellis.store.db import alembic_config

from ..conftest import sqlite_url


def _upgrade(sync_conn: Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(sync_conn), revision)


_ROWS = [
    "INSERT INTO api_keys (id, name, key_hash, prefix, scopes, cache, created_at) VALUES "
    "('key_admin', 'old admin', 'h1', 'tr-a', '[\"admin\"]', false, 1.0),"
    "('key_app', 'app', 'h2', 'tr-b', '[\"inference\"]', false, 1.0)",
    "INSERT INTO traces (id, kind, name, start_ns, status, cache_hit) VALUES "
    "('t1', 'chat', 'chat x', 1, 'ok', false)",
    "INSERT INTO scores (id, trace_id, name, value, source, created_at) VALUES "
    "('s1', 't1', 'good', 1.0, 'user', 1.0)",
    "INSERT INTO collections (id, name, embedder, dimension, created_at, version) VALUES "
    "('c1', 'docs', 'minilm', 384, 1.0, 0)",
    "INSERT INTO alert_rules (id, name, spec, created_at) VALUES ('r1', 'slow', '{}', 1.0)",
    "INSERT INTO eval_datasets (name, version, cases, case_count, created_at) VALUES "
    "('qa', 'abc', '[]', 0, 1.0)",
    "INSERT INTO eval_runs (id, suite, dataset, status, total, created_at, updated_at) VALUES "
    "('e1', '{}', 'qa@abc', 'succeeded', 0, 1.0, 1.0)",
    "INSERT INTO workflow_runs (id, workflow, workflow_version, status, input, state, "
    "trace_id, created_at, updated_at) VALUES "
    "('w1', 'flow', 'v1', 'succeeded', '{}', '{}', 't1', 1.0, 1.0)",
]


async def _check_upgrade(url: str) -> None:
    db = Database(url)
    await db.connect(migrate=False)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_upgrade, "0011_evals")
            for statement in _ROWS:
                await conn.execute(text(statement))
        await db.migrate()
        async with db.engine.connect() as conn:

            async def one(sql: str) -> Any:
                return (await conn.execute(text(sql))).all()

            assert await one("SELECT id, name FROM projects") == [("default", "Default")]
            for table in ("traces", "scores", "collections", "alert_rules", "eval_datasets"):
                assert await one(f"SELECT DISTINCT project_id FROM {table}") == [("default",)]
            for table in ("eval_runs", "workflow_runs"):
                assert await one(f"SELECT DISTINCT project_id FROM {table}") == [("default",)]
            keys = dict(await one("SELECT id, project_id FROM api_keys"))
            # The old admin keeps administering everything; the app key joins the data.
            assert keys == {"key_admin": "*", "key_app": "default"}
            assert await one("SELECT version FROM access_state") == [(0,)]
            # New rows without a project land in the default one (the server default).
        async with db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO eval_datasets (name, version, cases, case_count, created_at, "
                    "project_id) VALUES ('qa', 'abc', '[]', 0, :now, 'other')"
                ),
                {"now": time.time()},
            )
            await conn.execute(
                text(
                    "INSERT INTO alert_rules (id, name, spec, created_at, project_id) "
                    "VALUES ('r2', 'slow', '{}', 1.0, 'other')"
                )
            )
        async with db.engine.connect() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM eval_datasets"))).scalar()
            rules = (await conn.execute(text("SELECT count(*) FROM alert_rules"))).scalar()
        assert count == 2, "one dataset name@version per project"
        assert rules == 2, "one rule name per project"
        keys_store = KeyStore(db)
        record = await keys_store.get("key_app")
        assert record is not None and record.project_id == "default" and not record.expired()
    finally:
        await db.close()


async def test_upgrade_from_0011_with_rows_sqlite(tmp_path: Path) -> None:
    await _check_upgrade(sqlite_url(tmp_path))


@pytest.mark.postgres
async def test_upgrade_from_0011_with_rows_postgres(new_postgres_database: Any) -> None:
    await _check_upgrade(new_postgres_database())
