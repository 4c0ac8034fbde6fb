"""Caching, context fitting, tracing and model-version checks, end to end over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream, Fault
from trellis.testing.server import ServerThread, wait_for_trace

HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}


def root_span(trace: dict[str, Any]) -> dict[str, Any]:
    return next(span for span in trace["spans"] if span["parent_id"] is None)


def test_deterministic_requests_are_cached(client: httpx.Client, upstream: FakeUpstream) -> None:
    body = {**HELLO, "temperature": 0}
    first = client.post("/v1/chat/completions", json=body)
    second = client.post("/v1/chat/completions", json=body)
    assert first.headers["x-trellis-cache"] == "miss"
    assert second.headers["x-trellis-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.content == first.content  # the very bytes the miss answered with
    assert len(upstream.requests) == 1
    # A different prompt, or different sampling parameters, is a different entry.
    other = client.post("/v1/chat/completions", json={**body, "seed": 3})
    assert other.headers["x-trellis-cache"] == "miss"


def test_answers_pass_through_as_the_upstream_wrote_them(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    answer = client.post("/v1/chat/completions", json=HELLO).json()
    # OpenAI's explicit nulls survive (re-encoding the model would leave them out).
    assert "logprobs" in answer["choices"][0] and answer["choices"][0]["logprobs"] is None
    assert answer["system_fingerprint"] == "fp_fake"


def test_answers_missing_fields_are_completed(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.faults.push(Fault.without("usage", "id", "created"))
    answer = client.post("/v1/chat/completions", json=HELLO).json()
    assert answer["id"].startswith("chatcmpl-") and isinstance(answer["created"], int)
    usage = answer["usage"]  # counted locally, as the upstream did not say
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_cache_bypass_and_non_deterministic(client: httpx.Client, upstream: FakeUpstream) -> None:
    body = {**HELLO, "temperature": 0}
    client.post("/v1/chat/completions", json=body)
    fresh = client.post("/v1/chat/completions", json=body, headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-trellis-cache"] == "miss"
    warm = {**HELLO, "temperature": 0.7}
    client.post("/v1/chat/completions", json=warm)
    assert client.post("/v1/chat/completions", json=warm).headers["x-trellis-cache"] == "miss"
    # ... unless the request opts in.
    opted = {**warm, "trellis": {"cache": True}}
    client.post("/v1/chat/completions", json=opted)
    assert client.post("/v1/chat/completions", json=opted).headers["x-trellis-cache"] == "hit"
    # and a request can opt out even when deterministic.
    off = {**body, "trellis": {"cache": False}, "messages": [{"role": "user", "content": "other"}]}
    client.post("/v1/chat/completions", json=off)
    assert client.post("/v1/chat/completions", json=off).headers["x-trellis-cache"] == "miss"
    assert len(upstream.requests) == 7


def test_cache_is_scoped_to_the_api_key(client: httpx.Client, server: ServerThread) -> None:
    body = {**HELLO, "temperature": 0}
    client.post("/v1/chat/completions", json=body)
    other_key = client.post("/v1/keys", json={"name": "other"}).json()["key"]
    response = httpx.post(
        server.base_url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {other_key}"},
    )
    assert response.headers["x-trellis-cache"] == "miss"


def test_streamed_answers_are_cached_and_replayed(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.reply = "streamed and cached"
    body = {**HELLO, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}

    def stream() -> tuple[str, str, dict[str, Any]]:
        import json

        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            events = [e[6:] for e in response.read().decode().split("\n\n") if e]
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            text = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
            )
            return response.headers["x-trellis-cache"], text, chunks[-1]

    assert stream()[:2] == ("miss", "streamed and cached")
    cache, text, usage_chunk = stream()
    assert (cache, text) == ("hit", "streamed and cached")
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 3
    assert len(upstream.requests) == 1


def test_context_window_is_enforced(client: httpx.Client) -> None:
    long = {"model": "tiny-context", "messages": [{"role": "user", "content": "word " * 200}]}
    response = client.post("/v1/chat/completions", json=long)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 64 tokens" in error["message"]


def test_trimming_drops_oldest_turns_and_is_traced(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    messages = [{"role": "system", "content": "Be brief."}]
    for turn in range(6):
        messages.append({"role": "user", "content": f"question {turn} " + "padding " * 8})
        messages.append({"role": "assistant", "content": f"answer {turn}"})
    messages.append({"role": "user", "content": "the latest question"})
    body = {"model": "tiny-context", "messages": messages, "trellis": {"trim": True}}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    sent = upstream.requests[-1].json["messages"]
    assert sent[0]["role"] == "system" and sent[-1]["content"] == "the latest question"
    assert len(sent) < len(messages)
    trace = wait_for_trace(client, response.headers["x-trellis-trace-id"])
    root = root_span(trace)
    truncations = [e for e in root["events"] if e["name"] == "truncation"]
    assert truncations and truncations[0]["attributes"]["dropped_messages"] == len(messages) - len(
        sent
    )


def test_every_request_is_traced_with_genai_attributes(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    response = client.post(
        "/v1/chat/completions", json={**HELLO, "temperature": 0.5, "max_tokens": 20}
    )
    trace = wait_for_trace(client, response.headers["x-trellis-trace-id"])
    names = [span["name"] for span in trace["spans"]]
    for stage in ("authenticate", "authorize", "context_fit", "route", "chat gpt-4o-mini"):
        assert stage in names, names
    root = root_span(trace)
    attrs = root["attributes"]
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "gpt-test"
    assert attrs["gen_ai.response.model"].startswith("gpt-4o-mini")
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.request.temperature"] == 0.5 and attrs["gen_ai.request.max_tokens"] == 20
    assert attrs["gen_ai.input.messages"][0]["content"] == "Hi"
    attempt = next(s for s in trace["spans"] if s["name"] == "chat gpt-4o-mini")
    assert attempt["attributes"]["gen_ai.provider.name"] == "openai"
    assert attempt["parent_id"] == next(s for s in trace["spans"] if s["name"] == "route")["id"]
    assert trace["input_tokens"] == attrs["gen_ai.usage.input_tokens"]
    assert trace["cost"] > 0  # gpt-4o-mini has a list price
    assert trace["duration_ms"] > 0


def test_streaming_trace_has_time_to_first_token(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/chat/completions", json={**HELLO, "stream": True}) as response:
        response.read()
        trace_id = response.headers["x-trellis-trace-id"]
    trace = wait_for_trace(client, trace_id)
    assert trace["ttft_ms"] is not None and trace["ttft_ms"] > 0
    assert trace["output_tokens"] > 0


def test_model_version_mismatch_is_flagged(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.served_model = "gpt-3.5-turbo-0125"
    response = client.post("/v1/chat/completions", json=HELLO)
    trace = wait_for_trace(client, response.headers["x-trellis-trace-id"])
    assert trace["attributes"]["model_mismatch"] is True
    assert trace["response_model"] == "gpt-3.5-turbo-0125"
    assert any(e["name"] == "model_mismatch" for e in root_span(trace)["events"])
    upstream.served_model = "gpt-4o-mini-2024-07-18"  # a dated snapshot is not a mismatch
    response = client.post("/v1/chat/completions", json=HELLO)
    trace = wait_for_trace(client, response.headers["x-trellis-trace-id"])
    assert trace["attributes"]["model_mismatch"] is False


def test_failed_requests_are_traced_too(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={**HELLO, "model": "nope"})
    assert response.status_code == 404
    rows = []
    deadline = time.monotonic() + 5
    while not rows and time.monotonic() < deadline:
        rows = client.get("/v1/traces", params={"status": "error"}).json()["data"]
        time.sleep(0.05)
    assert rows and rows[0]["model"] == "nope"


@pytest.mark.parametrize("store_bodies", [False])
def test_bodies_can_be_left_out_of_traces(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    admin_key: str,
    store_bodies: bool,
) -> None:
    server = make_server(
        make_settings(tracing={"store_bodies": store_bodies, "flush_interval": 0.05})
    )
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}
    ) as client:
        response = client.post("/v1/chat/completions", json=HELLO)
        trace = wait_for_trace(client, response.headers["x-trellis-trace-id"])
    assert "gen_ai.input.messages" not in root_span(trace)["attributes"]
    assert "gen_ai.output.messages" not in root_span(trace)["attributes"]


def test_a_key_can_opt_in_to_caching(client: httpx.Client, server: ServerThread) -> None:
    created = client.post("/v1/keys", json={"name": "cached", "cache": True}).json()
    assert created["cache"] is True
    headers = {"Authorization": f"Bearer {created['key']}"}
    body = {**HELLO, "temperature": 0.9}
    url = server.base_url + "/chat/completions"
    assert httpx.post(url, json=body, headers=headers).headers["x-trellis-cache"] == "miss"
    assert httpx.post(url, json=body, headers=headers).headers["x-trellis-cache"] == "hit"
