"""Exact-match response cache for deterministic chat requests.

A request is cacheable when it is deterministic (temperature 0) or when the
request, the API key or the model alias opts in. The key is a hash of
everything that shapes the answer (alias, messages, sampling parameters,
tools, response format) and, by default, the API key, so one tenant never
sees another's answers. Backends: in-process LRU (default) or Redis, shared
by every replica.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Protocol

import orjson

from trellis.errors import InvalidRequestError
from trellis.schema import ChatRequest, ChatResponse
from trellis.settings import CacheSettings

__all__ = ["ResponseCache", "CacheBackend", "MemoryBackend", "RedisBackend", "build_cache"]

#: Fields that do not change the answer and so stay out of the cache key.
_KEY_EXCLUDE = {"stream", "stream_options", "user", "trellis", "model"}


class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: float) -> None: ...
    async def clear(self) -> None: ...
    async def aclose(self) -> None: ...


class MemoryBackend:
    """A bounded LRU with per-entry expiry, local to this process."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def clear(self) -> None:
        self._entries.clear()

    async def aclose(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class RedisBackend:
    """Entries in Redis with native expiry, so every replica shares one cache."""

    prefix = "trellis:cache:"

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis  # imported here: only Redis deployments need it

        self._client = redis.Redis.from_url(url)

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(self.prefix + key)
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._client.set(self.prefix + key, value, px=max(1, int(ttl * 1000)))

    async def clear(self) -> None:
        async for key in self._client.scan_iter(match=self.prefix + "*", count=500):
            await self._client.delete(key)

    async def aclose(self) -> None:
        await self._client.aclose()


class ResponseCache:
    def __init__(self, backend: CacheBackend, ttl_seconds: float, per_key: bool = True) -> None:
        self.backend = backend
        self.ttl_seconds = ttl_seconds
        self.per_key = per_key

    @staticmethod
    def cacheable(request: ChatRequest, *, opted_in: bool) -> bool:
        """Deterministic requests, or any request whose key/alias/request opted in."""
        options = request.trellis
        if options is not None and options.cache is not None:
            return options.cache
        if (request.n or 1) > 1:
            return False
        return opted_in or request.temperature == 0

    def key(
        self, alias: str, request: ChatRequest, key_id: str | None, project: str = "default"
    ) -> str:
        """The entry's key: shared by a project's keys (the default project's as before
        projects), or per key with ``per_key``; never across projects."""
        payload = request.model_dump(exclude_none=True, exclude=_KEY_EXCLUDE)
        scope = key_id if self.per_key else (None if project == "default" else "p:" + project)
        try:
            raw = orjson.dumps([alias, scope, payload], option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError as exc:
            # Nested past orjson's limit, or holding a value JSON has no form for: the
            # request itself is at fault (the HTTP edge refuses such bodies earlier).
            raise InvalidRequestError(
                f"The request cannot be encoded for its cache key: {exc}", code="invalid_value"
            ) from None
        return hashlib.sha256(raw).hexdigest()

    async def get(self, key: str) -> ChatResponse | None:
        raw = await self.backend.get(key)
        if raw is None:
            return None
        response = ChatResponse.model_validate_json(raw)
        response.keep_wire(raw)  # a hit answers with the very bytes the miss answered with
        return response

    async def put(self, key: str, response: ChatResponse) -> None:
        raw = response.wire or orjson.dumps(response.model_dump(exclude_none=True))
        await self.backend.set(key, raw, self.ttl_seconds)

    async def aclose(self) -> None:
        await self.backend.aclose()


def build_cache(settings: CacheSettings) -> ResponseCache | None:
    if not settings.enabled:
        return None
    backend: CacheBackend
    if settings.backend == "redis":
        backend = RedisBackend(settings.redis_url)
    else:
        backend = MemoryBackend(settings.max_entries)
    return ResponseCache(backend, settings.ttl_seconds, per_key=settings.per_key)
