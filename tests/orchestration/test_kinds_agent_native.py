"""The ``agent`` step kind with native tool calls: OpenAI ``tools`` out, ``tool_calls`` back,
``tool`` messages with the results, against a loopback OpenAI-compatible fake."""

from __future__ import annotations

import asyncio
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
from trellis.orchestration.kinds.agent import native_tool_calling, tool_definition
from trellis.settings import Deployment, ModelAlias, RetrySettings
from trellis.store import Database
from trellis.testing.fake_upstream import FakeUpstream, ToolCallReply

ADDED: list[tuple[int, int]] = []


@tool
async def add(a: int, b: int) -> int:
    """Add two integers."""
    ADDED.append((a, b))
    await asyncio.sleep(0.05)
    return a + b


REMOVED: list[str] = []


@tool
def rm(path: str) -> str:
    """Remove a file (a real tool, but not on this step's allow-list)."""
    REMOVED.append(path)
    return "removed"


SENT: list[str] = []


@tool(side_effect=True)
def send(to: str, text: str) -> str:
    """Send a message (a side effect: journaled)."""
    SENT.append(f"{to}:{text}")
    return f"sent #{len(SENT)}"


Turn = str | list[ToolCallReply]


class Script:
    """The fake model's answers in order (the last one repeats); keeps the request bodies."""

    def __init__(self, *turns: Turn) -> None:
        self.turns = list(turns)
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> Turn:
        self.bodies.append(body)
        return self.turns.pop(0) if len(self.turns) > 1 else self.turns[0]


def call(name: str, arguments: dict[str, Any] | str) -> ToolCallReply:
    return ToolCallReply(name, arguments)


class Task(BaseModel):
    question: str
    answer: Any = None


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    ADDED.clear()
    REMOVED.clear()
    server = FakeUpstream(vendor="openai").start()
    yield server
    server.stop()


def make_gateway(upstream: FakeUpstream, *more: ModelAlias) -> Gateway:
    alias = ModelAlias(
        name="m",
        deployments=[
            Deployment(provider="openai-compatible", model="gpt-x", base_url=upstream.base_url)
        ],
    )
    return Gateway(Router([alias, *more], retry=RetrySettings(attempts=1)))


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
    }
    return agent("solve", **{**defaults, **kwargs})


def roles(body: dict[str, Any]) -> list[str]:
    return [m["role"] for m in body["messages"]]


async def test_a_tool_call_round_trip(upstream: FakeUpstream) -> None:
    script = Script([call("add", {"a": 2, "b": 3})], "The sum is 5.")
    upstream.reply = script
    span = Span(name="solve", trace_id="t" * 32)
    outcome = await step().execute(context(upstream, span), Task(question="2+3?"))
    assert outcome.update == {"answer": "The sum is 5."}
    assert outcome.output["tool_calling"] == "native" and outcome.output["iterations"] == 2
    assert ADDED == [(2, 3)]
    first, second = script.bodies
    # "auto" on a hosted provider: the tools as OpenAI definitions, no response_format.
    assert first["tools"] == [tool_definition(add)]
    assert first["tools"][0]["function"]["description"] == "Add two integers."
    assert set(first["tools"][0]["function"]["parameters"]["properties"]) == {"a", "b"}
    assert first["tool_choice"] == "auto" and "response_format" not in first
    assert roles(first) == ["user"]
    # The result goes back as a tool message answering the call's id.
    assert roles(second) == ["user", "assistant", "tool"]
    (made,) = second["messages"][1]["tool_calls"]
    assert made["function"]["name"] == "add"
    assert second["messages"][2] == {"role": "tool", "tool_call_id": made["id"], "content": "5"}
    assert outcome.output["turns"][0] == {
        "iteration": 1,
        "tool": "add",
        "call_id": made["id"],
        "arguments": {"a": 2, "b": 3},
        "result": "5",
        "ok": True,
    }
    assert span.attributes["trellis.agent.tool_calling"] == "native"
    assert [e["name"] for e in span.events] == ["tool_call", "final"]
    assert outcome.usage.input_tokens > 0 and outcome.usage.output_tokens > 0


