"""Cohere-specific conversion: Chat v2 bodies, tool choice, embeddings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trellis.errors import InvalidRequestError, ProviderHTTPError
from trellis.inference.providers.base import Provider
from trellis.inference.providers.cohere import CohereProvider
from trellis.schema import ChatRequest
from trellis.testing.fake_upstream import FakeUpstream, Fault


def tool(name: str) -> dict[str, Any]:
    parameters = {"type": "object", "properties": {"q": {"type": "string"}}}
    return {
        "type": "function",
        "function": {"name": name, "parameters": parameters, "strict": True},
    }


@pytest.fixture
def upstream(make_upstream: Callable[[str], FakeUpstream]) -> FakeUpstream:
    return make_upstream("cohere")


@pytest.fixture
def provider(upstream: FakeUpstream, connect: Callable[..., Provider]) -> Provider:
    return connect(upstream, model="command-test")


def request(messages: list[dict[str, Any]], **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "alias", "messages": messages, **fields})


async def sent(provider: Provider, upstream: FakeUpstream, req: ChatRequest) -> dict[str, Any]:
    await provider.chat(req)
    return upstream.requests[-1].json


async def test_provider_identity(provider: Provider) -> None:
    assert isinstance(provider, CohereProvider)
    assert provider.system == "cohere"


async def test_messages_and_options(upstream: FakeUpstream, provider: Provider) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "look up"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q":"a"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
    ]
    req = request(messages, temperature=0.3, top_p=0.8, max_tokens=20, stop=["END"], seed=3)
    body = await sent(provider, upstream, req)
    assert upstream.requests[-1].path == "/v2/chat"
    assert body["model"] == "command-test"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "look up"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q":"a"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
    ]
    assert (body["temperature"], body["p"], body["max_tokens"]) == (0.3, 0.8, 20)
    assert (body["stop_sequences"], body["seed"]) == (["END"], 3)
    assert "stream" not in body


@pytest.mark.parametrize(
    ("choice", "expected_choice", "expected_tools"),
    [
        ("auto", None, ["a", "b"]),
        ("required", "REQUIRED", ["a", "b"]),
        ("none", "NONE", ["a", "b"]),
        ({"type": "function", "function": {"name": "b"}}, "REQUIRED", ["b"]),
    ],
)
async def test_tool_choice_mapping(
    upstream: FakeUpstream,
    provider: Provider,
    choice: Any,
    expected_choice: str | None,
    expected_tools: list[str],
) -> None:
    req = request(
        [{"role": "user", "content": "x"}], tools=[tool("a"), tool("b")], tool_choice=choice
    )
    body = await sent(provider, upstream, req)
    assert body.get("tool_choice") == expected_choice
    assert [t["function"]["name"] for t in body["tools"]] == expected_tools
    assert "strict" not in body["tools"][0]["function"]


async def test_json_output(upstream: FakeUpstream, provider: Provider) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    body = await sent(
        provider, upstream, request([{"role": "user", "content": "x"}], response_format=fmt)
    )
    assert body["response_format"] == {"type": "json_object", "json_schema": schema}


async def test_error_body_message(upstream: FakeUpstream, provider: Provider) -> None:
    upstream.faults.push(Fault.status(422, message="invalid request: bad"))
    with pytest.raises(ProviderHTTPError) as caught:
        await provider.chat(request([{"role": "user", "content": "x"}]))
    assert "invalid request: bad" in caught.value.message
    assert not caught.value.retryable


async def test_embeddings_batch_and_count_billed_tokens(
    upstream: FakeUpstream, connect: Callable[..., Provider]
) -> None:
    provider = connect(upstream, model="embed-test")
    texts = [f"two words{i}" for i in range(200)]
    result = await provider.embed(texts)
    assert len(result.vectors) == 200
    assert result.prompt_tokens == 400
    calls = [r.json for r in upstream.requests if r.path == "/v2/embed"]
    assert [len(call["texts"]) for call in calls] == [96, 96, 8]
    assert calls[0]["input_type"] == "search_document"
    assert calls[0]["embedding_types"] == ["float"]


async def test_stream_uses_message_id(upstream: FakeUpstream, provider: Provider) -> None:
    chunks = [chunk async for chunk in provider.stream(request([{"role": "user", "content": "x"}]))]
    assert upstream.requests[-1].json["stream"] is True
    assert chunks[0].id == "fake-1"


async def test_tool_choice_naming_an_unknown_tool_is_refused(provider: Provider) -> None:
    choice = {"type": "function", "function": {"name": "missing"}}
    req = request([{"role": "user", "content": "x"}], tools=[tool("a")], tool_choice=choice)
    with pytest.raises(InvalidRequestError):
        await provider.chat(req)
