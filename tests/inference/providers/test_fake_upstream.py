"""The fake provider server itself: HTTP behaviour, faults, vendor shapes, and its CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from trellis.testing.fake_upstream import FakeUpstream, Fault, ToolCallReply

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi there"}]}
ANTHROPIC_HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


@pytest.fixture
def openai_up(make_upstream: Callable[[str], FakeUpstream]) -> FakeUpstream:
    return make_upstream("openai")


@pytest.fixture
def http(openai_up: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=openai_up.base_url, timeout=5) as client:
        yield client


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Read ``count`` Content-Length responses from a raw socket."""
    buffer = b""
    responses = []
    while len(responses) < count:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            status_line, *lines = buffer[:head_end].decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)
            }
            length = int(headers["content-length"])
            if len(buffer) >= head_end + 4 + length:
                body = buffer[head_end + 4 : head_end + 4 + length]
                buffer = buffer[head_end + 4 + length :]
                responses.append((int(status_line.split()[1]), headers, body))
                continue
        data = sock.recv(65536)
        if not data:
            break
        buffer += data
    return responses


def raw_post(path: str, body: dict[str, Any], extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(data)}\r\n{extra}\r\n"
    return head.encode() + data


# --- HTTP/1.1 plumbing ----------------------------------------------------------------


def test_keep_alive_serves_pipelined_requests_in_order(openai_up: FakeUpstream) -> None:
    openai_up.reply = lambda body: body["messages"][0]["content"].upper()
    with socket.create_connection(("127.0.0.1", openai_up.port)) as sock:
        first = {"model": "m", "messages": [{"role": "user", "content": "first"}]}
        second = {"model": "m", "messages": [{"role": "user", "content": "second"}]}
        sock.sendall(
            raw_post("/v1/chat/completions", first) + raw_post("/v1/chat/completions", second)
        )
        replies = read_responses(sock, 2)
    contents = [json.loads(body)["choices"][0]["message"]["content"] for _, _, body in replies]
    assert contents == ["FIRST", "SECOND"]


def test_body_split_across_packets(openai_up: FakeUpstream) -> None:
    request = raw_post("/v1/chat/completions", CHAT)
    with socket.create_connection(("127.0.0.1", openai_up.port)) as sock:
        for piece in (request[:10], request[10:-5], request[-5:]):
            sock.sendall(piece)
            time.sleep(0.01)
        [(status, _, _)] = read_responses(sock, 1)
    assert status == 200


def test_connection_close_is_honoured(openai_up: FakeUpstream) -> None:
    with socket.create_connection(("127.0.0.1", openai_up.port)) as sock:
        sock.sendall(raw_post("/v1/chat/completions", CHAT, "connection: close\r\n"))
        [(status, headers, _)] = read_responses(sock, 1)
        assert sock.recv(10) == b""  # the server hung up
    assert status == 200
    assert headers["connection"] == "close"


def test_reset_closes_without_a_response(openai_up: FakeUpstream) -> None:
    openai_up.faults.push(Fault.reset())
    with socket.create_connection(("127.0.0.1", openai_up.port)) as sock:
        sock.sendall(raw_post("/v1/chat/completions", CHAT))
        sock.settimeout(2)
        try:
            received = sock.recv(100)
        except ConnectionResetError:
            received = b""
    assert received == b""


async def test_many_concurrent_requests(openai_up: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=openai_up.base_url) as client:
        responses = await asyncio.gather(
            *(client.post("/chat/completions", json=CHAT) for _ in range(200))
        )
    assert {response.status_code for response in responses} == {200}
    assert len(openai_up.requests) == 200


# --- configuration and faults ----------------------------------------------------------


def test_requests_are_recorded(openai_up: FakeUpstream, http: httpx.Client) -> None:
    http.post("/chat/completions", json=CHAT, params={"x": "1"}, headers={"X-Custom": "Yes"})
    [received] = openai_up.requests
    assert (received.method, received.path, received.query) == (
        "POST",
        "/v1/chat/completions",
        {"x": "1"},
    )
    assert received.headers["x-custom"] == "Yes"
    assert received.json == CHAT


def test_faults_are_consumed_in_order(openai_up: FakeUpstream, http: httpx.Client) -> None:
    openai_up.faults.push(Fault.status(500), Fault.status(503))
    assert len(openai_up.faults) == 2
    codes = [http.post("/chat/completions", json=CHAT).status_code for _ in range(3)]
    assert codes == [500, 503, 200]

    openai_up.faults.always(Fault.status(502))
    assert [http.post("/chat/completions", json=CHAT).status_code for _ in range(2)] == [502, 502]
    openai_up.faults.clear()
    assert http.post("/chat/completions", json=CHAT).status_code == 200


def test_retry_after_header(openai_up: FakeUpstream, http: httpx.Client) -> None:
    openai_up.faults.push(Fault.status(429, retry_after=1.5))
    response = http.post("/chat/completions", json=CHAT)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1.5"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


