"""The bundled SmolLM2 run in-process: real model, small outputs.

Tests marked ``model`` load the real GGUF (~0.4 s) once per module and generate
at most a few dozen tokens each; the others check request validation, which
happens before the model is touched.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from trellis.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    UnsupportedFeatureError,
    UpstreamError,
)
from trellis.inference.local.llama import _closed_objects, compile_json_schema
from trellis.inference.local.provider import (
    LocalEngineProvider as LocalLlamaProvider,
)  # the shipped engine
from trellis.inference.providers import build_provider
from trellis.inference.tokens import count_message_tokens
from trellis.schema import ChatChunk, ChatRequest
from trellis.settings import Deployment, LocalModelSettings

DEPLOYMENT = Deployment(provider="local", model="smollm2-135m-instruct")
#: SmolLM2's end-of-generation tokens (<|endoftext|>, <|im_end|>, ...): banning them
#: makes the model run until max_tokens, so "stopped early" is measurable.
NO_EOS = {"0": -100.0, "2": -100.0, "4": -100.0}


def request(content: str | list[dict[str, Any]] = "Say hi", **options: Any) -> ChatRequest:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": content},
    ]
    options.setdefault("max_tokens", 8)
    options.setdefault("temperature", 0)
    return ChatRequest(model="local", messages=messages, **options)


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalLlamaProvider]:
    local = LocalLlamaProvider(DEPLOYMENT)
    yield local
    asyncio.run(local.aclose())


async def collect(provider: LocalLlamaProvider, req: ChatRequest) -> list[ChatChunk]:
    return [chunk async for chunk in provider.stream(req)]


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --- validation (no model needed) ---------------------------------------------------


def test_registry_builds_the_local_provider() -> None:
    provider = build_provider(DEPLOYMENT)
    assert isinstance(provider, LocalLlamaProvider)
    assert provider.system == "trellis.local"


async def test_tools_are_refused_with_a_clear_error() -> None:
    local = LocalLlamaProvider(DEPLOYMENT)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(UnsupportedFeatureError, match="cannot call tools") as caught:
        await local.chat(request(tools=[tool]))
    assert caught.value.status_code == 400
    with pytest.raises(UnsupportedFeatureError):
        await anext(aiter(local.stream(request(tools=[tool]))))
    await local.aclose()


async def test_unsupported_options_are_refused() -> None:
    local = LocalLlamaProvider(DEPLOYMENT)
    with pytest.raises(UnsupportedFeatureError):
        await local.chat(request(n=2))
    with pytest.raises(UnsupportedFeatureError):
        await local.chat(request(response_format={"type": "xml"}))
    with pytest.raises(InvalidRequestError):
        await local.chat(request(logit_bias={"hello": 1.0}))
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(UnsupportedFeatureError, match="text only"):
        await local.chat(request([{"type": "text", "text": "What is this?"}, image]))
    await local.aclose()
    with pytest.raises(UpstreamError, match="closed"):
        await local.chat(request())


def test_decoding_defaults_are_settings_and_request_values_win() -> None:
    settings = LocalModelSettings(
        temperature=0.3,
        top_p=0.8,
        top_k=20,
        min_p=0.1,
        repeat_penalty=1.2,
        system_prompt="Be brief.",
    )
    local = LocalLlamaProvider(DEPLOYMENT, settings)
    bare = ChatRequest(model="local", messages=[{"role": "user", "content": "Hi"}])
    kwargs, _ = local._completion_kwargs(bare)
    assert {k: kwargs[k] for k in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")} == {
        "temperature": 0.3,
        "top_p": 0.8,
        "top_k": 20,
        "min_p": 0.1,
        "repeat_penalty": 1.2,
    }
    assert kwargs["messages"][0] == {"role": "system", "content": "Be brief."}
    assert kwargs["max_tokens"] == settings.max_tokens_default

    explicit = ChatRequest.model_validate(
        {
            "model": "local",
            "messages": [
                {"role": "developer", "content": "Be chatty."},
                {"role": "user", "content": "Hi"},
            ],
            "temperature": 0.9,
            "top_p": 1,
            "top_k": 0,
            "min_p": 0,
            "repeat_penalty": 1.0,
        }
    )
    kwargs, _ = local._completion_kwargs(explicit)
    assert {k: kwargs[k] for k in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")} == {
        "temperature": 0.9,
        "top_p": 1,
        "top_k": 0,
        "min_p": 0,
        "repeat_penalty": 1.0,
    }
    assert [m["role"] for m in kwargs["messages"]] == ["system", "user"]
    assert kwargs["messages"][0]["content"] == "Be chatty."


async def test_a_missing_model_file_is_a_non_retryable_upstream_error(tmp_path: Any) -> None:
    settings = LocalModelSettings(model_path=str(tmp_path / "missing.gguf"))
    local = LocalLlamaProvider(DEPLOYMENT, settings)
    with pytest.raises(UpstreamError, match="cannot load") as caught:
        await local.chat(request())
    assert caught.value.retryable is False
    await local.aclose()


# --- the real model ---------------------------------------------------------------


@pytest.mark.model
async def test_chat_returns_text_and_usage(provider: LocalLlamaProvider) -> None:
    response = await provider.chat(request(max_tokens=8))
    choice = response.choices[0]
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.model == "smollm2-135m-instruct"
    usage = response.usage
    assert usage is not None
    assert 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # Our counter is exact for this model when a system message opens the chat.
    assert usage.prompt_tokens == count_message_tokens(request().messages)


@pytest.mark.model
async def test_stream_matches_chat_and_ends_with_usage(provider: LocalLlamaProvider) -> None:
    req = request(max_tokens=8, seed=7)
    # llama.cpp reuses the cached prompt prefix, and the float results of a prompt
    # evaluated in one batch or in pieces differ in the last bits, which can flip a
    # greedy choice. Warm up so the stream and the chat start from the same state.
    await provider.chat(req)
    chunks = await collect(provider, req)
    expected = await provider.chat(req)

    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0] is chunks[-2]
    assert finish[0].choices[0].finish_reason == expected.choices[0].finish_reason
    assert text_of(chunks) == expected.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == expected.usage
    assert len({c.id for c in chunks}) == 1


@pytest.mark.model
async def test_stream_usage_counts_every_generated_token(provider: LocalLlamaProvider) -> None:
    chunks = await collect(provider, request(max_tokens=6, logit_bias=NO_EOS))
    assert chunks[-2].choices[0].finish_reason == "length"
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 6
    assert usage.prompt_tokens == count_message_tokens(request().messages)


@pytest.mark.model
async def test_a_consumer_stopping_early_stops_generation(provider: LocalLlamaProvider) -> None:
    stream = provider.stream(request("Tell me a long story.", max_tokens=400, logit_bias=NO_EOS))
    seen = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
            if seen == 2:
                break
    await stream.aclose()
    started = time.perf_counter()
    await asyncio.wait_for(provider.load(), 30)  # queued behind the abandoned stream
    stats = provider.last_generation
    assert stats is not None and stats.sampled < 40, stats
    assert time.perf_counter() - started < 10
    assert (await provider.chat(request(max_tokens=2))).choices[0].message.content


@pytest.mark.model
async def test_a_timed_out_chat_stops_generation(provider: LocalLlamaProvider) -> None:
    await provider.load()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            provider.chat(request("Count to a thousand.", max_tokens=400, logit_bias=NO_EOS)), 0.3
        )
    await asyncio.wait_for(provider.load(), 30)
    stats = provider.last_generation
    assert stats is not None and stats.sampled < 400, stats


@pytest.mark.model
async def test_concurrent_calls_each_see_their_own_prompt(
    provider: LocalLlamaProvider,
) -> None:
    first, second, third = request("Name a colour."), request("Name a fruit."), request("Hi")
    chat_one, streamed, chat_two = await asyncio.gather(
        provider.chat(first), collect(provider, second), provider.chat(third)
    )
    # Decoded together in separate slots, each call still sees exactly its own prompt.
    for req, usage, text in (
        (first, chat_one.usage, chat_one.choices[0].message.content),
        (second, streamed[-1].usage, text_of(streamed)),
        (third, chat_two.usage, chat_two.choices[0].message.content),
    ):
        assert text
        assert usage is not None
        assert usage.prompt_tokens == count_message_tokens(req.messages)
        assert 0 < usage.completion_tokens <= 8


@pytest.mark.model
async def test_json_object_response_format_constrains_output(
    provider: LocalLlamaProvider,
) -> None:
    response = await provider.chat(
        request(
            "Give me a JSON object describing a cat.",
            max_tokens=12,
            response_format={"type": "json_object"},
        )
    )
    assert (response.choices[0].message.content or "").lstrip().startswith("{")


@pytest.mark.model
async def test_a_prompt_longer_than_the_context_is_refused() -> None:
    local = LocalLlamaProvider(DEPLOYMENT, LocalModelSettings(n_ctx=256))
    try:
        with pytest.raises(ContextLengthExceededError, match="context window") as caught:
            await local.chat(request("word " * 400))
        assert caught.value.code == "context_length_exceeded"
        with pytest.raises(ContextLengthExceededError):
            await collect(local, request("word " * 400))
    finally:
        await local.aclose()


@pytest.mark.model
def test_count_tokens_uses_the_model_vocabulary(provider: LocalLlamaProvider) -> None:
    assert provider.count_tokens("Hello world, how are you?") == 7
    assert provider.count_tokens("") == 0


# --- request errors: caused by the request, so 400s (never an upstream failure) ------


@pytest.mark.model
@pytest.mark.parametrize("token", ["49152", "1000000", "-1"])
async def test_logit_bias_outside_the_vocabulary_is_refused(
    provider: LocalLlamaProvider, token: str
) -> None:
    # Before: an id past the vocabulary was ignored (an IndexError per token on
    # stderr) and -1 biased the last token.
    req = request(logit_bias={token: 5.0})
    with pytest.raises(InvalidRequestError, match=f"{token}\\b") as caught:
        await provider.chat(req)
    assert caught.value.param == "logit_bias"
    with pytest.raises(InvalidRequestError, match=f"{token}\\b"):
        await collect(provider, req)


async def test_logit_bias_values_outside_the_openai_range_are_refused() -> None:
    local = LocalLlamaProvider(DEPLOYMENT)
    with pytest.raises(InvalidRequestError, match="-100 and 100") as caught:
        await local.chat(request(logit_bias={"5": 150.0}))
    assert caught.value.param == "logit_bias"
    await local.aclose()


def schema_format(schema: Any, *, strict: bool = True) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "strict": strict, "schema": schema},
    }


RECURSIVE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {"value": {"type": "integer"}, "next": {"$ref": "#/$defs/node"}},
        }
    },
    "$ref": "#/$defs/node",
}
UNKNOWN_TYPE = {"type": "object", "properties": {"a": {"type": "decimal"}}}
HUGE_REPETITION = {"type": "array", "items": {"type": "integer"}, "maxItems": 10**9}
HUGE_PATTERN = {"type": "string", "pattern": "^a{2,1000000000}$"}


def nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize(
    "schema",
    [UNKNOWN_TYPE, HUGE_REPETITION, HUGE_PATTERN, {"type": 12}, nested_schema(500)],
    ids=[
        "unknown-type",
        "huge-repetition",
        "huge-pattern",
        "invalid",
        "nested-500",
    ],
)
async def test_schemas_the_grammar_cannot_enforce_are_refused(schema: dict[str, Any]) -> None:
    # Before: llama-cpp fell back to plain JSON without a word (even with strict:
    # true), and 500 levels raised RecursionError, a 502 counted against the deployment.
    local = LocalLlamaProvider(DEPLOYMENT)
    for strict in (True, False):
        with pytest.raises(InvalidRequestError) as caught:
            await local.chat(request(response_format=schema_format(schema, strict=strict)))
        assert caught.value.status_code == 400
        assert caught.value.param == "response_format"
        with pytest.raises(InvalidRequestError):
            await collect(local, request(response_format=schema_format(schema, strict=strict)))
    await local.aclose()


def test_a_recursive_schema_becomes_a_recursive_grammar() -> None:
    # llama-cpp-python's converter refused recursive $ref; llama.cpp's own (the engine's)
    # writes a recursive grammar rule, so such a schema is enforced now, not refused.
    structured = compile_json_schema(RECURSIVE)
    assert "next" in structured.grammar
    assert structured.violation('{"value": 1, "next": {"value": 2}}') is None
    assert structured.violation('{"value": "x"}') is not None


def test_objects_are_closed_in_the_grammar_but_validated_as_written() -> None:
    schema = {
        "type": "object",
        "properties": {"properties": {"type": "object", "properties": {"a": {"type": "integer"}}}},
    }
    closed = _closed_objects(schema)
    assert closed["additionalProperties"] is False
    inner = closed["properties"]["properties"]
    assert inner["additionalProperties"] is False and set(closed["properties"]) == {"properties"}
    assert compile_json_schema(schema).violation('{"extra": 1}') is None


#: The grammar llama.cpp builds from a schema enforces structure and types, not ranges.
DIGIT = {
    "type": "object",
    "properties": {"digit": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["digit"],
    "additionalProperties": False,
}


@pytest.mark.model
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_json_schema_answers_are_validated_against_the_whole_schema(
    provider: LocalLlamaProvider, stream: bool
) -> None:
    import jsonschema

    # Before: {"digit": 11} came back although the schema says 1..9. Each case must
    # now end in an answer the schema accepts, or in a 400 that says it could not.
    outcomes = []
    for seed in range(1, 6):
        req = request(
            "Give a two-digit number, like 11, as JSON.",
            max_tokens=16,
            temperature=0.8,
            seed=seed,
            response_format=schema_format(DIGIT),
        )
        try:
            if stream:
                chunks = await collect(provider, req)
                text = text_of(chunks)
                usage = chunks[-1].usage
            else:
                response = await provider.chat(req)
                text = response.choices[0].message.content or ""
                usage = response.usage
        except InvalidRequestError as exc:
            assert exc.code == "json_schema_unsatisfied" and exc.param == "response_format"
            outcomes.append("refused")
            continue
        jsonschema.validate(json.loads(text), DIGIT)
        assert usage is not None and usage.completion_tokens <= 16
        outcomes.append("valid")
    assert "valid" in outcomes, outcomes


@pytest.mark.model
async def test_a_valid_json_schema_is_followed(provider: LocalLlamaProvider) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
    }
    response = await provider.chat(
        request(
            "What is the capital of France? Answer in JSON.",
            max_tokens=24,
            response_format=schema_format(schema),
        )
    )
    assert response.choices[0].finish_reason == "stop"
    assert set(json.loads(response.choices[0].message.content or "")) == {"city"}


# --- max_tokens is a hard cap ---------------------------------------------------------


#: Token 187 is the lone byte 0xF0, the lead byte of a 4-byte UTF-8 character. llama-cpp
#: skips its max_tokens check while a character is incomplete, so favouring it made the
#: generation run past the cap (and the usage bill it).
LEAD_BYTE = {"187": 100.0}


@pytest.mark.model
async def test_max_tokens_holds_when_the_answer_ends_inside_a_character() -> None:
    local = LocalLlamaProvider(DEPLOYMENT, LocalModelSettings(n_ctx=256))
    try:
        req = request(max_tokens=4, logit_bias=LEAD_BYTE)
        response = await local.chat(req)
        assert response.usage is not None and response.usage.completion_tokens <= 4
        assert response.choices[0].finish_reason == "length"
        chunks = await collect(local, req)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 4
        assert chunks[-2].choices[0].finish_reason == "length"
        stats = local.last_generation
        assert stats is not None and stats.sampled <= 4
    finally:
        await local.aclose()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("top_k", 1.5),
        ("top_k", 10**20),
        ("top_k", -(10**20)),
        ("top_k", -1),
        ("top_k", "40"),
        ("top_k", True),
        ("min_p", 1.5),
        ("min_p", -0.1),
        ("typical_p", 2),
        ("repeat_penalty", 0),
        ("repeat_penalty", -1.1),
        ("repeat_penalty", "1.1"),
    ],
)
async def test_bad_llama_sampling_extras_are_refused(name: str, value: Any) -> None:
    # Found by verification: "top_k": 1.5 or 1e20 reached llama.cpp's C API and
    # answered 500 (ctypes.ArgumentError); out-of-range values were silently used.
    local = LocalLlamaProvider(DEPLOYMENT)
    with pytest.raises(InvalidRequestError) as caught:
        await local.chat(request(**{name: value}))
    assert caught.value.status_code == 400
    assert caught.value.param == name
    await local.aclose()


def test_valid_llama_sampling_extras_pass_through() -> None:
    local = LocalLlamaProvider(DEPLOYMENT)
    req = ChatRequest.model_validate(
        {
            "model": "local",
            "messages": [{"role": "user", "content": "Hi"}],
            "top_k": 100000,
            "min_p": 1,
            "typical_p": 0.5,
            "repeat_penalty": 3.0,
        }
    )
    kwargs, _ = local._completion_kwargs(req)
    assert (kwargs["top_k"], kwargs["min_p"], kwargs["typical_p"]) == (100000, 1, 0.5)
    assert kwargs["repeat_penalty"] == 3.0
