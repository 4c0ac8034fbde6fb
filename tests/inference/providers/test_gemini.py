"""Gemini-specific conversion: generateContent bodies, paths, and response quirks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from trellis.errors import ProviderHTTPError, UpstreamProtocolError
from trellis.inference.providers.base import Provider, SSEEvent
from trellis.inference.providers.gemini import GeminiProvider
from trellis.schema import ChatRequest
from trellis.testing.fake_upstream import FakeUpstream, Fault

SCHEMA = {
    "type": "object",
    "properties": {"q": {"type": "string"}},
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "description": "Find", "parameters": SCHEMA},
}


@pytest.fixture
def upstream(make_upstream: Callable[[str], FakeUpstream]) -> FakeUpstream:
    return make_upstream("gemini")


@pytest.fixture
def provider(upstream: FakeUpstream, connect: Callable[..., Provider]) -> Provider:
    return connect(upstream, model="gemini-test")


def request(messages: list[dict[str, Any]], **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "alias", "messages": messages, **fields})


async def sent(provider: Provider, upstream: FakeUpstream, req: ChatRequest) -> dict[str, Any]:
    await provider.chat(req)
    return upstream.requests[-1].json


async def test_provider_identity(provider: Provider) -> None:
    assert isinstance(provider, GeminiProvider)
    assert provider.system == "gcp.gemini"


async def test_paths_name_the_model_and_stream_asks_for_sse(
    upstream: FakeUpstream, provider: Provider
) -> None:
    await provider.chat(request([{"role": "user", "content": "x"}]))
    assert upstream.requests[-1].path == "/v1beta/models/gemini-test:generateContent"
    [_ async for _ in provider.stream(request([{"role": "user", "content": "x"}]))]
    assert upstream.requests[-1].path == "/v1beta/models/gemini-test:streamGenerateContent"
    assert upstream.requests[-1].query == {"alt": "sse"}


async def test_system_instruction_and_roles(upstream: FakeUpstream, provider: Provider) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ]
    body = await sent(provider, upstream, request(messages))
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"text": "hello"}]},
        {"role": "user", "parts": [{"text": "again"}]},
    ]


async def test_function_responses_are_named_after_the_call(
    upstream: FakeUpstream, provider: Provider
) -> None:
    messages = [
        {"role": "user", "content": "look up"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "a"}'},
                },
                {"id": "c2", "type": "function", "function": {"name": "other", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"answer": 42}'},
        {"role": "tool", "tool_call_id": "c2", "content": "plain text"},
    ]
    body = await sent(provider, upstream, request(messages, tools=[TOOL]))
    model_turn, results = body["contents"][1], body["contents"][2]
    assert model_turn["parts"][0] == {"functionCall": {"name": "lookup", "args": {"q": "a"}}}
    assert results == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "lookup", "response": {"answer": 42}}},
            {"functionResponse": {"name": "other", "response": {"result": "plain text"}}},
        ],
    }
    declaration = body["tools"][0]["functionDeclarations"][0]
    assert declaration == {"name": "lookup", "description": "Find", "parametersJsonSchema": SCHEMA}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "lookup"}},
            {"mode": "ANY", "allowedFunctionNames": ["lookup"]},
        ),
    ],
)
async def test_tool_choice_mapping(
    upstream: FakeUpstream, provider: Provider, choice: Any, expected: Any
) -> None:
    req = request([{"role": "user", "content": "x"}], tools=[TOOL], tool_choice=choice)
    body = await sent(provider, upstream, req)
    assert body["toolConfig"] == {"functionCallingConfig": expected}


async def test_generation_config(upstream: FakeUpstream, provider: Provider) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": SCHEMA}}
    req = request(
        [{"role": "user", "content": "x"}],
        temperature=0.2,
        top_p=0.5,
        max_tokens=64,
        stop="END",
        seed=7,
        presence_penalty=0.1,
        response_format=fmt,
    )
    body = await sent(provider, upstream, req)
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.5,
        "maxOutputTokens": 64,
        "stopSequences": ["END"],
        "seed": 7,
        "presencePenalty": 0.1,
        "responseMimeType": "application/json",
        "responseJsonSchema": SCHEMA,
    }


async def test_inline_images(upstream: FakeUpstream, provider: Provider) -> None:
    content = [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}]
    body = await sent(provider, upstream, request([{"role": "user", "content": content}]))
    assert body["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/jpeg", "data": "AAAA"}}
    ]


async def test_error_message_carries_the_status(upstream: FakeUpstream, provider: Provider) -> None:
    upstream.faults.push(Fault.status(429, message="Quota exceeded"))
    with pytest.raises(ProviderHTTPError) as caught:
        await provider.chat(request([{"role": "user", "content": "x"}]))
    assert "RESOURCE_EXHAUSTED: Quota exceeded" in caught.value.message


async def test_embeddings_use_batch_endpoint(
    upstream: FakeUpstream, connect: Callable[..., Provider]
) -> None:
    provider = connect(upstream, model="text-embedding-004")
    result = await provider.embed([f"text {i}" for i in range(150)], dimensions=4)
    assert len(result.vectors) == 150
    calls = [r for r in upstream.requests if r.path.endswith(":batchEmbedContents")]
    assert [len(call.json["requests"]) for call in calls] == [100, 50]
    first = calls[0].json["requests"][0]
    assert first == {
        "model": "models/text-embedding-004",
        "content": {"parts": [{"text": "text 0"}]},
        "outputDimensionality": 4,
    }


async def test_blocked_prompt_and_thoughts(provider: GeminiProvider) -> None:
    blocked = provider._response({"promptFeedback": {"blockReason": "SAFETY"}})
    assert blocked.choices[0].finish_reason == "content_filter"
    thinking = provider._response(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [{"text": "hmm", "thought": True}, {"text": "4"}],
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 3,
                "candidatesTokenCount": 1,
                "thoughtsTokenCount": 5,
            },
        }
    )
    assert thinking.choices[0].message.content == "4"
    assert thinking.usage is not None
    assert thinking.usage.completion_tokens == 6


async def test_a_stream_ends_only_when_every_candidate_has_finished(
    provider: GeminiProvider,
) -> None:
    # Two candidates (candidateCount 2); the stream stops after only the first finished.
    events = [
        {"candidates": [{"index": 0, "content": {"parts": [{"text": "a"}]}}]},
        {"candidates": [{"index": 1, "content": {"parts": [{"text": "b"}]}}]},
        {"candidates": [{"index": 0, "content": {"parts": []}, "finishReason": "STOP"}]},
    ]

    async def post_sse(*args: Any, **kwargs: Any) -> AsyncIterator[SSEEvent]:
        for event in events:
            yield SSEEvent(None, json.dumps(event))

    provider.post_sse = post_sse  # type: ignore[method-assign]
    with pytest.raises(UpstreamProtocolError) as caught:
        [chunk async for chunk in provider.stream(request([{"role": "user", "content": "x"}]))]
    assert caught.value.code == "stream_incomplete"
    events.append({"candidates": [{"index": 1, "finishReason": "STOP"}]})
    chunks = [c async for c in provider.stream(request([{"role": "user", "content": "x"}]))]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-2:] == ["stop", "stop"]
