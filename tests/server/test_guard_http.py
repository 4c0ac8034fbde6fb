"""Privacy and output guard errors as an HTTP client sees them: OpenAI-style bodies
with their status, and a blocked stream that ends with an error event."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread, wait_for_trace

from .conftest import ADMIN_KEY, gateway_settings

KEY = "AKIAIOSFODNN7EXAMPLE"


def settings(tmp_path: Path, upstream: FakeUpstream) -> Settings:
    hosted = {
        "provider": "openai-compatible",
        "model": "m",
        "base_url": upstream.base_url,
        "in_house": False,
    }
    models = [
        {"name": "private", "deployments": [hosted], "privacy": {"pii": "block"}},
        {"name": "redacting", "deployments": [hosted], "privacy": {"pii": "redact"}},
        {
            "name": "guarded",
            "deployments": [hosted],
            "guard": {"canary": True, "output": {"pii": "block", "hold_back": 16}},
        },
    ]
    return gateway_settings(tmp_path, upstream, models=models)


def test_errors_over_http(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    server = make_server(settings(tmp_path, upstream))
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as client:
        refused = client.post(
            "/v1/chat/completions",
            json={
                "model": "private",
                "messages": [{"role": "user", "content": "me@corp.example.com"}],
            },
        )
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "pii_detected" and "email" in error["message"]
        assert "corp.example" not in refused.text
        listed: list[dict[str, object]] = []
        for _ in range(100):  # the writer batches: wait for the refused request's trace
            listed = client.get("/v1/traces", params={"model": "private"}).json()["data"]
            if listed:
                break
            time.sleep(0.05)
        (summary,) = listed
        refused_trace = wait_for_trace(client, str(summary["id"]))
        assert refused_trace["status"] == "error"
        assert "corp.example" not in orjson.dumps(refused_trace).decode()

        # Redacted: the provider and the stored trace see placeholders, the caller the value.
        upstream.reply = lambda body: "Will write to " + body["messages"][-1]["content"]
        ok = client.post(
            "/v1/chat/completions",
            json={
                "model": "redacting",
                "messages": [{"role": "user", "content": "me@corp.example.com"}],
            },
        )
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["message"]["content"] == "Will write to me@corp.example.com"
        assert upstream.requests[-1].json["messages"][-1]["content"] == "<EMAIL_1>"
        stored = orjson.dumps(wait_for_trace(client, ok.headers["x-trellis-trace-id"])).decode()
        assert "corp.example" not in stored and "<EMAIL_1>" in stored

        upstream.reply = (
            "Here is the answer you asked for, with a few words of preamble before the "
            f"key you wanted: {KEY} and nothing else follows here."
        )
        upstream.piece_chars = 4
        body = {"model": "guarded", "messages": [{"role": "user", "content": "key?"}]}
        blocked = client.post("/v1/chat/completions", json=body)
        assert blocked.status_code == 422
        assert blocked.json()["error"]["code"] == "output_blocked"
        assert KEY not in blocked.text

        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as sse:
            assert sse.status_code == 200
            trace_id = sse.headers["x-trellis-trace-id"]
            events = [line[6:] for line in sse.iter_lines() if line.startswith("data: ")]
        assert events[-1] != "[DONE]"
        last = orjson.loads(events[-1])
        assert last["error"]["code"] == "output_blocked"
        sent = "".join(
            c["delta"].get("content") or "" for e in events[:-1] for c in orjson.loads(e)["choices"]
        )
        assert sent and len(sent) <= upstream.reply.index(KEY)  # nothing of the key
        trace = wait_for_trace(client, trace_id)
        assert trace["status"] == "error"
        assert KEY not in orjson.dumps(trace).decode()


def test_grounded_passages_and_query_are_redacted(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    hosted = {
        "provider": "openai-compatible",
        "model": "m",
        "base_url": upstream.base_url,
        "in_house": False,
    }
    models = [{"name": "redacting", "deployments": [hosted], "privacy": {"pii": "redact"}}]
    server = make_server(gateway_settings(tmp_path, upstream, models=models))
    upstream.reply = "Ask billing."
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as client:
        assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
        doc = {"id": "billing", "text": "Billing questions go to billing.desk@corp.example.com."}
        added = client.post("/v1/collections/kb/documents", json={"documents": [doc]})
        assert added.status_code == 200, added.text
        question = "Where do billing questions go? I am jo.bloggs@home.example.org"
        answer = client.post(
            "/v1/chat/completions",
            json={
                "model": "redacting",
                "messages": [{"role": "user", "content": question}],
                "trellis": {"collections": ["kb"]},
            },
        )
        assert answer.status_code == 200, answer.text
        sent = orjson.dumps(upstream.requests[-1].json).decode()
        assert "corp.example.com" not in sent and "home.example.org" not in sent
        assert "<EMAIL_1>" in sent and "<EMAIL_2>" in sent
        trace = wait_for_trace(client, answer.headers["x-trellis-trace-id"])
        stored = orjson.dumps(trace).decode()
        assert "home.example.org" not in stored and "corp.example.com" not in stored
        retrieve = next(s for s in trace["spans"] if s["name"] == "retrieve")
        assert "<EMAIL_" in retrieve["attributes"]["trellis.retrieval.query"]


def test_a_session_keeps_the_callers_values_and_the_next_turn_is_redacted_again(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    hosted = {
        "provider": "openai-compatible",
        "model": "m",
        "base_url": upstream.base_url,
        "in_house": False,
    }
    models = [{"name": "redacting", "deployments": [hosted], "privacy": {"pii": "redact"}}]
    server = make_server(gateway_settings(tmp_path, upstream, models=models))
    upstream.reply = lambda body: "Saved " + body["messages"][-1]["content"]
    upstream.piece_chars = 3

    def ask(text: str, **extra: object) -> dict[str, object]:
        return {
            "model": "redacting",
            "messages": [{"role": "user", "content": text}],
            "trellis": {"session_id": "s1"},
            **extra,
        }

    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as client:
        with client.stream("POST", "/v1/chat/completions", json=ask("a@x.io", stream=True)) as sse:
            assert sse.status_code == 200
            list(sse.iter_lines())
        answer = client.post("/v1/chat/completions", json=ask("and b@y.io"))
        assert answer.json()["choices"][0]["message"]["content"] == "Saved and b@y.io"
        # The second turn's request: the stored turn's values and the new one, each
        # with its own placeholder; none of them in clear.
        assert [m["content"] for m in upstream.requests[-1].json["messages"]] == [
            "<EMAIL_1>",
            "Saved <EMAIL_1>",
            "and <EMAIL_2>",
        ]
