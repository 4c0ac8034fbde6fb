"""The OpenAI-compatible adapter: what it forwards, and the vendors that reuse it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from trellis.errors import UpstreamError, UpstreamProtocolError
from trellis.inference.providers.base import Provider, SSEEvent
from trellis.inference.providers.openai_compat import OpenAICompatibleProvider
from trellis.schema import ChatRequest, ChatResponse
from trellis.settings import Deployment
from trellis.testing.fake_upstream import FakeUpstream, Fault


@pytest.fixture
def upstream(make_upstream: Callable[[str], FakeUpstream]) -> FakeUpstream:
    return make_upstream("openai")


def request(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "alias", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


@pytest.mark.parametrize(
    ("name", "system"),
    [("openai", "openai"), ("groq", "groq"), ("vllm", "vllm"), ("llamacpp", "llama.cpp")],
)
async def test_compatible_vendors_share_the_adapter(
    upstream: FakeUpstream, connect: Callable[..., Provider], name: str, system: str
) -> None:
    provider = connect(upstream, provider=name)
    assert isinstance(provider, OpenAICompatibleProvider)
    assert provider.system == system
    response = await provider.chat(request())
    assert response.choices[0].message.content == "Hello from fake"


async def test_body_forwards_caller_options_with_the_deployment_model(
    upstream: FakeUpstream, connect: Callable[..., Provider]
) -> None:
    provider = connect(upstream, model="gpt-upstream")
    await provider.chat(request(temperature=0.5, seed=1, logprobs=True, trellis={"cache": False}))
    body = upstream.requests[-1].json
    assert upstream.requests[-1].path == "/v1/chat/completions"
    assert body["model"] == "gpt-upstream"
    assert (body["temperature"], body["seed"], body["logprobs"]) == (0.5, 1, True)
    assert "trellis" not in body
    assert "stream" not in body


HI = [{"role": "user", "content": "hi"}]
CALLED = [
    {"role": "user", "content": "weather?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "function": {"name": "weather"}}],  # no type, no arguments
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
]


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"temperature": 1, "top_p": None, "user": None, "max_tokens": 16, "seed": 7},
        {"logprobs": True, "top_logprobs": 2, "metadata": {"a": "b"}, "trellis": {"cache": False}},
        {"stream": True, "stream_options": {"include_usage": False}},
        {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "response_format": {"type": "json_object"},
            "stop": ["\n"],
            "logit_bias": {"50256": -100},
        },
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ]
        },
        {"messages": [{"role": "user", "content": "hi", "name": None}]},  # a null to drop
        {"messages": CALLED},  # tool calls the model completes
    ],
)
def test_a_kept_body_is_forwarded_as_the_model_would_send_it(fields: dict[str, Any]) -> None:
    """The caller's body forwarded as it came is what dumping the validated model gives."""
    data = {"model": "alias", "messages": HI, **fields}
    kept = ChatRequest.model_validate(data)
    kept.keep_body(orjson.loads(orjson.dumps(data)))
    dumped = ChatRequest.model_validate(data)
    assert kept.upstream_body("up") == dumped.upstream_body("up")


def test_the_kept_body_is_used_only_while_it_matches_the_request() -> None:
    data = {"model": "alias", "messages": HI, "temperature": 0.5, "trellis": {"cache": False}}
    kept = ChatRequest.model_validate(data)
    kept.keep_body({**data, "marker": 1})  # a field only the kept body has shows its use
    assert kept.upstream_body("up") == {
        "model": "up",
        "messages": HI,
        "temperature": 0.5,
        "marker": 1,
    }
    assert "marker" not in kept.model_copy(update={"temperature": 0.2}).upstream_body("up")
    kept.temperature = 0.2  # setting a field drops it
    assert "marker" not in kept.upstream_body("up")
    called = ChatRequest.model_validate({**data, "messages": CALLED})
    called.keep_body({**data, "messages": CALLED, "marker": 1})
    sent = called.upstream_body("up")
    assert "marker" not in sent
    assert sent["messages"][1]["tool_calls"][0]["type"] == "function"


async def test_stream_always_asks_for_usage(
    upstream: FakeUpstream, connect: Callable[..., Provider]
) -> None:
    provider = connect(upstream)
    chunks = [chunk async for chunk in provider.stream(request())]
    body = upstream.requests[-1].json
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


async def test_probe_lists_models(upstream: FakeUpstream, connect: Callable[..., Provider]) -> None:
    await connect(upstream).probe()
    assert (upstream.requests[-1].method, upstream.requests[-1].path) == ("GET", "/v1/models")