async def test_two_tool_calls_in_one_message_run_at_once(upstream: FakeUpstream) -> None:
    script = Script([call("add", {"a": 1, "b": 2}), call("add", {"a": 3, "b": 4})], "3 and 7")
    upstream.reply = script
    started = asyncio.get_running_loop().time()
    outcome = await step().execute(context(upstream), Task(question="1+2, 3+4?"))
    elapsed = asyncio.get_running_loop().time() - started
    assert outcome.update == {"answer": "3 and 7"}
    assert sorted(ADDED) == [(1, 2), (3, 4)]
    second = script.bodies[1]
    assert roles(second) == ["user", "assistant", "tool", "tool"]
    ids = [c["id"] for c in second["messages"][1]["tool_calls"]]
    assert len(set(ids)) == 2
    # One tool message per call, in the message's order, each answering its own id.
    assert [(m["tool_call_id"], m["content"]) for m in second["messages"][2:]] == [
        (ids[0], "3"),
        (ids[1], "7"),
    ]
    assert elapsed < 0.05 * 2 + 0.5  # the two 50 ms tools overlapped (loose bound)
    assert [t["result"] for t in outcome.output["turns"][:2]] == ["3", "7"]


async def test_a_tool_not_on_the_allow_list_is_refused_not_run(upstream: FakeUpstream) -> None:
    script = Script([call("rm", {"path": "/"}), call("add", {"a": 1, "b": 1})], "2")
    upstream.reply = script
    outcome = await step().execute(context(upstream), Task(question="?"))
    assert REMOVED == []  # never executed
    assert ADDED == [(1, 1)]  # the allowed call of the same message ran
    refused, answered = script.bodies[1]["messages"][2:]
    assert refused["content"] == "error: unknown tool 'rm'; the tools are: add"
    assert answered["content"] == "2"
    assert outcome.output["turns"][0]["ok"] is False
    assert outcome.update == {"answer": "2"}


async def test_invalid_arguments_are_fed_back_for_repair(upstream: FakeUpstream) -> None:
    script = Script(
        [call("add", {"a": "x", "b": 1})],
        [call("add", '{"a": 1,')],
        [call("add", {"a": 1, "b": 2, "c": 3})],
        [call("add", {"a": 1, "b": 2})],
        "3",
    )
    upstream.reply = script
    outcome = await step().execute(context(upstream), Task(question="1+2?"))
    assert outcome.update == {"answer": "3"}
    assert ADDED == [(1, 2)]  # only the valid call ran
    errors = [body["messages"][-1]["content"] for body in script.bodies[1:4]]
    assert errors[0].startswith("error: invalid arguments for add: a: ")
    assert errors[1].startswith("error: the arguments of add are not JSON")
    assert errors[2].startswith("error: invalid arguments for add: c: Extra inputs")
    assert outcome.output["iterations"] == 5


async def test_max_iterations_reached_is_a_clear_error(upstream: FakeUpstream) -> None:
    upstream.reply = Script([call("add", {"a": 1, "b": 1})])
    with pytest.raises(AgentLimitError) as caught:
        await step(max_iterations=3).execute(context(upstream), Task(question="loop"))
    assert len(upstream.requests) == 3
    assert caught.value.code == "agent_iteration_limit"
    assert "made 3 model call(s) without a valid final answer" in str(caught.value)
    # The last call forbids tools and says so; its tool calls are not run.
    last = upstream.requests[2].json
    assert last["tool_choice"] == "none" and "No more tool calls" in last["messages"][-1]["content"]
    assert ADDED == [(1, 1), (1, 1)]
    assert "after the last call" in caught.value.transcript[-1]["error"]


