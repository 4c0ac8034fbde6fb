"""What every hosted provider adapter promises, checked against each vendor's fake API.

The same tests run for OpenAI, Anthropic, Gemini and Cohere: the OpenAI shape
comes back whatever the vendor spoke, and vendor failures become the same
trellis errors, so the router can treat all providers alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from trellis.errors import (
    ProviderHTTPError,
    UnsupportedFeatureError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from trellis.inference.providers.base import Provider
from trellis.schema import ChatChunk, ChatRequest
from trellis.testing.fake_upstream import FakeUpstream, Fault

Connect = Callable[..., Provider]
VENDORS = ["openai", "anthropic", "gemini", "cohere"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def chat_request(text: str = "one two three", **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "alias", "messages": [{"role": "user", "content": text}], **fields}
    )


async def collect(provider: Provider, request: ChatRequest) -> list[ChatChunk]:
    return [chunk async for chunk in provider.stream(request)]


def streamed_text(chunks: list[ChatChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def streamed_tool_calls(chunks: list[ChatChunk]) -> list[dict[str, Any]]:
    """Reassemble tool calls from deltas the way OpenAI clients do (by ``index``)."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta["index"], {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.get("id") or call["id"]
                function = delta.get("function") or {}
                call["name"] += function.get("name") or ""
                call["arguments"] += function.get("arguments") or ""
    return [calls[index] for index in sorted(calls)]


@pytest.fixture(params=VENDORS)
def upstream(
    request: pytest.FixtureRequest, make_upstream: Callable[[str], FakeUpstream]
) -> FakeUpstream:
    return make_upstream(request.param)


@pytest.fixture
def provider(upstream: FakeUpstream, connect: Connect) -> Provider:
    return connect(upstream)


# --- the happy path ---------------------------------------------------------------


async def test_chat_returns_the_reply_with_usage(
    upstream: FakeUpstream, provider: Provider
) -> None:
    response = await provider.chat(chat_request("one two three"))

    choice = response.choices[0]
    assert choice.message.content == "Hello from fake"
    assert choice.finish_reason == "stop"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (3, 3)
    assert response.usage.total_tokens == 6
    assert len(upstream.requests) == 1


async def test_chat_reports_the_model_the_vendor_served(
    upstream: FakeUpstream, provider: Provider
) -> None:
    upstream.served_model = "m-2025-01-01"
    response = await provider.chat(chat_request())
    # Cohere's responses do not name a model, so the deployment's is reported.
    expected = "m" if upstream.vendor == "cohere" else "m-2025-01-01"
    assert response.model == expected


async def test_stream_yields_openai_chunks_then_usage(
    upstream: FakeUpstream, provider: Provider
) -> None:
    upstream.reply = "alpha beta gamma delta"
    chunks = await collect(provider, chat_request("one two three"))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert streamed_text(chunks) == "alpha beta gamma delta"
    with_choices = [chunk for chunk in chunks if chunk.choices]
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 4)
    assert len({chunk.id for chunk in chunks}) == 1


async def test_stream_keeps_unicode_line_separators_inside_events(
    upstream: FakeUpstream, provider: Provider
) -> None:
    # U+2028/U+2029/U+0085 may appear raw inside JSON strings; SSE lines end only at CR/LF.
    upstream.reply = "one\u2028two\u2029three \x85four é"
    chunks = await collect(provider, chat_request())
    assert streamed_text(chunks) == "one\u2028two\u2029three \x85four é"


async def test_tool_call_comes_back_with_json_string_arguments(
    upstream: FakeUpstream, provider: Provider
) -> None:
    upstream.tool_call = {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}
    response = await provider.chat(chat_request("weather?", tools=[WEATHER_TOOL]))

    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}


async def test_streamed_tool_call_reassembles(upstream: FakeUpstream, provider: Provider) -> None:
    upstream.tool_call = {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}
    chunks = await collect(provider, chat_request("weather?", tools=[WEATHER_TOOL]))

    calls = streamed_tool_calls(chunks)
    assert len(calls) == 1
    assert calls[0]["id"]
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "days": 2}
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage is not None


async def test_output_cap_maps_to_length(upstream: FakeUpstream, provider: Provider) -> None:
    response = await provider.chat(chat_request(max_tokens=2))
    assert response.choices[0].message.content == "Hello from"
    assert response.choices[0].finish_reason == "length"

    chunks = await collect(provider, chat_request(max_tokens=2))
    assert streamed_text(chunks) == "Hello from"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


async def test_requests_carry_the_vendor_credentials(
    upstream: FakeUpstream, provider: Provider, upstream_key: str
) -> None:
    await provider.chat(chat_request())
    headers = upstream.requests[-1].headers
    expected = {
        "openai": ("authorization", f"Bearer {upstream_key}"),
        "cohere": ("authorization", f"Bearer {upstream_key}"),
        "anthropic": ("x-api-key", upstream_key),
        "gemini": ("x-goog-api-key", upstream_key),
    }[upstream.vendor]
    assert headers[expected[0]] == expected[1]


# --- vendor errors become trellis errors --------------------------------------------