async def test_embeddings_request_shape(
    upstream: FakeUpstream, connect: Callable[..., Provider]
) -> None:
    provider = connect(upstream, model="embed-small")
    result = await provider.embed(["a b c"], dimensions=3)
    assert upstream.requests[-1].json == {
        "model": "embed-small",
        "input": ["a b c"],
        "dimensions": 3,
    }
    assert result.prompt_tokens == 3
    assert len(result.vectors[0]) == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"id": "x", "choices": [', "returned malformed JSON"),
        (b'{"id": "x", "choices": [{"message": "not an object"}]}', "unexpected completion"),
    ],
)
async def test_a_bad_completion_is_a_protocol_error_that_says_what_was_wrong(
    connect: Callable[..., Provider], body: bytes, message: str
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    class Upstream:
        vendor = "openai"
        base_url = f"http://127.0.0.1:{port}/v1"

    provider = connect(Upstream)
    with pytest.raises(UpstreamProtocolError, match=message):
        await provider.chat(request())
    server.close()


async def test_api_key_whitespace_is_trimmed_and_bad_headers_fail_at_startup(
    upstream: FakeUpstream,
    connect: Callable[..., Provider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRELLIS_TEST_UPSTREAM_KEY", "sk-test-upstream\n")
    upstream.record = True
    provider = connect(upstream, provider="openai")
    await provider.chat(request())
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-test-upstream"
    # A key with a line break inside (settings cannot see it): refused when built.
    monkeypatch.setenv("TRELLIS_TEST_UPSTREAM_KEY", "sk-a\r\nx-evil: 1")
    with pytest.raises(UpstreamError, match="line break"):
        connect(upstream, provider="openai")
    # Configured headers are refused earlier, when the settings are read.
    with pytest.raises(ValidationError, match="line break"):
        Deployment(provider="openai", model="m", headers={"x-team": "a\r\nx-evil: 1"})


async def test_an_answer_in_openais_full_shape_is_kept_as_it_came(
    upstream: FakeUpstream, connect: Callable[..., Provider]
) -> None:
    provider = connect(upstream)
    response = await provider.chat(request())
    wire = response.wire
    assert wire is not None
    # The upstream's own bytes: its nulls are there, which re-encoding would drop.
    assert orjson.loads(wire)["choices"][0]["logprobs"] is None
    assert ChatResponse.model_validate_json(wire).model_dump() == response.model_dump()
    # Any change to the answer means the kept bytes no longer describe it.
    response.usage = None
    assert response.wire is None
    # So does an edit deep inside it (tests/test_schema.py tries every kind).
    response.keep_wire(wire)
    assert response.wire is wire
    response.choices[0].message.content = "edited"
    assert response.wire is None


@pytest.mark.parametrize("missing", ["usage", "id", "created", "object"])
async def test_an_answer_missing_fields_is_encoded_by_trellis(
    upstream: FakeUpstream, connect: Callable[..., Provider], missing: str
) -> None:
    upstream.faults.push(Fault.without(missing))
    response = await connect(upstream).chat(request())
    assert response.wire is None
    assert response.choices[0].message.content


async def test_a_stream_without_done_is_whole_only_when_every_choice_finished(
    upstream: FakeUpstream, connect: Callable[..., Provider]
) -> None:
    provider = connect(upstream)

    def chunk(index: int, content: str | None, finish: str | None) -> SSEEvent:
        choice = {"index": index, "delta": {"content": content}, "finish_reason": finish}
        return SSEEvent(None, orjson.dumps({"id": "c", "model": "m", "choices": [choice]}).decode())

    events = [chunk(0, "a", None), chunk(1, "b", None), chunk(0, None, "stop")]

    async def post_sse(*args: Any, **kwargs: Any) -> AsyncIterator[SSEEvent]:
        for event in events:
            yield event

    provider.post_sse = post_sse  # type: ignore[method-assign]
    with pytest.raises(UpstreamProtocolError) as caught:
        [c async for c in provider.stream(request(n=2))]
    assert caught.value.code == "stream_incomplete"  # choice 1 never finished
    events.append(chunk(1, None, "length"))
    chunks = [c async for c in provider.stream(request(n=2))]
    assert [c.choices[0].finish_reason for c in chunks][-2:] == ["stop", "length"]
    events.append(SSEEvent(None, "[DONE]"))  # [DONE] ends a stream whatever came before
    events[2:4] = []
    assert len([c async for c in provider.stream(request(n=2))]) == 2