async def test_a_typed_final_answer_is_validated_and_repaired(upstream: FakeUpstream) -> None:
    class Sum(BaseModel):
        total: int

    script = Script('{"total": "many"}', '```json\n{"total": 7}\n```')
    upstream.reply = script
    outcome = await step(output=Sum).execute(context(upstream), Task(question="?"))
    assert outcome.update == {"answer": Sum(total=7)}
    first, second = script.bodies
    assert roles(first) == ["system", "user"] and "total" in first["messages"][0]["content"]
    assert "not valid" in second["messages"][-1]["content"]


async def test_auto_uses_json_turns_when_a_deployment_cannot_call_tools(
    upstream: FakeUpstream,
) -> None:
    """A plan that may reach the bundled model (here as a fallback) gets JSON turns."""
    local = ModelAlias(name="small", deployments=[Deployment(provider="local", model="smollm2")])
    hosted = ModelAlias(
        name="h",
        fallbacks=["small"],
        deployments=[
            Deployment(provider="openai-compatible", model="gpt-x", base_url=upstream.base_url)
        ],
    )
    gateway = make_gateway(upstream, local, hosted)
    assert native_tool_calling(gateway, "m") is True
    assert native_tool_calling(gateway, "small") is False
    assert native_tool_calling(gateway, "h") is False
    upstream.reply = Script(json.dumps({"final": "ok"}))
    ctx = Context(run_id="r", workflow="w", step="solve", seq=1, services={"gateway": gateway})
    outcome = await step(model="h").execute(ctx, Task(question="?"))
    assert outcome.output["tool_calling"] == "json" and outcome.update == {"answer": "ok"}
    body = upstream.requests[0].json
    assert "tools" not in body and body["response_format"]["type"] == "json_schema"
    # Forcing native on a hosted alias works; a bad option is refused at build time.
    upstream.reply = Script("fine")
    forced = await step(model="m", tool_calling="native").execute(ctx, Task(question="?"))
    assert forced.output["tool_calling"] == "native"
    with pytest.raises(ConfigurationError):
        step(tool_calling="maybe")


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'trellis.db'}")
    await db.connect()
    yield db
    await db.close()


async def test_parallel_side_effects_are_journaled_and_not_repeated_on_retry(
    upstream: FakeUpstream, database: Database
) -> None:
    """Two sends in one message are two effects under keys of their own; the retried step
    (the first attempt ended without a valid answer) replays them from the journal."""
    SENT.clear()
    both = [call("send", {"to": "ann", "text": "hi"}), call("send", {"to": "bob", "text": "hi"})]
    turns: list[Turn] = [both, "", both, "both sent"]
    seen: list[dict[str, Any]] = []

    def reply(body: dict[str, Any]) -> Turn:
        seen.append(body)
        return turns.pop(0)

    upstream.reply = reply
    flow = Workflow("agent-native-effects", state=Task, output=lambda s: s.answer)
    flow.add(step(tools=[send], max_iterations=2, policy=Policy(attempts=2, backoff=Backoff(0, 0))))
    async with Workflows(database, services={"gateway": make_gateway(upstream)}) as workflows:
        run = await workflows.run(flow, {"question": "greet ann and bob"})
        steps = await workflows.store.steps(run.id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == "both sent"
    assert sorted(SENT) == ["ann:hi", "bob:hi"]  # not four
    assert steps[0].attempts == 2
    first = sorted(m["content"] for m in seen[1]["messages"] if m["role"] == "tool")
    replayed = sorted(m["content"] for m in seen[3]["messages"] if m["role"] == "tool")
    assert first == replayed == ['"sent #1"', '"sent #2"']


async def test_native_without_tools_sends_no_empty_tool_list(upstream: FakeUpstream) -> None:
    upstream.reply = Script("nothing to call")
    outcome = await step(tools=[], tool_calling="native").execute(
        context(upstream), Task(question="?")
    )
    assert outcome.update == {"answer": "nothing to call"}
    body = upstream.requests[0].json
    assert "tools" not in body and "tool_choice" not in body
