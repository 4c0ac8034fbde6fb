"""The official openai SDK against a running Trellis server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from trellis.testing.fake_upstream import FakeUpstream


def test_chat_completion(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "Say hello"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake upstream"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.model.startswith("gpt-4o-mini")
    assert raw.headers["x-trellis-cache"] == "miss"
    assert len(raw.headers["x-trellis-trace-id"]) == 32


def test_parameters_pass_through(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    sdk.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
        temperature=0.3,
        top_p=0.9,
        max_completion_tokens=50,
        stop=["END"],
        seed=42,
        user="user-7",
        tools=tools,  # type: ignore[arg-type]
        tool_choice="auto",
        response_format={"type": "json_object"},
    )
    sent = upstream.requests[-1].json
    assert sent["model"] == "gpt-4o-mini"
    for field, value in {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_completion_tokens": 50,
        "stop": ["END"],
        "seed": 42,
        "user": "user-7",
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
    }.items():
        assert sent[field] == value, field
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert "trellis" not in sent and "stream" not in sent


def test_tool_call_round_trip(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.tool_call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    completion = sdk.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.choices[0].finish_reason == "tool_calls"


def test_streaming_with_usage(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.reply = "one two three four"
    stream = sdk.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "Count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_without_usage_has_no_usage_chunk(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_raw_sse_framing(client: httpx.Client) -> None:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "chat.completion.chunk"


def test_stream_cut_midway_ends_with_an_error_event(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    from trellis.testing.fake_upstream import Fault

    upstream.reply = "a b c d e f g h i j"
    upstream.faults.push(Fault.cut_stream(after_chunks=2))
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [e for e in response.read().decode().split("\n\n") if e]
    last = json.loads(events[-1][6:])
    assert "error" in last and last["error"]["message"]
    assert "data: [DONE]" not in events


def test_sdk_raises_on_mid_stream_error(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    from trellis.testing.fake_upstream import Fault

    upstream.reply = "a b c d e f g h i j"
    upstream.faults.push(Fault.cut_stream(after_chunks=2))
    stream = sdk.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        list(stream)


def test_embeddings(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    result = sdk.embeddings.create(model="embed-test", input=["first text", "second text"])
    assert len(result.data) == 2 and result.data[1].index == 1
    assert len(result.data[0].embedding) > 0
    assert upstream.requests[-1].json["model"] == "text-embedding-3-small"
    # The SDK asks for base64 by default and decodes it: check the floats survived.
    raw = sdk.embeddings.create(model="embed-test", input="first text", encoding_format="float")
    assert raw.data[0].embedding == pytest.approx(result.data[0].embedding, abs=1e-6)


def test_models(sdk: openai.OpenAI) -> None:
    ids = [model.id for model in sdk.models.list()]
    assert ids == ["gpt-test", "tiny-context", "embed-test"]
    assert sdk.models.retrieve("gpt-test").id == "gpt-test"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("nope")


def test_sdk_error_types(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.code == "model_not_found"
    bad = openai.OpenAI(base_url=str(sdk.base_url), api_key="tr-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "Hi"}])
