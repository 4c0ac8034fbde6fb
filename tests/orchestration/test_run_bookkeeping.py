"""A run's model calls in the gateway's books: the cost each step records is what its
calls' traces record (repairs included) and the run's cost adds them up; the calls go out
as the API key that started the run, also after a recovery in another ``Workflows``; a
run in a session sees the session's earlier turns and adds its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from trellis.access.keys import KeyStore
from trellis.errors import InvalidRequestError, UnsupportedFeatureError
from trellis.inference.cache import MemoryBackend, ResponseCache
from trellis.inference.conversation import SessionKey
from trellis.inference.gateway import Gateway
from trellis.inference.router import Router
from trellis.memory.sessions import SessionMemory
from trellis.orchestration import RunStatus, Workflow, Workflows, agent, llm, parallel
from trellis.orchestration.builtin import cascade
from trellis.settings import Deployment, ModelAlias, Prices, RetrySettings
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.sinks import ListSink

PRICES = Prices(input=3.0, output=12.0)


class Person(BaseModel):
    name: str
    age: int


class Ask(BaseModel):
    question: str
    person: Person | None = None
    summary: str | None = None


class Replies:
    """The fake's reply function: the given texts in order, the last one repeated."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> str:
        self.bodies.append(body)
        return self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]


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


def make_gateway(upstream: FakeUpstream, sink: ListSink) -> Gateway:
    aliases = [
        ModelAlias(
            name=name,
            deployments=[
                Deployment(
                    provider="openai-compatible",
                    model=f"gpt-{name}",
                    base_url=upstream.base_url,
                    prices=PRICES,
                )
            ],
        )
        for name in ("priced", "cheap", "strong")
    ]
    return Gateway(Router(aliases, retry=RetrySettings(attempts=1)), sink=sink)


def two_llm_steps() -> Workflow[Ask]:
    flow = Workflow("two-llm", state=Ask, output=lambda s: s.summary)
    flow.add(
        llm(
            "extract",
            model="priced",
            messages=lambda s: s.question,
            output=Person,
            into="person",
            repair=2,
        )
    )
    flow.add(
        llm(
            "summarize",
            model="priced",
            messages=lambda s: f"Summarize {s.person}",
            into="summary",
            session=True,
        )
    )
    return flow


def trace_costs(sink: ListSink) -> dict[str, float]:
    return {t.trace_id: t.summary["cost"] for t in sink.traces if t.kind == "chat"}


