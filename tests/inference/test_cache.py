"""The response cache: keys, TTL, LRU bound, and both backends (memory and real Redis)."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from trellis.errors import InvalidRequestError
from trellis.inference.cache import MemoryBackend, RedisBackend, ResponseCache
from trellis.schema import ChatRequest, ChatResponse


def request(**kwargs: object) -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], **kwargs)  # type: ignore[list-item]


def response(text: str = "hello") -> ChatResponse:
    return ChatResponse(model="m", choices=[{"message": {"content": text}}])  # type: ignore[list-item]


def test_cacheable_rules() -> None:
    assert ResponseCache.cacheable(request(temperature=0), opted_in=False)
    assert not ResponseCache.cacheable(request(), opted_in=False)
    assert not ResponseCache.cacheable(request(temperature=0.2), opted_in=False)
    assert ResponseCache.cacheable(request(temperature=0.2), opted_in=True)
    assert ResponseCache.cacheable(
        request(temperature=0.2, trellis={"cache": True}), opted_in=False
    )
    assert not ResponseCache.cacheable(
        request(temperature=0, trellis={"cache": False}), opted_in=True
    )
    assert not ResponseCache.cacheable(request(temperature=0, n=2), opted_in=False)


def test_a_request_the_key_cannot_encode_is_the_callers_error() -> None:
    """A library caller's request nested past orjson's 254 levels used to fail the cache
    key with a TypeError (a 500 over HTTP, before the edge's nesting limit)."""
    value: object = 1
    for _ in range(300):
        value = {"a": value}
    cache = ResponseCache(MemoryBackend(), 60)
    with pytest.raises(InvalidRequestError) as caught:
        cache.key("m", request(temperature=0, deep=value), "key_1")
    assert caught.value.status_code == 400 and "cache key" in caught.value.message


def test_key_ignores_transport_fields_but_not_sampling() -> None:
    cache = ResponseCache(MemoryBackend(), 60)
    base = cache.key("m", request(temperature=0), "key_1")
    assert base == cache.key("m", request(temperature=0, stream=True, user="u"), "key_1")
    assert base != cache.key("m", request(temperature=0, seed=1), "key_1")
    assert base != cache.key("other", request(temperature=0), "key_1")
    assert base != cache.key("m", request(temperature=0), "key_2")
    shared = ResponseCache(MemoryBackend(), 60, per_key=False)
    assert shared.key("m", request(temperature=0), "key_1") == shared.key(
        "m", request(temperature=0), "key_2"
    )


async def test_memory_backend_ttl_and_lru() -> None:
    backend = MemoryBackend(max_entries=2)
    await backend.set("a", b"1", ttl=60)
    await backend.set("b", b"2", ttl=60)
    assert await backend.get("a") == b"1"  # a is now most recent
    await backend.set("c", b"3", ttl=60)
    assert await backend.get("b") is None and len(backend) == 2
    await backend.set("short", b"x", ttl=0.01)
    await asyncio.sleep(0.03)
    assert await backend.get("short") is None


def _redis_url() -> str:
    return os.environ.get("TRELLIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
async def redis_backend() -> RedisBackend:
    backend = RedisBackend(_redis_url())
    backend.prefix = f"trellis:test:{uuid.uuid4().hex}:"
    try:
        await backend._client.ping()
    except OSError as exc:  # redis.ConnectionError subclasses OSError-compatible errors
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"Redis not reachable at {_redis_url()}: {exc}")
    yield backend  # type: ignore[misc]
    await backend.clear()
    await backend.aclose()


async def test_redis_backend_round_trip_and_expiry(redis_backend: RedisBackend) -> None:
    cache = ResponseCache(redis_backend, ttl_seconds=0.2)
    key = cache.key("m", request(temperature=0), None)
    assert await cache.get(key) is None
    await cache.put(key, response("from redis"))
    cached = await cache.get(key)
    assert cached is not None and cached.choices[0].message.content == "from redis"
    await asyncio.sleep(0.35)
    assert await cache.get(key) is None


async def test_a_nested_edit_is_what_a_hit_serves() -> None:
    """An answer edited after it arrived (a guard, a library user) is cached as edited,
    not as the upstream's kept bytes."""
    cache = ResponseCache(MemoryBackend(), 60)
    upstream = response("the upstream's words")
    raw = upstream.model_dump_json().encode()
    arrived = ChatResponse.model_validate_json(raw)
    arrived.keep_wire(raw)
    arrived.choices[0].message.content = "edited"
    await cache.put("k", arrived)
    hit = await cache.get("k")
    assert hit is not None and hit.choices[0].message.content == "edited"
