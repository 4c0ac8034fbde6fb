"""API keys on both backends: create, verify (with its cache), revoke, ensure_admin."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError
from sqlalchemy import select, update

from trellis.access.keys import (
    ADMIN,
    INFERENCE,
    SECRET_PREFIX,
    ApiKeyRecord,
    KeyStore,
    display_prefix,
    hash_secret,
)
from trellis.errors import ConfigurationError, ConflictError, InvalidRequestError
from trellis.settings import ADMIN_KEY_MAX_LENGTH, ADMIN_KEY_MIN_LENGTH, Settings
from trellis.store import Database, api_keys


async def test_create_stores_only_the_hash(db: Database) -> None:
    keys = KeyStore(db)
    record, secret = await keys.create("ci", allowed_models=["gpt-4o-mini"])
    assert secret.startswith(SECRET_PREFIX) and len(secret) > 40
    assert record.id.startswith("key_") and len(record.id) == 16
    assert record.prefix == secret[:10]
    assert record.scopes == (INFERENCE,)
    assert record.allowed_models == ("gpt-4o-mini",)
    assert record.created_at.tzinfo is not None and record.revoked_at is None
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(api_keys))).mappings().one()
    assert row["key_hash"] == hash_secret(secret)
    assert secret not in {str(v) for v in row.values()}


async def test_verify_and_list(db: Database) -> None:
    keys = KeyStore(db)
    first, secret = await keys.create("one")
    second, _ = await keys.create("two", scopes=[ADMIN])
    verified = await keys.verify(secret)
    assert verified is not None and verified.id == first.id
    assert await keys.verify("tr-not-a-key") is None
    assert await keys.verify("") is None
    assert await keys.verify("x" * 10_000) is None
    assert [k.id for k in await keys.list()] == [first.id, second.id]


async def test_revoke_takes_effect_immediately_through_the_same_store(db: Database) -> None:
    keys = KeyStore(db, cache_seconds=60)
    record, secret = await keys.create("temp")
    assert await keys.verify(secret) is not None  # now cached
    assert await keys.revoke(record.id) is True
    assert await keys.verify(secret) is None
    # Already revoked: False (the API's 404, as documented); the first time is kept.
    revoked_at = (await keys.get(record.id)).revoked_at  # type: ignore[union-attr]
    assert await keys.revoke(record.id) is False
    assert (await keys.get(record.id)).revoked_at == revoked_at  # type: ignore[union-attr]
    assert await keys.revoke("key_missing") is False
    listed = {k.id: k for k in await keys.list()}
    assert listed[record.id].revoked
    assert await keys.list(include_revoked=False) == []


async def test_verify_is_cached_positive_and_negative(db: Database) -> None:
    keys = KeyStore(db, cache_seconds=60)
    _, secret = await keys.create("hot")
    for _ in range(20):
        assert await keys.verify(secret) is not None
        assert await keys.verify("tr-wrong") is None
    assert keys.db_lookups == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cache_expires(db: Database) -> None:
    clock = FakeClock()
    keys = KeyStore(db, cache_seconds=10, clock=clock)
    other = KeyStore(db)  # another replica
    record, secret = await keys.create("short")
    assert await keys.verify(secret) is not None
    await other.revoke(record.id)
    clock.now += 9
    assert await keys.verify(secret) is not None  # still trusted from the cache
    clock.now += 2
    assert await keys.verify(secret) is None
    assert keys.db_lookups == 2


async def test_no_cache_when_cache_seconds_is_zero(db: Database) -> None:
    keys = KeyStore(db, cache_seconds=0)
    _, secret = await keys.create("uncached")
    await keys.verify(secret)
    await keys.verify(secret)
    assert keys.db_lookups == 2


async def test_a_cached_verification_does_not_hash_the_secret(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SHA-256 is for the table: a key verified a moment ago is found by its secret."""
    keys = KeyStore(db, cache_seconds=60)
    record, secret = await keys.create("hot")
    hashed: list[str] = []

    def counting(value: str) -> str:
        hashed.append(value)
        return hash_secret(value)

    monkeypatch.setattr("trellis.access.keys.hash_secret", counting)
    for _ in range(3):
        verified = await keys.verify(secret)
        assert verified is not None and verified.id == record.id
    assert hashed == [secret] and keys.db_lookups == 1
    assert await keys.verify(secret + "x") is None  # a near miss is its own lookup
    assert hashed == [secret, secret + "x"]


