"""API keys: created once, stored only as a SHA-256 hash, verified from a short-lived cache.

Verification sits on every request, so a result (valid or not) is trusted for
``cache_seconds`` before the database is asked again. Every change to a key (create,
revoke, rotate, new roles or expiry) bumps ``access_state.version`` in its own
transaction; :meth:`KeyStore.start_watch` polls that one row every ``poll_seconds`` and
drops the cache when it moves, so other replicas and workers follow within a poll (0.25 s
by default), not ``cache_seconds``. Expiry needs no query: the cached record carries it.
``last_used_at`` is never written on the request path: uses are remembered in memory and written by
:meth:`KeyStore.flush_last_used`, which the server calls periodically and at shutdown.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.access.audit import AuditEntry, record
from trellis.access.projects import ALL_PROJECTS, DEFAULT_PROJECT, validate_project_id
from trellis.access.version import bump_access_version
from trellis.errors import ConfigurationError, ConflictError, InvalidRequestError
from trellis.settings import ADMIN_KEY_MAX_LENGTH, ADMIN_KEY_MIN_LENGTH
from trellis.store.db import Database
from trellis.store.tables import access_state, api_keys

__all__ = [
    "ADMIN",
    "EVAL",
    "INFERENCE",
    "INGEST",
    "OBSERVER",
    "SCOPES",
    "SECRET_PREFIX",
    "ApiKeyRecord",
    "KeyStore",
    "display_prefix",
    "bump_access_version",
    "hash_secret",
]

logger = logging.getLogger(__name__)

#: Everything in the key's project, including its keys, rules and collections. Implies
#: every other role. An admin key of project ``*`` (the built-in one) spans projects.
ADMIN = "admin"
#: Chat, completions and embeddings through the OpenAI-compatible API.
INFERENCE = "inference"
#: Read traces, statistics and metrics; nothing else (for dashboards and on-call people).
OBSERVER = "observer"
#: Documents in the project's collections: read, add, delete (not collections themselves).
INGEST = "ingest"
#: Eval datasets and runs: upload, start, resume, read, compare.
EVAL = "eval"
#: The roles a key may hold (stored in ``api_keys.scopes``; a key may hold several).
SCOPES: frozenset[str] = frozenset({ADMIN, INFERENCE, OBSERVER, INGEST, EVAL})

SECRET_PREFIX = "tr-"
#: Characters of the secret kept in clear, so people can tell their keys apart: the
#: ``tr-`` marker and 7 random characters of a generated key (42 of its 256 random bits).
DISPLAY_PREFIX_LEN = 10
#: Longer presented secrets are rejected without hashing or caching them.
MAX_SECRET_LEN = ADMIN_KEY_MAX_LENGTH

_DEFAULT_CACHE_ENTRIES = 10_000
#: How often each process reads ``access_state.version`` (one row, by primary key).
DEFAULT_POLL_SECONDS = 0.25


def hash_secret(secret: str) -> str:
    """The stored form of a secret: a random 256-bit token needs no slow hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The part of ``secret`` stored and shown in clear: at most :data:`DISPLAY_PREFIX_LEN`
    characters and never more than a quarter of it, so a short configured key (an
    operator's choice, not 46 random characters) is not given away by ``GET /v1/keys``."""
    return secret[: min(DISPLAY_PREFIX_LEN, len(secret) // 4)]


def _as_datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key as the rest of Trellis sees it: never the secret, never the hash."""

    id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    allowed_models: tuple[str, ...] | None
    created_at: datetime
    cache: bool = False  # cache this key's answers even when not deterministic
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    project_id: str = DEFAULT_PROJECT
    expires_at: datetime | None = None
    #: Until when the rotated-out secret still works (None: no rotation pending).
    previous_expires_at: datetime | None = None
    #: Epoch seconds past which the secret this record was verified with stops working:
    #: the key's expiry, or the end of a rotation's grace for the old secret.
    valid_until: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def spans_projects(self) -> bool:
        """The built-in admin: acts in every project."""
        return self.project_id == ALL_PROJECTS

    def expired(self, now: float | None = None) -> bool:
        return self.valid_until is not None and (now or time.time()) >= self.valid_until

    def has_scope(self, scope: str) -> bool:
        """Whether the key may do what ``scope`` covers; admin covers everything."""
        return ADMIN in self.scopes or scope in self.scopes

    def allows_model(self, model: str) -> bool:
        """Whether the key may call ``model``: no list means any; entries may be globs."""
        if self.allowed_models is None:
            return True
        return any(
            model == allowed or fnmatchcase(model, allowed) for allowed in self.allowed_models
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view for the API and the CLI."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "allowed_models": None if self.allowed_models is None else list(self.allowed_models),
            "cache": self.cache,
            "project": self.project_id,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "previous_expires_at": (
                self.previous_expires_at.isoformat() if self.previous_expires_at else None
            ),
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], *, previous: bool = False) -> ApiKeyRecord:
        """The record of a row; ``previous``: verified with the rotated-out secret."""
        allowed = row["allowed_models"]
        created = _as_datetime(row["created_at"])
        assert created is not None
        expires = row.get("expires_at")
        previous_expires = row.get("previous_expires_at")
        limits = [t for t in (expires, previous_expires if previous else None) if t is not None]
        return cls(
            id=row["id"],
            name=row["name"],
            prefix=row["prefix"],
            scopes=tuple(row["scopes"] or ()),
            allowed_models=None if allowed is None else tuple(allowed),
            cache=bool(row.get("cache", False)),
            created_at=created,
            revoked_at=_as_datetime(row["revoked_at"]),
            last_used_at=_as_datetime(row["last_used_at"]),
            project_id=row.get("project_id") or DEFAULT_PROJECT,
            expires_at=_as_datetime(expires),
            previous_expires_at=_as_datetime(previous_expires),
            valid_until=min(limits) if limits else None,
        )


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Known scope names, de-duplicated in order; an unknown one is the caller's mistake."""
    if isinstance(scopes, str):
        scopes = [scopes]
    result: list[str] = []
    for scope in scopes:
        if scope not in SCOPES:
            known = ", ".join(sorted(SCOPES))
            raise InvalidRequestError(
                f"unknown scope {scope!r}; known scopes: {known}", param="scopes"
            )
        if scope not in result:
            result.append(scope)
    if not result:
        raise InvalidRequestError("a key needs at least one scope", param="scopes")
    return tuple(result)


def _validate_models(models: Iterable[str] | None) -> tuple[str, ...] | None:
    if models is None:
        return None
    if isinstance(models, str):
        models = [models]
    result = tuple(dict.fromkeys(models))
    if any(not isinstance(m, str) or not m.strip() for m in result):
        raise InvalidRequestError("allowed_models must be non-empty names", param="allowed_models")
    return result


_MISS: tuple[bool, None] = (False, None)


class _TTLCache:
    """A bounded LRU map whose entries expire; small enough to keep in one place."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float, ApiKeyRecord | None]] = OrderedDict()

    def get(self, key: str, now: float) -> tuple[bool, ApiKeyRecord | None]:
        entry = self._data.get(key)
        if entry is None:
            return False, None
        expires, value = entry
        if expires <= now:
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, value

    def put(self, key: str, value: ApiKeyRecord | None, expires: float) -> None:
        self._data[key] = (expires, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def discard_where(self, key_id: str) -> None:
        stale = [k for k, (_, rec) in self._data.items() if rec is not None and rec.id == key_id]
        for k in stale:
            del self._data[k]

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class KeyStore:
    """Creates, lists, revokes and verifies API keys stored in ``api_keys``."""

    def __init__(
        self,
        db: Database,
        cache_seconds: float = 10.0,
        *,
        admin_key: str | None = None,
        cache_entries: int = _DEFAULT_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self._seen_version: int | None = None
        #: Called after the access version moved (also on the first poll): other caches
        #: that follow the same version (the projects' guard overrides) reload.
        self.on_change: list[Callable[[], Awaitable[None]]] = []
        self._watcher: asyncio.Task[None] | None = None
        # The configured admin key (``Settings.admin_key``) cannot be revoked: with it gone
        # nobody could manage keys until a restart re-enabled it. Kept as its hash only.
        self._configured_hash = hash_secret(admin_key) if admin_key else None
        self.cache_seconds = cache_seconds
        self._clock = clock
        # Valid and invalid results live apart, so a flood of wrong keys cannot evict good ones.
        self._valid = _TTLCache(cache_entries)
        self._invalid = _TTLCache(cache_entries)
        self._inflight: dict[str, asyncio.Task[ApiKeyRecord | None]] = {}
        # Bumped on every revoke: a lookup that started before it must not cache its answer.
        self._generation = 0
        self._last_used: dict[str, float] = {}
        self.db_lookups = 0

    # --- management -----------------------------------------------------------

    async def create(
        self,
        name: str,
        scopes: Iterable[str] = (INFERENCE,),
        allowed_models: Iterable[str] | None = None,
        cache: bool = False,
        *,
        project_id: str = DEFAULT_PROJECT,
        expires_at: float | None = None,
        audit: AuditEntry | None = None,
    ) -> tuple[ApiKeyRecord, str]:
        """A new key of ``project_id`` and its secret. The secret is shown to the caller
        once and never stored. ``expires_at``: epoch seconds, in the future."""
        if project_id != ALL_PROJECTS:
            validate_project_id(project_id)
        _check_expiry(expires_at)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        row = self._row(name, validate_scopes(scopes), allowed_models, secret, cache)
        row.update(project_id=project_id, expires_at=expires_at)
        async with self.db.write() as conn:
            await conn.execute(api_keys.insert().values(row))
            await bump_access_version(conn)
            if audit is not None:
                await record(
                    conn,
                    AuditEntry(
                        audit.actor,
                        audit.action,
                        audit.project_id,
                        row["id"],
                        {**audit.detail, "name": row["name"], "scopes": row["scopes"]},
                    ),
                )
        return ApiKeyRecord.from_row(row), secret

    async def update(
        self,
        key_id: str,
        *,
        scopes: Iterable[str] | None = None,
        expires_at: float | None = None,
        clear_expiry: bool = False,
        project_id: str | None = None,
        audit: AuditEntry | None = None,
    ) -> ApiKeyRecord | None:
        """Change a live key's roles or expiry (``project_id``: only a key of that project);
        None when there is no such key. Every process follows within a poll."""
        values: dict[str, Any] = {}
        if scopes is not None:
            values["scopes"] = list(validate_scopes(scopes))
        if clear_expiry:
            values["expires_at"] = None
        elif expires_at is not None:
            _check_expiry(expires_at)
            values["expires_at"] = expires_at
        if not values:
            raise InvalidRequestError("nothing to change: give scopes or expires_at")
        async with self.db.write() as conn:
            row = await self._live_row(conn, key_id, project_id)
            if row is None:
                return None
            self._refuse_configured(row, "changing")
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(values))
            await bump_access_version(conn)
            if audit is not None:
                await record(conn, _about(audit, row))
        self._forget(key_id)
        return ApiKeyRecord.from_row({**row, **values})

    async def rotate(
        self,
        key_id: str,
        grace_seconds: float,
        *,
        project_id: str | None = None,
        audit: AuditEntry | None = None,
    ) -> tuple[ApiKeyRecord, str] | None:
        """A new secret for a live key; the old one keeps working for ``grace_seconds``
        (0: stops at once). None when there is no such key (``project_id`` as in update)."""
        if grace_seconds < 0:
            raise InvalidRequestError("grace must not be negative", param="grace")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        async with self.db.write() as conn:
            row = await self._live_row(conn, key_id, project_id)
            if row is None:
                return None
            self._refuse_configured(row, "rotating")
            values = {
                "key_hash": hash_secret(secret),
                "prefix": display_prefix(secret),
                "previous_hash": row["key_hash"] if grace_seconds > 0 else None,
                "previous_expires_at": now + grace_seconds if grace_seconds > 0 else None,
            }
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(values))
            await bump_access_version(conn)
            if audit is not None:
                await record(conn, _about(audit, row))
        self._forget(key_id)
        return ApiKeyRecord.from_row({**row, **values}), secret

    async def _live_row(
        self, conn: AsyncConnection, key_id: str, project_id: str | None
    ) -> dict[Any, Any] | None:
        query = select(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        if project_id is not None:
            query = query.where(api_keys.c.project_id == project_id)
        row = (await conn.execute(query)).mappings().first()
        return None if row is None else dict(row)

    def _refuse_configured(self, row: Mapping[Any, Any], doing: str) -> None:
        if self._configured_hash is not None and row["key_hash"] == self._configured_hash:
            raise ConflictError(
                f"Key `{row['id']}` is the admin key set in the configuration "
                f"(TRELLIS_ADMIN_KEY / admin_key); {doing} it would lock every admin "
                "out until a restart. Change or remove it in the settings instead.",
                code="configured_admin_key",
            )

    def _forget(self, key_id: str) -> None:
        # Bumped after the commit too: a lookup that read the row before must not cache it.
        self._generation += 1
        self._valid.discard_where(key_id)

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        async with self.db.engine.connect() as conn:
            row = (
                (await conn.execute(select(api_keys).where(api_keys.c.id == key_id)))
                .mappings()
                .first()
            )
        return ApiKeyRecord.from_row(row) if row else None

    async def revoke(
        self, key_id: str, *, project_id: str | None = None, audit: AuditEntry | None = None
    ) -> bool:
        """Revoke ``key_id``; False if there is no such active key (unknown, already
        revoked: the first revocation time is kept, or not of ``project_id`` when given).
        The configured admin key is refused with a 409 ``configured_admin_key``: remove it
        from the settings instead. Every process follows within a poll."""
        self._generation += 1
        async with self.db.write() as conn:
            row = await self._live_row(conn, key_id, project_id)
            if row is None:
                return False
            self._refuse_configured(row, "revoking")
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            found = result.rowcount > 0
            if found:
                await bump_access_version(conn)
                if audit is not None:
                    await record(conn, _about(audit, row))
        # Again after the commit: a lookup that read the row before it must not cache it.
        self._generation += 1
        self._valid.discard_where(key_id)
        self._last_used.pop(key_id, None)
        return found

    async def ensure_admin(self, admin_key: str | None) -> str | None:
        """Make sure an admin can log in. Returns a new secret only when one was just created.

        With ``admin_key`` (from settings, 20 to 512 characters, else ConfigurationError),
        that exact key is installed or re-enabled with the admin scope, and this store then
        refuses to revoke it. Without it, an ``admin`` key is created if no usable admin key
        exists; the caller prints the returned secret once.
        """
        await self._hide_whole_secrets()
        if admin_key:
            await self._install_admin_key(admin_key)
            return None
        async with self.db.exclusive("trellis.ensure_admin") as conn:
            rows = (
                await conn.execute(
                    select(api_keys.c.scopes).where(
                        api_keys.c.revoked_at.is_(None), api_keys.c.project_id == ALL_PROJECTS
                    )
                )
            ).all()
            if any(ADMIN in (scopes or ()) for (scopes,) in rows):
                return None
            secret = SECRET_PREFIX + secrets.token_urlsafe(32)
            row = self._row("admin", (ADMIN,), None, secret)
            row["project_id"] = ALL_PROJECTS
            await conn.execute(api_keys.insert().values(row))
            await bump_access_version(conn)
        logger.info("created the first admin API key")
        return secret

    async def list(
        self, *, include_revoked: bool = True, project_id: str | None = None
    ) -> builtins.list[ApiKeyRecord]:
        """Every key (of ``project_id`` when given), oldest first."""
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        if project_id is not None:
            query = query.where(api_keys.c.project_id == project_id)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [ApiKeyRecord.from_row(row) for row in rows]

    # --- the request path -----------------------------------------------------

    async def verify(self, secret: str) -> ApiKeyRecord | None:
        """The live key for ``secret``, or None (unknown or revoked). Usually no DB query."""
        if not secret or len(secret) > MAX_SECRET_LEN:
            return None
        # The cache is keyed by the secret itself: its SHA-256 (what the table holds)
        # showed in each request's latency with cold caches, a dict lookup does not
        # (figures: README, Performance).
        # It holds nothing the process does not already: every request's header carries
        # the secret, and the upstreams' own API keys sit in their clients' headers.
        hit, record = self._valid.get(secret, self._clock()) if self.cache_seconds > 0 else _MISS
        if not hit:  # the usual case is a hit: answered without another coroutine
            record = await self._lookup_cached(secret)
        if record is not None:
            self._last_used[record.id] = time.time()
        return record

    async def poll_version(self) -> bool:
        """Read ``access_state.version``; drop the cache when it moved (True)."""
        async with self.db.engine.connect() as conn:
            version = (
                await conn.execute(select(access_state.c.version).where(access_state.c.id == 1))
            ).scalar()
        changed = version != self._seen_version
        self._seen_version = version
        if changed:
            self.invalidate_cache()
            for reload in self.on_change:
                await reload()
        return changed

    async def start_watch(self) -> None:
        """Poll the access version every ``poll_seconds`` until :meth:`aclose`."""
        if self._watcher is None:
            await self.poll_version()
            self._watcher = asyncio.create_task(self._watch(), name="trellis-key-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.poll_version()
            except Exception:  # a lost database: keep polling, it may come back
                # Cached keys keep working for at most ``cache_seconds`` meanwhile (the
                # bound before this poll existed): dropping them would turn a database
                # outage into refused requests, since a lookup needs the database.
                logger.warning("could not read the access version", exc_info=True)

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    def invalidate_cache(self) -> None:
        """Forget every cached verification (used after changes made outside this store)."""
        self._generation += 1
        self._valid.clear()
        self._invalid.clear()

    async def flush_last_used(self) -> int:
        """Write remembered ``last_used_at`` times in one transaction; returns keys updated."""
        if not self._last_used:
            return 0
        pending, self._last_used = self._last_used, {}
        async with self.db.write() as conn:
            for key_id, used_at in pending.items():
                await conn.execute(
                    update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=used_at)
                )
        return len(pending)

    # --- internals ------------------------------------------------------------

    async def _lookup_cached(self, secret: str) -> ApiKeyRecord | None:
        if self.cache_seconds <= 0:
            return await self._fetch(hash_secret(secret))
        now = self._clock()
        hit, record = self._valid.get(secret, now)
        if hit:
            return record
        hit, record = self._invalid.get(secret, now)
        if hit:
            return None
        # Single flight: concurrent requests with the same uncached key share one query.
        task = self._inflight.get(secret)
        if task is None:
            task = asyncio.ensure_future(self._fetch_and_cache(secret))
            self._inflight[secret] = task
            task.add_done_callback(lambda _t: self._inflight.pop(secret, None))
        return await asyncio.shield(task)

    async def _fetch_and_cache(self, secret: str) -> ApiKeyRecord | None:
        generation = self._generation
        record = await self._fetch(hash_secret(secret))
        if generation == self._generation:
            expires = self._clock() + self.cache_seconds
            if record is None:
                self._invalid.put(secret, None, expires)
            else:
                self._valid.put(secret, record, expires)
        return record

    async def _fetch(self, digest: str) -> ApiKeyRecord | None:
        self.db_lookups += 1
        # The current secret, or a rotated-out one still in its grace period.
        matches = or_(
            api_keys.c.key_hash == digest,
            and_(api_keys.c.previous_hash == digest, api_keys.c.previous_expires_at > time.time()),
        )
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(matches))).mappings().first()
        if row is not None and digest == self._configured_hash and not _usable_admin(row):
            # Revoked by a process that did not know it is this server's configured key
            # (a CLI run without TRELLIS_ADMIN_KEY): the server keeps its admins in.
            async with self.db.write() as conn:
                return ApiKeyRecord.from_row(await self._reenable_configured(conn, row))
        if row is None or row["revoked_at"] is not None:
            return None
        return ApiKeyRecord.from_row(row, previous=row["key_hash"] != digest)

    @staticmethod
    def _row(
        name: str,
        scopes: tuple[str, ...],
        allowed_models: Iterable[str] | None,
        secret: str,
        cache: bool = False,
    ) -> dict[str, Any]:
        name = name.strip() if isinstance(name, str) else ""
        if not name or len(name) > 200:
            raise InvalidRequestError("a key needs a name of 1 to 200 characters", param="name")
        models = _validate_models(allowed_models)
        return {
            "id": "key_" + secrets.token_hex(6),
            "name": name,
            "key_hash": hash_secret(secret),
            "prefix": display_prefix(secret),
            "scopes": list(scopes),
            "allowed_models": None if models is None else list(models),
            "cache": cache,
            "created_at": time.time(),
            "revoked_at": None,
            "last_used_at": None,
            "project_id": DEFAULT_PROJECT,
            "expires_at": None,
            "previous_hash": None,
            "previous_expires_at": None,
        }

    async def _install_admin_key(self, secret: str) -> None:
        if len(secret) < ADMIN_KEY_MIN_LENGTH or len(secret) > MAX_SECRET_LEN:
            # Settings refuse these at load; this guards library callers too.
            raise ConfigurationError(
                f"the configured admin key must be {ADMIN_KEY_MIN_LENGTH} to "
                f"{MAX_SECRET_LEN} characters"
            )
        digest = hash_secret(secret)
        self._configured_hash = digest
        async with self.db.exclusive("trellis.ensure_admin") as conn:
            row = (
                (await conn.execute(select(api_keys).where(api_keys.c.key_hash == digest)))
                .mappings()
                .first()
            )
            if row is None:
                new = self._row("admin (configured)", (ADMIN,), None, secret)
                new["project_id"] = ALL_PROJECTS
                await conn.execute(api_keys.insert().values(new))
                await bump_access_version(conn)
                logger.info("installed the configured admin API key")
            elif not _usable_admin(row):
                await self._reenable_configured(conn, row)
        self.invalidate_cache()

    async def _reenable_configured(self, conn: Any, row: Mapping[Any, Any]) -> dict[Any, Any]:
        """The configured admin key's row made usable again (admin scope, not revoked)."""
        scopes = [ADMIN, *[s for s in row["scopes"] or () if s != ADMIN]]
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.id == row["id"])
            .values(revoked_at=None, scopes=scopes, project_id=ALL_PROJECTS, expires_at=None)
        )
        await bump_access_version(conn)
        logger.warning(
            "re-enabled the configured admin API key %s (it was revoked or not admin)", row["id"]
        )
        return {
            **row,
            "revoked_at": None,
            "scopes": scopes,
            "project_id": ALL_PROJECTS,
            "expires_at": None,
        }

    async def _hide_whole_secrets(self) -> None:
        """Shorten stored prefixes that give a whole secret away.

        Before :func:`display_prefix`, a configured key of up to 10 characters was stored
        as its own prefix and listed by ``GET /v1/keys``. Such a prefix hashes to the
        key's own hash, which is how it is found (and only such prefixes are changed).
        """
        async with self.db.write() as conn:
            rows = (
                await conn.execute(select(api_keys.c.id, api_keys.c.prefix, api_keys.c.key_hash))
            ).all()
            for key_id, prefix, digest in rows:
                if prefix and hash_secret(prefix) == digest:
                    await conn.execute(
                        update(api_keys)
                        .where(api_keys.c.id == key_id)
                        .values(prefix=display_prefix(prefix))
                    )
                    logger.warning("hid the stored prefix of key %s (it was the whole key)", key_id)


def _usable_admin(row: Mapping[Any, Any]) -> bool:
    """Whether a key row lets its holder in as the built-in admin (not revoked, not
    expired, admin scope, every project)."""
    return (
        row["revoked_at"] is None
        and ADMIN in (row["scopes"] or ())
        and row.get("project_id") == ALL_PROJECTS
        and row.get("expires_at") is None
    )


def _about(audit: AuditEntry, row: Mapping[Any, Any]) -> AuditEntry:
    """``audit`` about the key of ``row``: its id is the target, its project the project."""
    return dataclasses.replace(audit, target=row["id"], project_id=row["project_id"])


def _check_expiry(expires_at: float | None) -> None:
    if expires_at is not None and not (time.time() < expires_at < 2**62):
        raise InvalidRequestError("expires_at must be in the future", param="expires_at")
