"""The limiter on both backends: the same behaviour in process and in Redis (Lua)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from trellis.access.limits import (
    BudgetExceededError,
    Limiter,
    LimitStore,
    MemoryBackend,
    RateLimitExceededError,
    format_reset,
    parse_subject,
)
from trellis.errors import InvalidRequestError
from trellis.settings import LimitSettings, LimitValues
from trellis.store import Database


def _redis_url() -> str:
    return os.environ.get("TRELLIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


async def _redis_backend() -> Any:
    from trellis.access.limits_redis import RedisBackend

    backend = RedisBackend(_redis_url(), prefix=f"trellis:test:limits:{uuid.uuid4().hex}:")
    try:
        await backend._client.ping()
    except Exception as exc:
        await backend.aclose()
        if os.environ.get("CI", "").lower() in ("true", "1"):
            raise
        pytest.skip(f"Redis not reachable at {_redis_url()}: {exc}")
    return backend


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    backend = await _redis_backend()
    try:
        yield backend
    finally:
        await backend.clear()
        await backend.aclose()


@pytest.fixture
async def limiter(db: Database, backend: Any) -> AsyncIterator[Limiter]:
    alerts: list[dict[str, Any]] = []
    limiter = Limiter(LimitStore(db), backend, LimitSettings(), alert=alerts.append)
    limiter.sent = alerts  # type: ignore[attr-defined]
    yield limiter


def _tokens(n: int) -> Any:
    return lambda: n


async def test_requests_per_minute_admit_exactly_n_then_refuse_with_openai_headers(
    limiter: Limiter,
) -> None:
    await limiter.store.put("key:k1", LimitValues(rpm=3))
    admitted = [await limiter.admit("k1", "default", _tokens(10)) for _ in range(3)]
    assert all(a is not None for a in admitted)
    headers = dict(admitted[-1].headers)  # type: ignore[union-attr]
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    with pytest.raises(RateLimitExceededError) as refused:
        await limiter.admit("k1", "default", _tokens(10))
    error = refused.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert "API key 'k1'" in error.message and "requests per minute" in error.message
    # One request refills in 20 s (3 per minute): Retry-After says so.
    assert 19 <= int(error.headers["retry-after"]) <= 20
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    # A refusal takes nothing: another key is unaffected, and so is the project.
    assert await limiter.admit("k2", "default", _tokens(10)) is None


async def test_concurrent_admissions_admit_exactly_n(limiter: Limiter) -> None:
    await limiter.store.put("key:k1", LimitValues(rpm=5))

    async def one() -> bool:
        try:
            await limiter.admit("k1", "default", _tokens(1))
        except RateLimitExceededError:
            return False
        return True

    results = await asyncio.gather(*(one() for _ in range(20)))
    assert sum(results) == 5


async def test_key_and_project_are_checked_together_and_atomically(limiter: Limiter) -> None:
    """The project's limit refuses the call; the key's bucket must then be untouched."""
    await limiter.store.put("key:a", LimitValues(rpm=10))
    await limiter.store.put("project:p", LimitValues(rpm=2))
    await limiter.admit("a", "p", _tokens(1))
    await limiter.admit("b", "p", _tokens(1))
    with pytest.raises(RateLimitExceededError) as refused:
        await limiter.admit("a", "p", _tokens(1))
    assert "project 'p'" in refused.value.message
    usage = await limiter.usage("key:a")
    assert usage["requests"]["remaining"] == 9  # only the admitted call counted
    # The tighter subject is the one the headers show.
    assert refused.value.headers["x-ratelimit-limit-requests"] == "2"


async def test_tokens_estimated_then_reconciled(limiter: Limiter) -> None:
    await limiter.store.put("key:k", LimitValues(tpm=1000))
    first = await limiter.admit("k", "default", _tokens(600))
    assert first is not None and first.tokens == 600
    assert dict(first.headers)["x-ratelimit-remaining-tokens"] == "400"
    # The estimate does not fit what is left: refused, with the wait for the missing tokens.
    with pytest.raises(RateLimitExceededError) as refused:
        await limiter.admit("k", "default", _tokens(600))
    assert "tokens per minute" in refused.value.message
    assert 12 <= int(refused.value.headers["retry-after"]) <= 13
    # The call used 100 tokens, not 600: the difference is refunded and the next fits.
    await limiter.settle(first, 100, 0.0)
    second = await limiter.admit("k", "default", _tokens(600))
    assert second is not None
    # A call that used more than estimated puts the bucket into debt.
    await limiter.settle(second, 1500, 0.0)
    usage = await limiter.usage("key:k")
    assert usage["tokens"]["remaining"] == 0
    with pytest.raises(RateLimitExceededError):
        await limiter.admit("k", "default", _tokens(1))


async def test_a_request_larger_than_the_tpm_limit_waits_for_a_full_bucket(
    limiter: Limiter,
) -> None:
    await limiter.store.put("key:k", LimitValues(tpm=100))
    assert await limiter.admit("k", "default", _tokens(500)) is not None
    with pytest.raises(RateLimitExceededError):
        await limiter.admit("k", "default", _tokens(500))


async def test_concurrency_slot_is_held_until_settled(limiter: Limiter) -> None:
    await limiter.store.put("key:k", LimitValues(max_concurrent=1))
    held = await limiter.admit("k", "default", _tokens(1))
    with pytest.raises(RateLimitExceededError) as refused:
        await limiter.admit("k", "default", _tokens(1))
    assert "concurrent requests" in refused.value.message
    assert (await limiter.usage("key:k"))["concurrent"]["in_flight"] == 1
    await limiter.settle(held, 0, 0.0)
    await limiter.settle(held, 0, 0.0)  # settling twice releases nothing more
    again = await limiter.admit("k", "default", _tokens(1))
    assert again is not None
    await limiter.settle(again, 0, 0.0)
    assert (await limiter.usage("key:k"))["concurrent"]["in_flight"] == 0


async def test_an_expired_lease_frees_its_slot(db: Database, backend: Any) -> None:
    """A replica that crashed never settles: its slot frees when the lease runs out."""
    limiter = Limiter(LimitStore(db), backend, LimitSettings(lease_seconds=0.2))
    await limiter.store.put("key:k", LimitValues(max_concurrent=1))
    await limiter.admit("k", "default", _tokens(1))  # never settled
    with pytest.raises(RateLimitExceededError):
        await limiter.admit("k", "default", _tokens(1))
    await asyncio.sleep(0.35)
    assert await limiter.admit("k", "default", _tokens(1)) is not None


async def test_budget_spent_is_refused_naming_the_budget(limiter: Limiter) -> None:
    await limiter.store.put("project:default", LimitValues(daily_usd=5.0))
    admission = await limiter.admit("k", "default", _tokens(1))
    await limiter.settle(admission, 10, 5.25)  # the call in flight may overshoot
    with pytest.raises(BudgetExceededError) as refused:
        await limiter.admit("k", "default", _tokens(1))
    error = refused.value
    assert error.status_code == 429 and error.code == "budget_exceeded"
    assert "project 'default' daily budget of $5.00 is spent" in error.message
    assert int(error.headers["retry-after"]) >= 1
    usage = await limiter.usage("project:default")
    assert usage["daily"]["spent_usd"] == pytest.approx(5.25)
    assert usage["monthly"]["spent_usd"] == pytest.approx(5.25)
    assert usage["daily"]["remaining_usd"] == 0


async def test_monthly_budget(limiter: Limiter) -> None:
    await limiter.store.put("key:k", LimitValues(monthly_usd=1.0))
    admission = await limiter.admit("k", "default", _tokens(1))
    await limiter.settle(admission, 10, 1.0)
    with pytest.raises(BudgetExceededError) as refused:
        await limiter.admit("k", "default", _tokens(1))
    assert "API key 'k' monthly budget of $1.00" in refused.value.message


async def test_threshold_alert_sent_once_per_threshold(limiter: Limiter) -> None:
    await limiter.store.put("key:k", LimitValues(daily_usd=1.0, alert_thresholds=[0.5, 0.8]))
    sent: list[dict[str, Any]] = limiter.sent  # type: ignore[attr-defined]
    for cost in (0.3, 0.3, 0.1, 0.15, 0.1):  # 0.3, 0.6 (50%), 0.7, 0.85 (80%), 0.95
        admission = await limiter.admit("k", "default", _tokens(1))
        await limiter.settle(admission, 1, cost)
    assert [(a["budget"], a["fraction"]) for a in sent] == [("daily", 0.5), ("daily", 0.8)]
    assert sent[1]["subject"] == "key:k" and sent[1]["rule"]["kind"] == "budget"
    assert "daily budget of $1.00 (80% reached)" in sent[1]["message"]
    # The claim is in the backend: another replica on it cannot claim the alert again.
    day = sent[1]["period"]
    assert not await limiter.backend.claim_alert(f"alert:key:k:daily:{day}:0.8", 60)
    assert await limiter.backend.claim_alert(f"alert:key:k:daily:{day}:0.9", 60)


async def test_cached_answers_refund_tokens_and_cost_nothing(limiter: Limiter) -> None:
    await limiter.store.put("key:k", LimitValues(rpm=10, tpm=1000, daily_usd=1))
    admission = await limiter.admit("k", "default", _tokens(300))
    await limiter.settle(admission, 0, 0.0)
    usage = await limiter.usage("key:k")
    assert usage["requests"]["remaining"] == 9
    assert usage["tokens"]["remaining"] >= 999
    assert usage["daily"]["spent_usd"] == 0


async def test_defaults_apply_without_a_stored_row_and_a_row_replaces_them(
    db: Database, backend: Any
) -> None:
    settings = LimitSettings(default_key=LimitValues(rpm=1), default_project=LimitValues(rpm=50))
    limiter = Limiter(LimitStore(db, cache_seconds=0), backend, settings)
    assert await limiter.admit("k", "default", _tokens(1)) is not None
    with pytest.raises(RateLimitExceededError):
        await limiter.admit("k", "default", _tokens(1))
    await limiter.store.put("key:k", LimitValues())  # no limits for this key
    assert await limiter.admit("k", "default", _tokens(1)) is not None
    usage = await limiter.usage("key:k")
    assert usage["source"] == "stored" and usage["requests"] is None


async def test_disabled_limits_admit_everything(db: Database, backend: Any) -> None:
    limiter = Limiter(LimitStore(db), backend, LimitSettings(enabled=False))
    await limiter.store.put("key:k", LimitValues(rpm=1))
    for _ in range(3):
        assert await limiter.admit("k", "default", _tokens(1)) is None


async def test_store_round_trip_and_subject_validation(db: Database) -> None:
    store = LimitStore(db)
    values = LimitValues(rpm=5, tpm=100, max_concurrent=2, daily_usd=1.5, monthly_usd=20)
    await store.put("project:team-a", values)
    assert await store.get("project:team-a") == values
    await store.put("project:team-a", LimitValues(rpm=7))
    assert (await store.get("project:team-a")).rpm == 7  # type: ignore[union-attr]
    assert [s for s, _ in await store.list()] == ["project:team-a"]
    assert await store.delete("project:team-a")
    assert not await store.delete("project:team-a")
    for bad in ("team-a", "user:x", "key:", "key:a b", "project:" + "x" * 129):
        with pytest.raises(InvalidRequestError):
            parse_subject(bad)


def test_reset_format_follows_openai() -> None:
    assert format_reset(0.012) == "12ms"
    assert format_reset(1) == "1s"
    assert format_reset(1.5) == "1.5s"
    assert format_reset(360) == "6m0s"
    assert format_reset(3725) == "1h2m5s"


def test_limit_values_validation() -> None:
    with pytest.raises(ValueError):
        LimitValues(rpm=0)
    with pytest.raises(ValueError):
        LimitValues(alert_thresholds=[1.5])
    assert LimitValues(alert_thresholds=[1.0, 0.8, 0.8]).alert_thresholds == [0.8, 1.0]
    assert LimitValues().empty and not LimitValues(daily_usd=0).empty


async def test_a_backend_that_fails_lets_calls_through_and_counts_it(db: Database) -> None:
    from trellis.access.limits_redis import RedisBackend

    backend = RedisBackend("redis://127.0.0.1:1/0")  # nothing listens there
    limiter = Limiter(LimitStore(db), backend, LimitSettings(backend="redis"))
    await limiter.store.put("key:k", LimitValues(rpm=1))
    try:
        assert await limiter.admit("k", "default", _tokens(1)) is None
        assert await limiter.admit("k", "default", _tokens(1)) is None
        assert limiter.backend_errors == 2
    finally:
        await backend.aclose()
