"""Provider adapters driven against the loopback FakeUpstream: real HTTP, real SSE.

Fixtures only: pytest runs in importlib mode, so test modules cannot import
each other; each keeps its own small helpers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from trellis.inference.providers import build_provider
from trellis.inference.providers.base import Provider
from trellis.settings import Deployment
from trellis.testing.fake_upstream import FakeUpstream

KEY_ENV = "TRELLIS_TEST_UPSTREAM_KEY"
KEY = "sk-test-upstream"


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """The API key every test deployment reads from its environment variable."""
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture
def make_upstream() -> Iterator[Callable[[str], FakeUpstream]]:
    """Start fake vendor APIs; all are stopped after the test."""
    started: list[FakeUpstream] = []

    def make(vendor: str) -> FakeUpstream:
        upstream = FakeUpstream(vendor).start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        upstream.stop()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Provider]]:
    """Build the provider adapter for a fake upstream (``connect(up, timeout=0.3)``)."""
    providers: list[Provider] = []

    def build(upstream: FakeUpstream, model: str = "m", **deployment: Any) -> Provider:
        deployment.setdefault("api_key_env", KEY_ENV)
        deployment.setdefault("provider", upstream.vendor)
        provider = build_provider(Deployment(model=model, base_url=upstream.base_url, **deployment))
        providers.append(provider)
        return provider

    yield build
    for provider in providers:
        await provider.aclose()
