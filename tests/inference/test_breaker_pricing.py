"""Circuit-breaker state machine and cost arithmetic."""

from __future__ import annotations

import pytest

from trellis.inference.breaker import BreakerState, CircuitBreaker
from trellis.inference.pricing import PriceBook
from trellis.schema import Usage
from trellis.settings import Deployment, Prices


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_lifecycle() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after=10, clock=clock)
    assert breaker.allow()
    assert not breaker.record_failure() and not breaker.record_failure()
    breaker.record_success()  # resets the consecutive count
    assert not breaker.record_failure() and not breaker.record_failure()
    assert breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now = 10
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    assert breaker.record_failure()  # the probe failed: open again
    assert breaker.state is BreakerState.OPEN
    clock.now = 20
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_caller_errors_release_the_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after=1, clock=clock)
    breaker.record_failure()
    clock.now = 2
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()


def dep(model: str, prices: Prices | None = None) -> Deployment:
    return Deployment(provider="openai", model=model, prices=prices)


def test_builtin_prices_with_snapshots_and_cached_tokens() -> None:
    book = PriceBook()
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert book.cost(dep("gpt-4o-mini"), usage).total == pytest.approx(0.75)
    assert book.cost(dep("gpt-4o-mini-2024-07-18"), usage).total == pytest.approx(0.75)
    assert book.cost(dep("gpt-4o"), usage).total == pytest.approx(12.5)
    cached = Usage(prompt_tokens=1_000_000, prompt_tokens_details={"cached_tokens": 500_000})
    assert book.cost(dep("gpt-4o-mini"), cached).total == pytest.approx(0.5 * 0.15 + 0.5 * 0.075)
    unknown = book.cost(dep("mystery-model"), usage)
    assert unknown.total == 0 and not unknown.priced


def test_price_overrides() -> None:
    usage = Usage(prompt_tokens=2_000_000, completion_tokens=0)
    book = PriceBook({"mystery-model": Prices(input=1.0, output=2.0)})
    assert book.cost(dep("mystery-model"), usage).total == pytest.approx(2.0)
    own = dep("gpt-4o", Prices(input=0.5, output=0.5))
    assert book.cost(own, usage).total == pytest.approx(1.0)
