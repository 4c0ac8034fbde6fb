"""The ``llm`` step kind: typed output through the gateway, validation and repair."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from trellis.errors import ConfigurationError
from trellis.inference.gateway import Gateway
from trellis.inference.router import Router
from trellis.observe.tracing import Span
from trellis.orchestration import Context
from trellis.orchestration.kinds.llm import OutputValidationError, as_messages, complete, llm
from trellis.orchestration.kinds.structured import output_schema
from trellis.schema import ChatMessage, ChatRequest
from trellis.settings import Deployment, ModelAlias, RetrySettings
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.sinks import ListSink


class Person(BaseModel):
    name: str
    age: int


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


def make_gateway(upstream: FakeUpstream, sink: ListSink | None = None) -> Gateway:
    alias = ModelAlias(
        name="m",
        deployments=[
            Deployment(provider="openai-compatible", model="gpt-x", base_url=upstream.base_url)
        ],
    )
    return Gateway(Router([alias], retry=RetrySettings(attempts=1)), sink=sink or ListSink())


def request(text: str = "Who is it?") -> ChatRequest:
    return ChatRequest(model="m", messages=[ChatMessage(role="user", content=text)])


async def test_a_valid_answer_is_parsed_into_the_model_with_the_schema_sent(
    upstream: FakeUpstream,
) -> None:
    replies = Replies('{"name": "Ada", "age": 36}')
    upstream.reply = replies
    sink = ListSink()
    result = await complete(make_gateway(upstream, sink), request(), output=Person)
    assert result.value == Person(name="Ada", age=36)
    assert result.calls == 1 and result.repairs == 0 and result.errors == []
    sent = replies.bodies[0]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "Person"
    assert sent["json_schema"]["schema"] == Person.model_json_schema()
    assert result.usage.total_tokens > 0
    assert [t.trace_id for t in sink.traces] == result.trace_ids


async def test_invalid_json_is_repaired_with_the_error_fed_back(upstream: FakeUpstream) -> None:
    replies = Replies(
        "Sure! Here it is: {name: Ada",
        '{"name": "Ada", "age": "old"}',
        '{"name": "Ada", "age": 36}',
    )
    upstream.reply = replies
    sink = ListSink()
    result = await complete(make_gateway(upstream, sink), request(), output=Person, repair=2)
    assert result.value == Person(name="Ada", age=36)
    assert result.calls == 3 and result.repairs == 2
    assert "Invalid JSON" in result.errors[0]
    assert result.errors[1].startswith("age:")
    # Each repair call carries the whole conversation: the bad answer, then the error.
    second = replies.bodies[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"] == "Sure! Here it is: {name: Ada"
    assert "not valid" in second[2]["content"] and "Invalid JSON" in second[2]["content"]
    third = replies.bodies[2]["messages"]
    assert [m["role"] for m in third] == ["user", "assistant", "user", "assistant", "user"]
    assert "age" in third[4]["content"]
    assert all(b["response_format"]["type"] == "json_schema" for b in replies.bodies)
    assert len(sink.traces) == 3  # every call is its own traced gateway call
    # Usage adds up over the calls.
    assert result.usage.prompt_tokens == sum(
        t.root.attributes["gen_ai.usage.input_tokens"] for t in sink.traces if t.root
    )


async def test_repairs_are_bounded_and_then_the_step_fails(upstream: FakeUpstream) -> None:
    upstream.reply = Replies("not json at all")
    with pytest.raises(OutputValidationError) as caught:
        await complete(make_gateway(upstream), request(), output=Person, repair=1)
    assert len(upstream.requests) == 2
    assert caught.value.code == "invalid_model_output"
    assert caught.value.retryable and not caught.value.deployment_fault
    assert len(caught.value.errors) == 2 and caught.value.last_text == "not json at all"


async def test_repair_zero_makes_one_call(upstream: FakeUpstream) -> None:
    upstream.reply = Replies("nope", '{"name": "Ada", "age": 36}')
    with pytest.raises(OutputValidationError):
        await complete(make_gateway(upstream), request(), output=Person, repair=0)
    assert len(upstream.requests) == 1


async def test_a_json_schema_output_is_validated_with_jsonschema(upstream: FakeUpstream) -> None:
    schema = {
        "title": "tags list",
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
        "required": ["tags"],
    }
    replies = Replies('{"tags": ["a", "b", "c"]}', '```json\n{"tags": ["a", "b"]}\n```')
    upstream.reply = replies
    result = await complete(make_gateway(upstream), request(), output=schema)
    assert result.value == {"tags": ["a", "b"]}  # a fenced answer is accepted
    assert "too long" in result.errors[0] and "$.tags" in result.errors[0]
    assert replies.bodies[0]["response_format"]["json_schema"]["name"] == "tags_list"


async def test_plain_text_output_sends_no_response_format(upstream: FakeUpstream) -> None:
    replies = Replies("just words")
    upstream.reply = replies
    result = await complete(make_gateway(upstream), request())
    assert result.value == "just words" and result.calls == 1
    assert "response_format" not in replies.bodies[0]


def test_messages_accept_strings_dicts_and_messages() -> None:
    messages = as_messages(
        [
            {"role": "system", "content": "Be brief."},
            "hi",
            ChatMessage(role="assistant", content="x"),
        ]
    )
    assert [m.role for m in messages] == ["system", "user", "assistant"]
    assert as_messages("alone")[0].content == "alone"
    with pytest.raises(ValueError):
        as_messages([])


def test_an_invalid_json_schema_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        output_schema({"type": "no-such-type"})
    with pytest.raises(ConfigurationError):
        output_schema(42)  # type: ignore[arg-type]


def test_check_validates_values_already_parsed() -> None:
    schema = output_schema(Person)
    assert schema is not None
    assert schema.check({"name": "A", "age": 1}) == Person(name="A", age=1)
    assert schema.check(Person(name="A", age=1)) == Person(name="A", age=1)
    with pytest.raises(ValueError, match="age"):
        schema.check({"name": "A"})
    assert json.loads(json.dumps(schema.response_format))["type"] == "json_schema"


# --- the step ---------------------------------------------------------------------------


class Story(BaseModel):
    topic: str
    model: str = "m"
    person: Person | None = None
    summary: str | None = None


def context(gateway: Gateway | None, step: str = "s") -> Context:
    return Context(
        run_id="run-1",
        workflow="w",
        step=step,
        seq=1,
        span=Span(name=step, trace_id="t" * 32),
        services={"gateway": gateway} if gateway is not None else {},
    )


async def test_the_step_builds_messages_from_state_and_puts_the_typed_value_into_a_field(
    upstream: FakeUpstream,
) -> None:
    replies = Replies("{oops", '{"name": "Ada", "age": 36}')
    upstream.reply = replies
    step = llm(
        "extract",
        model=lambda s: s.model,
        messages=lambda s: [{"role": "system", "content": "Extract."}, f"About {s.topic}"],
        output=Person,
        into="person",
        temperature=0.0,
        params={"seed": 7},
    )
    ctx = context(make_gateway(upstream), "extract")
    outcome = await step.execute(ctx, Story(topic="Ada Lovelace"))
    assert outcome.update == {"person": Person(name="Ada", age=36)}
    first = replies.bodies[0]
    assert first["messages"] == [
        {"role": "system", "content": "Extract."},
        {"role": "user", "content": "About Ada Lovelace"},
    ]
    assert first["temperature"] == 0.0 and first["seed"] == 7 and first["model"] == "gpt-x"
    assert outcome.usage.input_tokens > 0 and outcome.usage.output_tokens > 0
    assert outcome.usage.model == "gpt-x"
    span = ctx.span
    assert span is not None
    assert [e["name"] for e in span.events] == ["invalid_output", "llm_call"]
    assert span.attributes["trellis.llm.repairs"] == 1
    assert span.attributes["gen_ai.request.model"] == "m"
    assert len(span.attributes["trellis.llm.trace_ids"]) == 2


async def test_the_step_without_output_stores_the_text(upstream: FakeUpstream) -> None:
    upstream.reply = Replies("A short summary.")
    step = llm("sum", messages=lambda s: s.topic, into="summary", model="m", repair=5)
    assert step.repair == 0  # nothing to validate, nothing to repair
    outcome = await step.execute(context(make_gateway(upstream)), Story(topic="x"))
    assert outcome.update == {"summary": "A short summary."}


async def test_the_step_without_a_gateway_is_a_configuration_error() -> None:
    step = llm("sum", messages=lambda s: s.topic, into="summary")
    with pytest.raises(ConfigurationError, match="needs the gateway"):
        await step.execute(context(None), Story(topic="x"))


def test_step_arguments_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        llm("x", messages=lambda s: "hi", into="")
    with pytest.raises(ConfigurationError):
        llm("x", messages=lambda s: "hi", into="a", output=Person, repair=-1)
    assert llm("x", messages=lambda s: "hi", into="a").kind == "llm"