def test_delays(openai_up: FakeUpstream, http: httpx.Client) -> None:
    openai_up.delay = 0.1
    started = time.perf_counter()
    http.post("/chat/completions", json=CHAT)
    assert time.perf_counter() - started >= 0.1

    openai_up.delay = 0.0
    openai_up.faults.push(Fault.delay(0.2))
    started = time.perf_counter()
    response = http.post("/chat/completions", json=CHAT)
    assert time.perf_counter() - started >= 0.2
    assert response.status_code == 200


def test_served_model_and_echo(openai_up: FakeUpstream, http: httpx.Client) -> None:
    assert http.post("/chat/completions", json=CHAT).json()["model"] == "m"
    openai_up.served_model = "m-0613"
    assert http.post("/chat/completions", json=CHAT).json()["model"] == "m-0613"


def test_malformed_json_body(openai_up: FakeUpstream, http: httpx.Client) -> None:
    openai_up.faults.push(Fault.malformed_json())
    response = http.post("/chat/completions", json=CHAT)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_openai_stream_without_usage(openai_up: FakeUpstream, http: httpx.Client) -> None:
    text = http.post("/chat/completions", json={**CHAT, "stream": True}).text
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_embeddings_and_models(openai_up: FakeUpstream, http: httpx.Client) -> None:
    floats = http.post("/embeddings", json={"model": "e", "input": "abc"}).json()
    assert len(floats["data"][0]["embedding"]) == 8
    encoded = http.post(
        "/embeddings",
        json={"model": "e", "input": ["abc"], "encoding_format": "base64", "dimensions": 4},
    ).json()
    decoded = struct.unpack("<4f", base64.b64decode(encoded["data"][0]["embedding"]))
    wide = http.post("/embeddings", json={"model": "e", "input": ["abc"], "dimensions": 4}).json()
    assert decoded == pytest.approx(wide["data"][0]["embedding"])
    assert http.get("/models").json()["data"][0]["object"] == "model"


def test_unknown_route_is_404(openai_up: FakeUpstream, http: httpx.Client) -> None:
    response = http.post("/nope", json={})
    assert response.status_code == 404
    assert "no route" in response.json()["error"]["message"]


def test_lifecycle(make_upstream: Callable[[str], FakeUpstream]) -> None:
    upstream = FakeUpstream("cohere")
    with upstream as running:
        assert running.start() is running  # starting twice is harmless
        assert running.base_url == f"http://127.0.0.1:{running.port}"
        busy_port = running.port
        with pytest.raises(OSError):
            FakeUpstream("cohere", port=busy_port).start()
    upstream.stop()  # stopping twice is harmless
    with pytest.raises(ValueError):
        FakeUpstream("nope")


# --- vendor shapes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vendor", "path", "headers", "expected"),
    [
        ("openai", "/v1/chat/completions", {}, {"error": {"message": "m", "type": "server_error"}}),
        (
            "anthropic",
            "/v1/messages",
            ANTHROPIC_HEADERS,
            {"type": "error", "error": {"type": "api_error"}},
        ),
        (
            "gemini",
            "/v1beta/models/g:generateContent",
            {},
            {"error": {"code": 500, "status": "INTERNAL"}},
        ),
        ("cohere", "/v2/chat", {}, {"message": "m"}),
    ],
)
def test_error_bodies_follow_each_vendor(
    make_upstream: Callable[[str], FakeUpstream],
    vendor: str,
    path: str,
    headers: dict[str, str],
    expected: dict[str, Any],
) -> None:
    upstream = make_upstream(vendor)
    upstream.faults.push(Fault.status(500, message="m"))
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    body["contents"] = [{"parts": [{"text": "x"}]}]
    url = f"http://127.0.0.1:{upstream.port}{path}"
    response = httpx.post(url, json=body, headers=headers)
    assert response.status_code == 500

    def contains(actual: Any, wanted: Any) -> bool:
        if isinstance(wanted, dict):
            return all(contains(actual.get(key), value) for key, value in wanted.items())
        return bool(actual == wanted)

    assert contains(response.json(), expected), response.json()


def test_anthropic_checks_required_headers_and_fields(
    make_upstream: Callable[[str], FakeUpstream],
) -> None:
    upstream = make_upstream("anthropic")
    url = upstream.base_url + "/v1/messages"
    body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert (
        httpx.post(url, json=body, headers={"anthropic-version": "2023-06-01"}).status_code == 401
    )
    assert httpx.post(url, json=body, headers={"x-api-key": "k"}).status_code == 400
    no_cap = {key: value for key, value in body.items() if key != "max_tokens"}
    refused = httpx.post(url, json=no_cap, headers=ANTHROPIC_HEADERS)
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(url, json=body, headers=ANTHROPIC_HEADERS).status_code == 200


