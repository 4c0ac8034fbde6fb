"""A run's LLM steps go through the limiter as the key that started the run: its spend
counts against the key's budget, and a spent budget stops the next run's model call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from trellis.access.keys import KeyStore
from trellis.access.limits import Limiter, LimitStore, MemoryBackend
from trellis.orchestration import RunStatus, Workflows
from trellis.settings import LimitSettings, LimitValues
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.sinks import ListSink

from .test_run_bookkeeping import make_gateway, two_llm_steps


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai").start()
    yield server
    server.stop()


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}")
    await db.connect()
    yield db
    await db.close()


async def test_a_runs_llm_steps_spend_the_starting_keys_budget(
    upstream: FakeUpstream, database: Database
) -> None:
    upstream.reply = '{"name": "Ada", "age": 36}'
    keys = KeyStore(database)
    key, _ = await keys.create("runner")
    limiter = Limiter(LimitStore(database), MemoryBackend(), LimitSettings())
    await limiter.store.put(f"key:{key.id}", LimitValues(rpm=100))
    sink = ListSink()
    gateway = make_gateway(upstream, sink)
    gateway.limiter = limiter
    flow = two_llm_steps()
    async with Workflows(database, services={"gateway": gateway, "keys": keys}) as wf:
        first = await wf.run(flow, {"question": "Ada, 36"}, key_id=key.id)
        assert first.status == RunStatus.SUCCEEDED, first.error
        usage = await limiter.usage(f"key:{key.id}")
        assert usage["daily"]["spent_usd"] == pytest.approx(first.cost, abs=1e-6)
        assert usage["requests"]["remaining"] == 98  # the run's two model calls
        # A daily budget the first run has already spent stops the next run's first call.
        spent = usage["daily"]["spent_usd"]
        await limiter.store.put(f"key:{key.id}", LimitValues(daily_usd=spent, rpm=100))
        second = await wf.run(flow, {"question": "Ada, 36"}, key_id=key.id)
    assert second.status == RunStatus.FAILED
    assert second.error is not None and second.error["type"] == "BudgetExceededError"
    assert f"API key '{key.id}' daily budget of $" in second.error["message"]
    assert second.error["step"] == "extract"
    # A run without a key is not limited (library use).
    assert await limiter.admit(None, None, lambda: 1) is None
