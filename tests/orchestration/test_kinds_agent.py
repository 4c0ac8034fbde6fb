"""The ``agent`` step kind: a bounded loop of constrained-JSON tool calls (FakeUpstream).

Native tool calls are in test_kinds_agent_native.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from trellis.errors import ConfigurationError
from trellis.inference.gateway import Gateway
from trellis.inference.router import Router
from trellis.observe.tracing import Span
from trellis.orchestration import (
    AgentLimitError,
    Backoff,
    Context,
    Policy,
    RunStatus,
    Workflow,
    Workflows,
    agent,
    tool,
)
from trellis.orchestration.kinds.agent import final_schema, turn_schema
from trellis.settings import Deployment, ModelAlias, RetrySettings
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


SENT: list[str] = []


@tool(side_effect=True)
def send(to: str, text: str) -> str:
    """Send a message (a side effect: journaled)."""
    SENT.append(f"{to}:{text}")
    return f"sent #{len(SENT)}"


class Replies:
    def __init__(self, *texts: Any) -> None:
        self.texts = [t if isinstance(t, str) else json.dumps(t) for t in texts]
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> str:
        self.bodies.append(body)
        return self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]


class Task(BaseModel):
    question: str
    answer: Any = None


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai").start()
    yield server
    server.stop()


def make_gateway(upstream: FakeUpstream) -> Gateway:
    alias = ModelAlias(
        name="m",
        deployments=[
            Deployment(provider="openai-compatible", model="gpt-x", base_url=upstream.base_url)
        ],
    )
    return Gateway(Router([alias], retry=RetrySettings(attempts=1)))


def context(upstream: FakeUpstream, span: Span | None = None) -> Context:
    return Context(
        run_id="r",
        workflow="w",
        step="solve",
        seq=1,
        span=span,
        services={"gateway": make_gateway(upstream)},
    )


def step(**kwargs: Any) -> Any:
    defaults: dict[str, Any] = {
        "task": lambda s: s.question,
        "tools": [add],
        "into": "answer",
        "model": "m",
        # The fake is a hosted provider, where "auto" would pick native calls.
        "tool_calling": "json",
    }
    return agent("solve", **{**defaults, **kwargs})


async def test_a_tool_call_then_a_final_answer(upstream: FakeUpstream) -> None:
    replies = Replies({"tool": "add", "arguments": {"a": 2, "b": 3}}, {"final": "5"})
    upstream.reply = replies
    span = Span(name="solve", trace_id="t" * 32)
    outcome = await step().execute(context(upstream, span), Task(question="2+3?"))
    assert outcome.update == {"answer": "5"}
    assert outcome.output["iterations"] == 2
    assert outcome.output["turns"][0] == {
        "iteration": 1,
        "tool": "add",
        "arguments": {"a": 2, "b": 3},
        "result": "5",
        "ok": True,
    }
    # Every turn is constrained by the schema: a call of one allow-listed tool, or final.
    first, second = replies.bodies
    assert first["response_format"]["type"] == "json_schema"
    schema = first["response_format"]["json_schema"]["schema"]
    assert schema == turn_schema([add], None)
    assert schema["anyOf"][0]["properties"]["tool"]["enum"] == ["add"]
    assert set(schema["anyOf"][0]["properties"]["arguments"]["properties"]) == {"a", "b"}
    assert "$ref" not in json.dumps(schema)
    assert "add" in first["messages"][0]["content"]  # the system prompt describes the tool
    assert "Add two integers" in first["messages"][0]["content"]
    # The second call sees the call and its result.
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][3]["content"].startswith("Result of add: 5\n")
    assert outcome.usage.input_tokens > 0 and outcome.usage.output_tokens > 0
    assert [e["name"] for e in span.events] == ["tool_call", "final"]


async def test_the_iteration_bound_fails_the_step(upstream: FakeUpstream) -> None:
    upstream.reply = Replies({"tool": "add", "arguments": {"a": 1, "b": 1}})
    with pytest.raises(AgentLimitError) as caught:
        await step(max_iterations=3).execute(context(upstream), Task(question="loop"))
    assert len(upstream.requests) == 3
    assert caught.value.code == "agent_iteration_limit"
    turns = caught.value.transcript
    assert [t.get("tool") for t in turns] == ["add", "add", None]
    assert "no more tool calls" in turns[2]["error"]
    # The last call admits only a final answer, and says so.
    last = upstream.requests[2].json
    assert last["response_format"]["json_schema"]["schema"] == final_schema(None)
    assert "No more tool calls" in last["messages"][-1]["content"]


async def test_without_force_final_every_call_may_use_a_tool(upstream: FakeUpstream) -> None:
    upstream.reply = Replies({"tool": "add", "arguments": {"a": 1, "b": 1}})
    with pytest.raises(AgentLimitError) as caught:
        await step(max_iterations=3, force_final=False).execute(
            context(upstream), Task(question="loop")
        )
    assert [t["tool"] for t in caught.value.transcript] == ["add", "add", "add"]
    schemas = [r.json["response_format"]["json_schema"]["schema"] for r in upstream.requests]
    assert schemas == [turn_schema([add], None)] * 3


async def test_an_unknown_tool_is_refused_and_fed_back(upstream: FakeUpstream) -> None:
    replies = Replies(
        {"tool": "rm", "arguments": {"path": "/"}},
        {"tool": "add", "arguments": {"a": "x", "b": 1}},
        "not json",
        {"final": "done"},
    )
    upstream.reply = replies
    outcome = await step().execute(context(upstream), Task(question="?"))
    assert outcome.update == {"answer": "done"}
    turns = outcome.output["turns"]
    assert "unknown tool 'rm'; the tools are: add" in turns[0]["error"]
    assert "invalid arguments for add: a:" in turns[1]["error"]
    assert turns[2]["error"].startswith("not JSON")
    assert "unknown tool 'rm'" in replies.bodies[1]["messages"][-1]["content"]


async def test_a_typed_final_answer_is_validated(upstream: FakeUpstream) -> None:
    class Sum(BaseModel):
        total: int

    upstream.reply = Replies({"final": {"total": "many"}}, {"final": {"total": 7}})
    outcome = await step(output=Sum).execute(context(upstream), Task(question="?"))
    assert outcome.update == {"answer": Sum(total=7)}
    assert "total" in outcome.output["turns"][0]["error"]


async def test_a_tool_error_goes_back_to_the_model(upstream: FakeUpstream) -> None:
    @tool
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        return a / b

    upstream.reply = Replies(
        {"tool": "divide", "arguments": {"a": 1, "b": 0}}, {"final": "cannot divide by zero"}
    )
    outcome = await step(tools=[divide]).execute(context(upstream), Task(question="1/0"))
    assert outcome.output["turns"][0]["ok"] is False
    assert "ZeroDivisionError" in outcome.output["turns"][0]["result"]


def test_only_tools_and_a_positive_bound() -> None:
    with pytest.raises(ConfigurationError):
        agent("a", task=lambda s: "x", tools=[lambda: 1], into="x")  # type: ignore[list-item]
    with pytest.raises(ConfigurationError):
        agent("a", task=lambda s: "x", tools=[add], into="x", max_iterations=0)
    with pytest.raises(ConfigurationError):
        agent("a", task=lambda s: "x", tools=[add, add], into="x")


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}")
    await db.connect()
    yield db
    await db.close()


async def test_side_effects_are_journaled_per_call_and_not_repeated_on_retry(
    upstream: FakeUpstream, database: Database
) -> None:
    """Two sends in one loop are two effects; a retried step (the first attempt ran out
    of iterations after them) replays them from the journal instead of sending again."""
    SENT.clear()
    calls = [
        {"tool": "send", "arguments": {"to": "ann", "text": "hi"}},
        {"tool": "send", "arguments": {"to": "bob", "text": "hi"}},
    ]
    upstream.reply = Replies(*calls, "oops", *calls, {"final": "both sent"})
    flow = Workflow("agent-effects", state=Task, output=lambda s: s.answer)
    flow.add(step(tools=[send], max_iterations=3, policy=Policy(attempts=2, backoff=Backoff(0, 0))))
    async with Workflows(database, services={"gateway": make_gateway(upstream)}) as workflows:
        run = await workflows.run(flow, {"question": "greet ann and bob"})
        steps = await workflows.store.steps(run.id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == "both sent"
    assert SENT == ["ann:hi", "bob:hi"]  # not four
    assert steps[0].kind == "agent" and steps[0].attempts == 2
    assert steps[0].output["turns"][1]["result"] == '"sent #2"'


async def test_a_retry_that_changes_a_journaled_call_fails_instead_of_sending_again(
    upstream: FakeUpstream, database: Database
) -> None:
    """The effect at position 1 was sent to ann; a retry that wants bob there instead is a
    conflict, not a second effect (the journal's ConflictError ends the attempt)."""
    SENT.clear()
    upstream.reply = Replies(
        {"tool": "send", "arguments": {"to": "ann", "text": "hi"}},
        "oops",
        {"tool": "send", "arguments": {"to": "bob", "text": "hi"}},
    )
    flow = Workflow("agent-conflict", state=Task, output=lambda s: s.answer)
    flow.add(step(tools=[send], max_iterations=2, policy=Policy(attempts=2, backoff=Backoff(0, 0))))
    async with Workflows(database, services={"gateway": make_gateway(upstream)}) as workflows:
        run = await workflows.run(flow, {"question": "greet someone"})
    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error["type"] == "ConflictError"
    assert SENT == ["ann:hi"]