async def test_concurrent_verifies_share_one_query(db: Database) -> None:
    keys = KeyStore(db)
    _, secret = await keys.create("burst")
    results = await asyncio.gather(*(keys.verify(secret) for _ in range(50)))
    assert all(r is not None for r in results)
    assert keys.db_lookups == 1


async def test_cache_is_bounded(db: Database) -> None:
    keys = KeyStore(db, cache_entries=8)
    _, secret = await keys.create("kept")
    await keys.verify(secret)
    for i in range(100):
        await keys.verify(f"tr-guess-{i}")
    # A flood of wrong keys cannot push the valid one out of its cache.
    lookups = keys.db_lookups
    assert await keys.verify(secret) is not None
    assert keys.db_lookups == lookups
    assert len(keys._invalid) == 8


async def test_invalid_scopes_and_names(db: Database) -> None:
    keys = KeyStore(db)
    with pytest.raises(InvalidRequestError, match="unknown scope"):
        await keys.create("bad", scopes=["superuser"])
    with pytest.raises(InvalidRequestError):
        await keys.create("bad", scopes=[])
    with pytest.raises(InvalidRequestError):
        await keys.create("   ")
    with pytest.raises(InvalidRequestError):
        await keys.create("bad", allowed_models=[""])
    assert await keys.list() == []


async def test_ensure_admin_creates_one_key_once(db: Database) -> None:
    keys = KeyStore(db)
    secret = await keys.ensure_admin(None)
    assert secret is not None
    record = await keys.verify(secret)
    assert record is not None and record.name == "admin" and record.has_scope(ADMIN)
    assert await keys.ensure_admin(None) is None
    # Revoking the only admin key means the next start creates a new one.
    await keys.revoke(record.id)
    second = await keys.ensure_admin(None)
    assert second is not None and second != secret


async def test_ensure_admin_ignores_inference_only_keys(db: Database) -> None:
    keys = KeyStore(db)
    await keys.create("app")
    assert await keys.ensure_admin(None) is not None


async def test_ensure_admin_installs_the_configured_key(db: Database) -> None:
    keys = KeyStore(db)
    configured = "my-operator-chosen-admin-key"
    assert await keys.ensure_admin(configured) is None
    assert await keys.ensure_admin(configured) is None  # idempotent
    record = await keys.verify(configured)
    assert record is not None and record.has_scope(ADMIN)
    assert len(await keys.list()) == 1
    # No generated key while the configured one exists.
    assert await keys.ensure_admin(None) is None
    # A configured key revoked in the table (say, before it was configured) comes back
    # at the next start, and a store that installed it takes it back at once.
    async with db.engine.begin() as conn:
        await conn.execute(update(api_keys).values(revoked_at=1.0))
    keys.invalidate_cache()
    assert await keys.verify(configured) is not None
    async with db.engine.begin() as conn:
        await conn.execute(update(api_keys).values(revoked_at=1.0))
    restarted = KeyStore(db)
    assert await restarted.verify(configured) is None  # not told which key is configured
    await restarted.ensure_admin(configured)
    assert await restarted.verify(configured) is not None


async def test_the_configured_admin_key_cannot_be_revoked(db: Database) -> None:
    """Revoking it locked every admin out until a restart re-enabled it."""
    configured = "my-operator-chosen-admin-key"
    keys = KeyStore(db)
    await keys.ensure_admin(configured)
    record = await keys.verify(configured)
    assert record is not None
    with pytest.raises(ConflictError) as raised:
        await keys.revoke(record.id)
    assert raised.value.code == "configured_admin_key" and raised.value.status_code == 409
    assert await keys.verify(configured) is not None
    # A store told the configured key (the CLI's, another replica's) refuses it too.
    with pytest.raises(ConflictError):
        await KeyStore(db, admin_key=configured).revoke(record.id)
    # Other admin keys can still be revoked.
    other, _ = await keys.create("second admin", scopes=[ADMIN])
    assert await keys.revoke(other.id) is True


