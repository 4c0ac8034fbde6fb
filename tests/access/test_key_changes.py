"""Key changes on both backends: another store learns of them by the access version, a
rotation keeps the old secret for its grace, expiry needs no query, projects are kept."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from trellis.access.keys import EVAL, INGEST, KeyStore
from trellis.access.projects import ALL_PROJECTS, ProjectStore
from trellis.errors import ConflictError, InvalidRequestError, NotFoundError
from trellis.store import Database
from trellis.store.tables import access_state, audit_log

ADMIN_KEY = "tr-key-changes-admin-key-0123456789"


async def _version(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(access_state.c.version))).scalar_one())


async def test_another_store_drops_its_cache_when_the_version_moves(db: Database) -> None:
    here, there = KeyStore(db, cache_seconds=60), KeyStore(db, cache_seconds=60)
    record, secret = await here.create("k", scopes=[INGEST])
    await there.poll_version()
    assert (await there.verify(secret)) is not None  # cached on "there" for 60 s
    before, lookups = await _version(db), there.db_lookups
    assert await here.revoke(record.id)
    assert await _version(db) == before + 1, "the revocation bumped the version"
    assert (await there.verify(secret)) is not None, "still cached until the next poll"
    assert await there.poll_version() is True
    assert await there.verify(secret) is None
    assert there.db_lookups == lookups + 1
    assert await there.poll_version() is False, "no change: the cache stays"


async def test_rotation_grace_expiry_and_roles(db: Database) -> None:
    keys = KeyStore(db, cache_seconds=60)
    record, old = await keys.create("k", scopes=[EVAL], expires_at=time.time() + 3600)
    rotated = await keys.rotate(record.id, 3600)
    assert rotated is not None
    fresh, new = rotated
    via_old, via_new = await keys.verify(old), await keys.verify(new)
    assert via_old is not None and via_new is not None and via_old.id == via_new.id
    assert via_old.valid_until is not None and via_old.valid_until <= time.time() + 3600
    assert fresh.prefix != record.prefix
    assert await keys.rotate(record.id, 0) is not None
    await keys.poll_version()
    assert await keys.verify(old) is None and await keys.verify(new) is None
    changed = await keys.update(record.id, scopes=["observer", "ingest"], clear_expiry=True)
    assert changed is not None and changed.scopes == ("observer", "ingest")
    assert changed.expires_at is None
    soon = await keys.update(record.id, expires_at=time.time() + 0.2)
    assert soon is not None
    assert not soon.expired() and soon.expired(time.time() + 1)
    with pytest.raises(InvalidRequestError):
        await keys.update(record.id, expires_at=time.time() - 5)
    with pytest.raises(InvalidRequestError):
        await keys.update(record.id, scopes=["root"])
    with pytest.raises(InvalidRequestError):
        await keys.create("k", expires_at=time.time() - 1)


async def test_a_project_scope_hides_other_projects_keys(db: Database) -> None:
    projects = ProjectStore(db)
    await projects.create("team-a")
    keys = KeyStore(db)
    record, _ = await keys.create("k", project_id="team-a")
    assert record.project_id == "team-a"
    assert await keys.revoke(record.id, project_id="default") is False
    assert await keys.rotate(record.id, 0, project_id="default") is None
    assert await keys.update(record.id, scopes=["eval"], project_id="default") is None
    assert [k.id for k in await keys.list(project_id="team-a")] == [record.id]
    with pytest.raises(ConflictError) as busy:
        await projects.delete("team-a")
    assert busy.value.code == "project_not_empty"
    with pytest.raises(NotFoundError):
        await projects.delete("team-b")
    with pytest.raises(InvalidRequestError):
        await projects.create("Team A")


async def test_the_configured_admin_spans_projects_and_is_not_rotated(db: Database) -> None:
    keys = KeyStore(db, admin_key=ADMIN_KEY)
    await keys.ensure_admin(ADMIN_KEY)
    admin = await keys.verify(ADMIN_KEY)
    assert admin is not None and admin.project_id == ALL_PROJECTS and admin.spans_projects
    with pytest.raises(ConflictError):
        await keys.rotate(admin.id, 0)
    with pytest.raises(ConflictError):
        await keys.update(admin.id, scopes=["observer"])
    async with db.engine.connect() as conn:
        assert (await conn.execute(select(audit_log))).first() is None
