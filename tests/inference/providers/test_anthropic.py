"""Anthropic-specific conversion: what the Messages API receives, and its quirks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trellis.errors import ProviderHTTPError, UnsupportedFeatureError
from trellis.inference.providers.anthropic import AnthropicProvider
from trellis.inference.providers.base import Provider
from trellis.schema import ChatRequest
from trellis.testing.fake_upstream import FakeUpstream, Fault

TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture
def upstream(make_upstream: Callable[[str], FakeUpstream]) -> FakeUpstream:
    return make_upstream("anthropic")


@pytest.fixture
def provider(upstream: FakeUpstream, connect: Callable[..., Provider]) -> Provider:
    return connect(upstream, model="claude-test")


def request(messages: list[dict[str, Any]], **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "alias", "messages": messages, **fields})


async def sent(provider: Provider, upstream: FakeUpstream, req: ChatRequest) -> dict[str, Any]:
    await provider.chat(req)
    return upstream.requests[-1].json


async def test_provider_identity(provider: Provider) -> None:
    assert isinstance(provider, AnthropicProvider)
    assert provider.system == "anthropic"


async def test_version_header_and_default_max_tokens(
    upstream: FakeUpstream, provider: Provider
) -> None:
    body = await sent(provider, upstream, request([{"role": "user", "content": "hi"}]))
    assert upstream.requests[-1].headers["anthropic-version"] == "2023-06-01"
    assert upstream.requests[-1].path == "/v1/messages"
    assert body["model"] == "claude-test"
    assert body["max_tokens"] == 4096


async def test_system_prompts_move_out_of_messages(
    upstream: FakeUpstream, provider: Provider
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use French."},
        {"role": "user", "content": "hi"},
    ]
    body = await sent(provider, upstream, request(messages))
    assert body["system"] == "Be brief.\n\nUse French."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


async def test_tool_round_trip_history(upstream: FakeUpstream, provider: Provider) -> None:
    messages = [
        {"role": "user", "content": "look two things up"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "a"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "b"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "A"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "B"},
        {"role": "user", "content": "and now?"},
    ]
    body = await sent(provider, upstream, request(messages, tools=[TOOL]))
    roles = [message["role"] for message in body["messages"]]
    assert roles == ["user", "assistant", "user"]  # tool results and the next question merged
    assistant = body["messages"][1]["content"]
    assert assistant[0] == {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "lookup",
        "input": {"q": "a"},
    }
    results = body["messages"][2]["content"]
    assert results[0] == {"type": "tool_result", "tool_use_id": "toolu_1", "content": "A"}
    assert results[1]["tool_use_id"] == "toolu_2"
    assert results[2] == {"type": "text", "text": "and now?"}
    assert body["tools"] == [
        {"name": "lookup", "input_schema": {"type": "object", "properties": {}}}
    ]


@pytest.mark.parametrize(
    ("choice", "extra", "expected"),
    [
        ("auto", {}, {"type": "auto"}),
        ("required", {}, {"type": "any"}),
        ("none", {}, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "lookup"}},
            {},
            {"type": "tool", "name": "lookup"},
        ),
        (
            "auto",
            {"parallel_tool_calls": False},
            {"type": "auto", "disable_parallel_tool_use": True},
        ),
    ],
)
async def test_tool_choice_mapping(
    upstream: FakeUpstream, provider: Provider, choice: Any, extra: dict[str, Any], expected: Any
) -> None:
    req = request([{"role": "user", "content": "x"}], tools=[TOOL], tool_choice=choice, **extra)
    body = await sent(provider, upstream, req)
    assert body["tool_choice"] == expected


async def test_sampling_options(upstream: FakeUpstream, provider: Provider) -> None:
    req = request(
        [{"role": "user", "content": "x"}],
        temperature=1.7,
        top_p=0.9,
        max_completion_tokens=50,
        stop=["END"],
        user="u-1",
    )
    body = await sent(provider, upstream, req)
    assert body["temperature"] == 1.0  # Anthropic's range stops at 1
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 50
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-1"}


async def test_images_become_image_blocks(upstream: FakeUpstream, provider: Provider) -> None:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    body = await sent(provider, upstream, request([{"role": "user", "content": content}]))
    blocks = body["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    assert blocks[2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
    }


async def test_json_schema_output_is_refused(provider: Provider) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    with pytest.raises(UnsupportedFeatureError):
        await provider.chat(request([{"role": "user", "content": "x"}], response_format=schema))


async def test_overloaded_529_is_retryable_and_names_the_error_type(
    upstream: FakeUpstream, provider: Provider
) -> None:
    upstream.faults.push(Fault.status(529, message="Overloaded"))
    with pytest.raises(ProviderHTTPError) as caught:
        await provider.chat(request([{"role": "user", "content": "x"}]))
    assert caught.value.retryable
    assert "overloaded_error: Overloaded" in caught.value.message


async def test_missing_key_is_refused_upstream(
    upstream: FakeUpstream, connect: Callable[..., Provider]
) -> None:
    provider = connect(upstream, api_key_env="TRELLIS_TEST_UNSET_KEY")
    with pytest.raises(ProviderHTTPError) as caught:
        await provider.chat(request([{"role": "user", "content": "x"}]))
    assert caught.value.upstream_status == 401
    assert not caught.value.retryable
    assert "authentication_error" in caught.value.message


async def test_cached_input_counts_toward_prompt_tokens(provider: AnthropicProvider) -> None:
    data = {
        "id": "msg_1",
        "model": "claude-test",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 5,
            "output_tokens": 2,
        },
    }
    usage = provider._response(data).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (115, 2, 117)
    assert usage.cached_tokens == 100


async def test_stream_sets_stream_flag(upstream: FakeUpstream, provider: Provider) -> None:
    chunks = [chunk async for chunk in provider.stream(request([{"role": "user", "content": "x"}]))]
    assert upstream.requests[-1].json["stream"] is True
    assert chunks[0].id == "msg_fake1"