async def test_a_server_keeps_its_configured_admin_key_when_another_process_revokes_it(
    db: Database,
) -> None:
    """A CLI run without TRELLIS_ADMIN_KEY cannot know which row is the server's
    configured key and revokes it; the server still lets its admins in."""
    configured = "my-operator-chosen-admin-key"
    server = KeyStore(db, cache_seconds=0, admin_key=configured)
    await server.ensure_admin(configured)
    record = await server.verify(configured)
    assert record is not None
    assert await KeyStore(db).revoke(record.id) is True  # the uninformed process
    again = await server.verify(configured)
    assert again is not None and again.id == record.id and ADMIN in again.scopes
    listed = {k.id: k for k in await server.list()}
    assert listed[record.id].revoked_at is None  # and the row says so again
    # Any other revoked key stays revoked.
    other, secret = await server.create("second admin", scopes=[ADMIN])
    assert await KeyStore(db).revoke(other.id) is True
    assert await server.verify(secret) is None


def test_a_short_configured_admin_key_is_invalid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for make in (
        lambda: Settings(admin_key="hunter2"),
        lambda: Settings(admin_key="x" * (ADMIN_KEY_MAX_LENGTH + 1)),
    ):
        with pytest.raises(ValidationError, match="admin key must be 20 to 512") as raised:
            make()
        assert "hunter2" not in str(raised.value)  # the rejected secret is never echoed
    monkeypatch.setenv("TRELLIS_ADMIN_KEY", "hunter2")
    with pytest.raises(ValidationError, match="admin_key") as raised:
        Settings()
    assert "hunter2" not in str(raised.value)
    monkeypatch.setenv("TRELLIS_ADMIN_KEY", "h" * ADMIN_KEY_MIN_LENGTH)
    assert Settings().admin_key == "h" * ADMIN_KEY_MIN_LENGTH


async def test_stored_prefixes_never_give_a_key_away(db: Database) -> None:
    keys = KeyStore(db)
    with pytest.raises(ConfigurationError):  # library callers bypassing Settings
        await keys.ensure_admin("hunter2")
    configured = "an-operator-key-20ch"
    await keys.ensure_admin(configured)
    (record,) = await keys.list()
    # At most a quarter of a configured key; generated keys keep their 10 characters.
    assert record.prefix == configured[:5] == display_prefix(configured)
    _, secret = await keys.create("app")
    assert display_prefix(secret) == secret[:10]
    # A key stored by an older version with the whole secret as its prefix is fixed at start.
    async with db.engine.begin() as conn:
        await conn.execute(
            api_keys.insert().values(
                id="key_old", name="admin (configured)", key_hash=hash_secret("hunter2"),
                prefix="hunter2", scopes=[ADMIN], allowed_models=None, cache=False,
                created_at=1.0, revoked_at=None, last_used_at=None,
            )
        )  # fmt: skip
    await KeyStore(db).ensure_admin(configured)
    listed = {r.id: r.prefix for r in await keys.list()}
    assert listed["key_old"] == "h" and "hunter2" not in listed.values()


async def test_ensure_admin_concurrently_creates_a_single_key(db: Database) -> None:
    stores = [KeyStore(db) for _ in range(4)]
    secrets = await asyncio.gather(*(s.ensure_admin(None) for s in stores))
    assert sum(s is not None for s in secrets) == 1
    assert len(await stores[0].list()) == 1


async def test_last_used_is_batched_not_written_per_request(db: Database) -> None:
    keys = KeyStore(db)
    record, secret = await keys.create("used")
    await keys.verify(secret)
    assert (await keys.get(record.id)).last_used_at is None  # type: ignore[union-attr]
    assert await keys.flush_last_used() == 1
    assert (await keys.get(record.id)).last_used_at is not None  # type: ignore[union-attr]
    assert await keys.flush_last_used() == 0


def _record(scopes: tuple[str, ...], models: tuple[str, ...] | None) -> ApiKeyRecord:
    from datetime import UTC, datetime

    return ApiKeyRecord("key_x", "x", "tr-xxxxxxx", scopes, models, datetime.now(UTC))


def test_scopes_and_models() -> None:
    inference = _record((INFERENCE,), ("gpt-4o", "claude-*"))
    assert inference.has_scope(INFERENCE) and not inference.has_scope(ADMIN)
    assert inference.allows_model("gpt-4o") and inference.allows_model("claude-3-haiku")
    assert not inference.allows_model("gpt-4o-mini")
    admin = _record((ADMIN,), None)
    assert admin.has_scope(INFERENCE) and admin.has_scope(ADMIN)
    assert admin.allows_model("anything")
    assert admin.to_dict()["scopes"] == [ADMIN]