def test_anthropic_stream_event_order(make_upstream: Callable[[str], FakeUpstream]) -> None:
    upstream = make_upstream("anthropic")
    body = {
        "model": "c",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    text = httpx.post(upstream.base_url + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS).text
    events = [line[7:] for line in text.split("\n") if line.startswith("event: ")]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_cohere_tool_call_stream_event_order(make_upstream: Callable[[str], FakeUpstream]) -> None:
    upstream = make_upstream("cohere")
    upstream.tool_call = {"name": "f", "arguments": {"a": 1}}
    body = {"model": "c", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    text = httpx.post(upstream.base_url + "/v2/chat", json=body).text
    types = [json.loads(line[6:])["type"] for line in text.split("\n") if line.startswith("data: ")]
    assert types[:3] == ["message-start", "tool-plan-delta", "tool-call-start"]
    assert types[-2:] == ["tool-call-end", "message-end"]
    assert set(types[3:-2]) == {"tool-call-delta"}


def test_scripted_parallel_tool_calls_in_a_body_and_a_stream(
    make_upstream: Callable[[str], FakeUpstream],
) -> None:
    """``reply`` may answer with several tool calls (raw argument text kept as given)."""
    upstream = make_upstream("openai")
    upstream.reply = lambda body: [
        ToolCallReply("add", {"a": 1}),
        ToolCallReply("add", '{"a": 2,'),
    ]
    message = httpx.post(upstream.base_url + "/chat/completions", json=CHAT).json()["choices"][0]
    calls = message["message"]["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("add", '{"a": 1}'),
        ("add", '{"a": 2,'),
    ]
    assert len({c["id"] for c in calls}) == 2 and message["finish_reason"] == "tool_calls"
    text = httpx.post(upstream.base_url + "/chat/completions", json={**CHAT, "stream": True}).text
    deltas = [
        call
        for line in text.split("\n")
        if line.startswith("data: {")
        for choice in json.loads(line[6:])["choices"]
        for call in choice["delta"].get("tool_calls") or []
    ]
    arguments: dict[int, str] = {}
    for delta in deltas:
        arguments[delta["index"]] = arguments.get(delta["index"], "") + delta["function"].get(
            "arguments", ""
        )
    assert arguments == {0: '{"a": 1}', 1: '{"a": 2,'}


def test_gemini_stream_without_sse_is_a_json_array(
    make_upstream: Callable[[str], FakeUpstream],
) -> None:
    upstream = make_upstream("gemini")
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    url = upstream.base_url + "/models/g:streamGenerateContent"
    payload = httpx.post(url, json=body).json()
    assert isinstance(payload, list)
    assert payload[0]["candidates"][0]["finishReason"] == "STOP"
    assert payload[0]["usageMetadata"]["promptTokenCount"] == 1


# --- as its own process ----------------------------------------------------------------------


def test_cli_prints_base_url_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trellis.testing.fake_upstream",
            "--vendor",
            "gemini",
            "--delay",
            "0.01",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1beta")
        body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
        response = httpx.post(base_url + "/models/g:generateContent", json=body)
        assert response.json()["candidates"][0]["content"]["parts"][0]["text"] == "Hello from fake"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_body_faults_apply_to_embeddings(openai_up: FakeUpstream, http: httpx.Client) -> None:
    openai_up.faults.push(Fault.malformed_json(), Fault.cut_stream())
    with pytest.raises(ValueError):
        http.post("/embeddings", json={"model": "e", "input": "x"}).json()
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/embeddings", json={"model": "e", "input": "x"})


def test_end_stream_closes_a_close_delimited_body_early(
    openai_up: FakeUpstream, http: httpx.Client
) -> None:
    openai_up.reply = "a b c d e f"
    openai_up.faults.push(Fault.end_stream(after_chunks=2))
    response = http.post("/chat/completions", json={**CHAT, "stream": True})
    # A clean end as far as HTTP goes: no length, not chunked, the connection closed.
    assert response.status_code == 200
    assert "content-length" not in response.headers
    assert "transfer-encoding" not in response.headers
    assert response.headers["connection"] == "close"
    events = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert "[DONE]" not in events
    chunks = [json.loads(event) for event in events]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "a b"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


def test_end_stream_paced_is_close_delimited_too(
    openai_up: FakeUpstream, http: httpx.Client
) -> None:
    openai_up.reply = "a b c d e f"
    openai_up.chunk_delay = 0.001
    openai_up.faults.push(Fault.end_stream(after_chunks=3))
    response = http.post("/chat/completions", json={**CHAT, "stream": True})
    assert "transfer-encoding" not in response.headers
    events = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert len(events) == 4 and "[DONE]" not in events  # role chunk + three words


def test_without_done_keeps_the_finish_reason(openai_up: FakeUpstream, http: httpx.Client) -> None:
    openai_up.faults.push(Fault.without_done())
    text = http.post("/chat/completions", json={**CHAT, "stream": True}).text
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert "[DONE]" not in events
    assert json.loads(events[-1])["choices"][0]["finish_reason"] == "stop"
