"""How a streamed answer ends over HTTP, when the upstream ends its stream early or
leaves out OpenAI's ``[DONE]``, with the exact cache on (temperature 0)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from trellis.testing.fake_upstream import FakeUpstream, Fault
from trellis.testing.server import wait_for_trace

BODY = {
    "model": "gpt-test",
    "messages": [{"role": "user", "content": "Hi"}],
    "temperature": 0,
    "stream": True,
}


def stream(client: httpx.Client) -> tuple[httpx.Response, list[str]]:
    with client.stream("POST", "/v1/chat/completions", json=BODY) as response:
        events = [e for e in response.read().decode().split("\n\n") if e]
    return response, events


def content(events: list[str]) -> str:
    chunks: list[dict[str, Any]] = [json.loads(e[6:]) for e in events if e != "data: [DONE]"]
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


def root_span(trace: dict[str, Any]) -> dict[str, Any]:
    return next(span for span in trace["spans"] if span["parent_id"] is None)


def test_a_stream_the_upstream_ended_early_is_an_error_and_not_cached(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.reply = "a b c d e f g h"
    upstream.faults.push(Fault.end_stream(after_chunks=2))
    response, events = stream(client)
    assert response.status_code == 200 and response.headers["x-trellis-cache"] == "miss"
    assert "data: [DONE]" not in events
    assert all(e.startswith("data: ") for e in events)
    error = json.loads(events[-1][6:])["error"]
    assert error["type"] == "upstream_error" and error["code"] == "stream_incomplete"
    assert "ended" in error["message"]
    assert content(events[:-1]) == "a b"

    trace = wait_for_trace(client, response.headers["x-trellis-trace-id"])
    assert trace["status"] == "error"
    attributes = root_span(trace)["attributes"]
    assert attributes["error.type"] == "UpstreamProtocolError"
    assert "ended" in attributes["error.message"]
    assert "gen_ai.response.finish_reasons" not in attributes

    # Nothing was cached: the identical request is a miss, answered whole by the upstream.
    response, events = stream(client)
    assert response.headers["x-trellis-cache"] == "miss"
    assert events[-1] == "data: [DONE]" and content(events) == "a b c d e f g h"
    assert len(upstream.requests) == 2
    response, events = stream(client)
    assert response.headers["x-trellis-cache"] == "hit"
    assert content(events) == "a b c d e f g h"


def test_a_finish_reason_without_done_is_a_complete_answer(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.reply = "complete without done"
    upstream.faults.push(Fault.without_done())
    response, events = stream(client)
    assert events[-1] == "data: [DONE]"  # Trellis' own framing is always complete
    assert content(events) == "complete without done"
    trace = wait_for_trace(client, response.headers["x-trellis-trace-id"])
    assert trace["status"] == "ok"
    assert root_span(trace)["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    response, events = stream(client)
    assert response.headers["x-trellis-cache"] == "hit"
    assert content(events) == "complete without done"
    assert len(upstream.requests) == 1