async def test_step_cost_is_the_traces_cost_summed_over_repairs_and_the_run_adds_up(
    upstream: FakeUpstream, database: Database
) -> None:
    upstream.reply = Replies("not json", '{"name": "Ada", "age": 36}', "Ada is 36.")
    sink = ListSink()
    async with Workflows(database, services={"gateway": make_gateway(upstream, sink)}) as wf:
        run = await wf.run(two_llm_steps(), {"question": "Ada, 36"})
        steps = await wf.steps(run.id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    costs = trace_costs(sink)
    assert len(costs) == 3 and all(cost > 0 for cost in costs.values())
    extract, summarize = steps
    ids = extract.attributes["trellis.llm.trace_ids"]  # type: ignore[index]
    assert len(ids) == 2  # one repair
    assert extract.cost == pytest.approx(sum(costs[i] for i in ids))
    (summary_id,) = summarize.attributes["trellis.llm.trace_ids"]  # type: ignore[index]
    assert summarize.cost == pytest.approx(costs[summary_id])
    assert run.cost == pytest.approx(sum(costs.values()))
    assert run.cost == pytest.approx(extract.cost + summarize.cost)  # type: ignore[operator]


async def test_agent_steps_record_the_cost_of_every_iteration(
    upstream: FakeUpstream, database: Database
) -> None:
    upstream.reply = Replies("no json here", '{"final": "done"}')
    sink = ListSink()
    flow = Workflow("agent-cost", state=Ask, output=lambda s: s.summary)
    flow.add(agent("act", task=lambda s: s.question, tools=[], into="summary", model="priced"))
    async with Workflows(database, services={"gateway": make_gateway(upstream, sink)}) as wf:
        run = await wf.run(flow, {"question": "Finish."})
        (step,) = await wf.steps(run.id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    costs = trace_costs(sink)
    assert len(costs) == 2
    assert step.cost == pytest.approx(sum(costs.values())) and step.cost > 0
    assert run.cost == pytest.approx(step.cost)


async def test_cascade_savings_use_the_costs_the_gateway_recorded(
    upstream: FakeUpstream, database: Database
) -> None:
    upstream.reply = "Blue is a colour."
    sink = ListSink()
    services = {"gateway": make_gateway(upstream, sink)}
    async with Workflows(database, services=services) as wf:
        run = await wf.run(
            cascade.workflow,
            {"prompt": "Name a colour.", "cheap_model": "cheap", "strong_model": "strong"},
        )
    (cheap_call,) = trace_costs(sink).values()
    saved = run.output["savings"]
    assert saved["cheap_cost"] == pytest.approx(cheap_call) and cheap_call > 0
    assert run.cost == pytest.approx(cheap_call)


# --- the run's key -------------------------------------------------------------------------


async def test_a_runs_calls_carry_the_key_that_started_it_also_after_recovery(
    upstream: FakeUpstream, database: Database
) -> None:
    upstream.reply = Replies('{"name": "Ada", "age": 36}', "Ada is 36.")
    keys = KeyStore(database)
    key, _ = await keys.create("starter")
    gate = asyncio.Event()
    entered = asyncio.Event()

    def flow() -> Workflow[Ask]:
        built = Workflow("recovered", state=Ask, output=lambda s: s.summary)

        @built.step
        async def wait_a_moment(s: Ask) -> None:
            entered.set()
            await gate.wait()

        for step in two_llm_steps().steps.values():
            built.add(step)
        return built

    first_sink, second_sink = ListSink(), ListSink()
    first = Workflows(
        database, services={"gateway": make_gateway(upstream, first_sink), "keys": keys}
    )
    run_id = await first.start(flow(), {"question": "Ada, 36"}, key_id=key.id)
    await entered.wait()
    await first.aclose()  # the process goes away mid-step; its lease is given up
    gate.set()
    # Another process (its own gateway, key store and flows) continues the run.
    services = {"gateway": make_gateway(upstream, second_sink), "keys": KeyStore(database)}
    async with Workflows(database, services=services, flows=[flow()]) as second:
        assert await second.recover() == [run_id]
        run = await second.wait(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.key_id == key.id and first_sink.traces == []
    chats = [t for t in second_sink.traces if t.kind == "chat"]
    assert len(chats) == 2
    assert {t.summary["key_id"] for t in chats} == {key.id}


async def test_a_revoked_key_stops_its_runs(upstream: FakeUpstream, database: Database) -> None:
    upstream.reply = "unused"
    keys = KeyStore(database)
    key, _ = await keys.create("gone")
    await keys.revoke(key.id)
    sink = ListSink()
    services = {"gateway": make_gateway(upstream, sink), "keys": keys}
    async with Workflows(database, services=services) as wf:
        run = await wf.run(two_llm_steps(), {"question": "Ada, 36"}, key_id=key.id)
    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error["type"] == "RunKeyRevoked"
    assert sink.traces == []  # no model call went out on its behalf


# --- sessions ------------------------------------------------------------------------------


async def test_runs_in_one_session_see_the_earlier_turns_per_key(
    upstream: FakeUpstream, database: Database
) -> None:
    replies = Replies('{"name": "Ada", "age": 36}', "Ada is 36 years old.")
    upstream.reply = replies
    gateway = make_gateway(upstream, ListSink())
    sessions = SessionMemory(database)
    gateway.sessions = sessions
    keys = KeyStore(database)
    mine, _ = await keys.create("mine")
    other, _ = await keys.create("other")
    flow = two_llm_steps()
    async with Workflows(database, services={"gateway": gateway, "keys": keys}) as wf:
        first = await wf.run(flow, {"question": "Ada, 36"}, key_id=mine.id, session_id="s1")
        assert first.session_id == "s1" and first.status == RunStatus.SUCCEEDED
        replies.texts = ['{"name": "Bob", "age": 7}', "Bob is 7."]
        await wf.run(flow, {"question": "Bob, 7"}, key_id=mine.id, session_id="s1")
        replies.texts = ['{"name": "Cy", "age": 9}', "Cy is 9."]
        await wf.run(flow, {"question": "Cy, 9"}, key_id=other.id, session_id="s1")
        for invalid in ("not valid!", "s1\n", "", "x" * 201):
            with pytest.raises(InvalidRequestError):
                await wf.start(flow, {"question": "x"}, session_id=invalid)
    bodies = replies.bodies
    # Per run: extract (no session), summarize (session=True).
    first_summary, second_extract, second_summary, other_summary = (
        bodies[1],
        bodies[2],
        bodies[3],
        bodies[5],
    )
    contents = lambda body: [m["content"] for m in body["messages"]]  # noqa: E731
    assert "Ada, 36" not in contents(first_summary)
    assert "Ada, 36" not in contents(second_extract)  # the step did not opt in
    assert contents(second_summary)[:2] == ["Ada, 36", "Ada is 36 years old."]
    assert "Ada, 36" not in contents(other_summary)  # another key's namespace
    # The session holds one turn per run, not the steps' own exchanges.
    stored = await sessions.messages(SessionKey(mine.id, "s1"))
    assert stored is not None
    turns = ["Ada, 36", "Ada is 36 years old.", "Bob, 7", "Bob is 7."]
    assert [m.content for m in stored[1]] == turns


async def test_a_session_needs_a_session_store(upstream: FakeUpstream, database: Database) -> None:
    services = {"gateway": make_gateway(upstream, ListSink())}
    async with Workflows(database, services=services) as wf:
        with pytest.raises(UnsupportedFeatureError):
            await wf.start(two_llm_steps(), {"question": "x"}, session_id="s1")


async def test_a_parallel_branch_reads_the_session_too(
    upstream: FakeUpstream, database: Database
) -> None:
    replies = Replies("First answer.")
    upstream.reply = replies
    gateway = make_gateway(upstream, ListSink())
    gateway.sessions = SessionMemory(database)

    def session_flow(name: str, *, branched: bool) -> Workflow[Ask]:
        flow = Workflow(name, state=Ask, output=lambda s: s.summary)
        step = llm(
            "say", model="priced", messages=lambda s: s.question, into="summary", session=True
        )
        flow.add(parallel("both", {"say": step}) if branched else step)
        return flow

    async with Workflows(database, services={"gateway": gateway}) as wf:
        await wf.run(session_flow("plain", branched=False), {"question": "Hi."}, session_id="p")
        await wf.run(
            session_flow("branched", branched=True), {"question": "Again."}, session_id="p"
        )
    assert [m["content"] for m in replies.bodies[1]["messages"]] == [
        "Hi.",
        "First answer.",
        "Again.",
    ]


async def test_a_cascade_answered_from_the_cache_spent_nothing(
    upstream: FakeUpstream, database: Database
) -> None:
    upstream.reply = "Blue is a colour."
    sink = ListSink()
    gateway = make_gateway(upstream, sink)
    gateway.cache = ResponseCache(MemoryBackend(), ttl_seconds=60)
    for alias in gateway.router.aliases.values():
        alias.cache = True
    cascade_input = {"prompt": "Name a colour.", "cheap_model": "cheap", "strong_model": "strong"}
    async with Workflows(database, services={"gateway": gateway}) as wf:
        paid = await wf.run(cascade.workflow, cascade_input)
        cached = await wf.run(cascade.workflow, cascade_input)
    assert paid.output["savings"]["cheap_cost"] > 0
    assert [t.summary["cache_hit"] for t in sink.traces if t.kind == "chat"] == [False, True]
    saved = cached.output["savings"]
    assert saved["cheap_cost"] == 0 and cached.cost == 0
    assert saved["cost_saved"] == pytest.approx(saved["strong_cost_estimate"])
