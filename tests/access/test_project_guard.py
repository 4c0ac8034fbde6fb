"""Projects' guard overrides in the store, on both backends: stored as JSON, kept in
memory, and followed by another process through the access-version poll; and the
0017_project_guard migration on a database holding projects at 0016."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select, text

from trellis.access.keys import KeyStore
from trellis.access.projects import ProjectStore, parse_guard
from trellis.errors import InvalidRequestError, NotFoundError
from trellis.settings import GuardStage
from trellis.store import Database
from trellis.store.db import alembic_config
from trellis.store.tables import audit_log

from ..conftest import sqlite_url


async def test_another_process_follows_a_guard_change_in_a_poll(db: Database) -> None:
    here = ProjectStore(db)
    there, there_keys = ProjectStore(db), KeyStore(db)
    there_keys.on_change.append(there.load_guards)
    await there_keys.poll_version()  # the first poll loads

    await here.create("strict", guard=parse_guard({"input": {"mode": "block"}}))
    assert here.guard_of("strict") is not None, "this process knows at once"
    assert there.guard_of("strict") is None, "the other one within a poll"
    assert await there_keys.poll_version() is True
    guard = there.guard_of("strict")
    assert guard is not None and guard.input == GuardStage(mode="block")
    assert guard.retrieved is None and guard.tool_outputs is None

    updated = await here.set_guard("strict", parse_guard({"tool_outputs": {"mode": "flag"}}))
    assert updated.guard == {"tool_outputs": {"mode": "flag", "threshold": 0.5}}
    await there_keys.poll_version()
    guard = there.guard_of("strict")
    assert guard is not None and guard.input is None and guard.tool_outputs is not None

    await here.set_guard("strict", None)
    await there_keys.poll_version()
    assert there.guard_of("strict") is None and (await there.require("strict")).guard is None
    with pytest.raises(NotFoundError):
        await here.set_guard("nope", None)


async def test_set_guard_is_audited_in_its_transaction(db: Database) -> None:
    from trellis.access.audit import Actor, AuditEntry

    store = ProjectStore(db)
    await store.create("p1")
    entry = AuditEntry(Actor(key_name="t"), "project.update", "p1", detail={"guard": None})
    await store.set_guard("p1", None, audit=entry)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(audit_log.c.action, audit_log.c.target))).all()
    assert ("project.update", "p1") in [tuple(r) for r in rows]


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ({"input": {"mode": "loud"}}, "guard.input.mode"),
        ({"retrieved": {"threshold": 0}}, "guard.retrieved.threshold"),
        ({"canary": True}, "guard.canary"),
    ],
)
def test_parse_guard_names_the_bad_field(value: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_guard(value)
    assert caught.value.param == param


def _upgrade(sync_conn: Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(sync_conn), revision)


async def test_upgrade_from_0016_keeps_projects_without_a_guard(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    await db.connect(migrate=False)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_upgrade, "0016_ui_sessions")
            await conn.execute(
                text("INSERT INTO projects (id, name, created_at) VALUES ('old', 'Old', 1.0)")
            )
        await db.migrate()
        store = ProjectStore(db)
        assert (await store.require("old")).guard is None
        await store.set_guard("old", parse_guard({"input": {"mode": "flag"}}))
        assert (await store.require("old")).guard == {"input": {"mode": "flag", "threshold": 0.5}}
    finally:
        await db.close()