async def test_server_error_is_retryable(upstream: FakeUpstream, provider: Provider) -> None:
    upstream.faults.push(Fault.status(500, message="boom"))
    with pytest.raises(ProviderHTTPError) as caught:
        await provider.chat(chat_request())
    assert caught.value.retryable
    assert caught.value.upstream_status == 500
    assert "boom" in caught.value.message


async def test_rate_limit_carries_retry_after(upstream: FakeUpstream, provider: Provider) -> None:
    upstream.faults.push(Fault.status(429, retry_after=1.5))
    with pytest.raises(ProviderHTTPError) as caught:
        await provider.chat(chat_request())
    assert caught.value.retryable
    assert caught.value.retry_after == 1.5
    assert caught.value.status_code == 429


async def test_bad_request_is_not_retryable(upstream: FakeUpstream, provider: Provider) -> None:
    upstream.faults.push(Fault.status(400, message="bad field"))
    with pytest.raises(ProviderHTTPError) as caught:
        await provider.chat(chat_request())
    assert not caught.value.retryable
    assert caught.value.status_code == 400
    assert "bad field" in caught.value.message


async def test_error_status_before_a_stream_raises_on_first_iteration(
    upstream: FakeUpstream, provider: Provider
) -> None:
    upstream.faults.push(Fault.status(503))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(provider, chat_request())
    assert caught.value.retryable


async def test_slow_upstream_times_out(upstream: FakeUpstream, connect: Connect) -> None:
    provider = connect(upstream, timeout=0.3)
    upstream.faults.push(Fault.delay(1.0))
    with pytest.raises(UpstreamTimeoutError) as caught:
        await provider.chat(chat_request())
    assert caught.value.retryable


async def test_reset_connection_is_a_connection_error(
    upstream: FakeUpstream, provider: Provider
) -> None:
    upstream.faults.push(Fault.reset())
    with pytest.raises(UpstreamConnectionError):
        await provider.chat(chat_request())
    # The provider recovers on the next request.
    assert (await provider.chat(chat_request())).choices[0].message.content == "Hello from fake"


async def test_malformed_json_is_a_protocol_error(
    upstream: FakeUpstream, provider: Provider
) -> None:
    upstream.faults.push(Fault.malformed_json())
    with pytest.raises(UpstreamProtocolError):
        await provider.chat(chat_request())


async def test_malformed_stream_event_is_a_protocol_error(
    upstream: FakeUpstream, provider: Provider
) -> None:
    upstream.faults.push(Fault.malformed_json())
    with pytest.raises(UpstreamProtocolError):
        await collect(provider, chat_request())


async def test_cut_stream_raises_after_some_chunks(
    upstream: FakeUpstream, provider: Provider
) -> None:
    upstream.reply = "a b c d e f g h"
    upstream.faults.push(Fault.cut_stream(after_chunks=2))
    received = []
    with pytest.raises(UpstreamError):
        async for chunk in provider.stream(chat_request()):
            received.append(chunk)
    assert streamed_text(received) == "a b"
    assert all(chunk.usage is None for chunk in received)


async def test_cut_body_is_an_upstream_error(upstream: FakeUpstream, provider: Provider) -> None:
    upstream.faults.push(Fault.cut_stream())
    with pytest.raises(UpstreamError):
        await provider.chat(chat_request())


async def test_stream_ended_before_its_end_marker_is_an_error(
    upstream: FakeUpstream, provider: Provider
) -> None:
    # The connection closes cleanly (a close-delimited body), so only the missing end of
    # the vendor's stream tells: OpenAI's finish_reason/[DONE], Anthropic's message_stop,
    # Gemini's finishReason, Cohere's message-end.
    upstream.reply = "a b c d e f g h"
    upstream.faults.push(Fault.end_stream(after_chunks=2))
    received = []
    with pytest.raises(UpstreamProtocolError) as caught:
        async for chunk in provider.stream(chat_request()):
            received.append(chunk)
    assert caught.value.code == "stream_incomplete"
    assert "ended" in caught.value.message
    assert streamed_text(received) == "a b"
    assert all(chunk.usage is None for chunk in received)


async def test_stream_without_done_is_complete(upstream: FakeUpstream, provider: Provider) -> None:
    upstream.faults.push(Fault.without_done())
    chunks = await collect(provider, chat_request())
    assert streamed_text(chunks) == "Hello from fake"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"


async def test_mid_stream_error_event_is_not_retryable(
    upstream: FakeUpstream, provider: Provider
) -> None:
    upstream.faults.push(Fault.stream_error(after_chunks=1, message="overloaded now"))
    received = []
    with pytest.raises(UpstreamProtocolError) as caught:
        async for chunk in provider.stream(chat_request()):
            received.append(chunk)
    assert not caught.value.retryable
    assert streamed_text(received) == "Hello"


# --- embeddings -------------------------------------------------------------------


async def test_embeddings_are_deterministic_and_sized(
    upstream: FakeUpstream, provider: Provider
) -> None:
    if upstream.vendor == "anthropic":
        with pytest.raises(UnsupportedFeatureError):
            await provider.embed(["x"])
        return
    result = await provider.embed(["first text", "second text", "first text"], dimensions=16)
    assert len(result.vectors) == 3
    assert all(len(vector) == 16 for vector in result.vectors)
    assert result.vectors[0] == result.vectors[2] != result.vectors[1]
    assert result.model == "m"
