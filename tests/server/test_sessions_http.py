"""Sessions over HTTP: ``"trellis": {"session_id": ...}`` makes the server keep the
conversation, through the real server in front of the loopback fake provider."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from trellis.memory.sessions import SUMMARY_INSTRUCTIONS, SUMMARY_PREFIX
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread, wait_for_trace

from .conftest import ADMIN_KEY, gateway_settings

SUMMARY = "SUMMARY: the user is Ada and likes otters"


def ask(text: str, session: str = "s1", model: str = "gpt-test", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "trellis": {"session_id": session},
        **extra,
    }


def chat_requests(upstream: FakeUpstream) -> list[list[dict[str, Any]]]:
    """The messages of every chat request the provider got, in order."""
    return [r.json["messages"] for r in upstream.requests if r.path.endswith("/chat/completions")]


def pairs(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(m["role"], m.get("content")) for m in messages]


def reply(body: dict[str, Any]) -> str:
    first = body["messages"][0]
    if first["role"] == "system" and first["content"] == SUMMARY_INSTRUCTIONS:
        return SUMMARY
    return "Noted."


def session_settings(tmp_path: Path, upstream: FakeUpstream, **overrides: Any) -> Settings:
    base = upstream.base_url
    models = [
        {
            "name": name,
            "context_window": window,
            "deployments": [
                {"provider": "openai-compatible", "model": "gpt-4o-mini", "base_url": base}
            ],
        }
        for name, window in (("gpt-test", 4096), ("small", 200))
    ]
    return gateway_settings(tmp_path, upstream, models=models, **overrides)


def connect(server: ServerThread, key: str = ADMIN_KEY) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture
def session_server(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> ServerThread:
    upstream.reply = reply
    return make_server(session_settings(tmp_path, upstream))


@pytest.fixture
def http(session_server: ServerThread) -> Iterator[httpx.Client]:
    with connect(session_server) as client:
        yield client


def conversation(http: httpx.Client, upstream: FakeUpstream, session: str = "s1") -> None:
    """Two turns; the second request carries only the new message."""
    first = http.post("/v1/chat/completions", json=ask("My name is Ada.", session))
    assert first.status_code == 200, first.text
    second = http.post("/v1/chat/completions", json=ask("What is my name?", session))
    assert second.status_code == 200, second.text
    assert pairs(chat_requests(upstream)[-1]) == [
        ("user", "My name is Ada."),
        ("assistant", "Noted."),
        ("user", "What is my name?"),
    ]
    trace = wait_for_trace(http, second.headers["x-trellis-trace-id"])
    span = next(s for s in trace["spans"] if s["name"] == "session")
    assert span["attributes"]["trellis.session.id"] == session
    assert span["attributes"]["trellis.session.stored_messages"] == 2


def test_the_server_supplies_earlier_turns(http: httpx.Client, upstream: FakeUpstream) -> None:
    conversation(http, upstream)
    # The caller's system message stays first; a message without a session is untouched.
    body = ask("And my cat?")
    body["messages"].insert(0, {"role": "system", "content": "Be brief."})
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert pairs(chat_requests(upstream)[-1]) == [
        ("system", "Be brief."),
        ("user", "My name is Ada."),
        ("assistant", "Noted."),
        ("user", "What is my name?"),
        ("assistant", "Noted."),
        ("user", "And my cat?"),
    ]
    plain = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    assert http.post("/v1/chat/completions", json=plain).status_code == 200
    assert pairs(chat_requests(upstream)[-1]) == [("user", "hi")]
    assert "trellis" not in upstream.requests[-1].json


def test_a_streamed_answer_is_stored_when_the_stream_completes(
    http: httpx.Client, upstream: FakeUpstream
) -> None:
    with http.stream(
        "POST", "/v1/chat/completions", json=ask("Remember otters.", "st", stream=True)
    ) as response:
        assert response.status_code == 200
        text = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in response.iter_lines()
            if line.startswith("data: {") and '"choices":[{' in line.replace(" ", "")
        )
    assert text == "Noted."
    assert http.post("/v1/chat/completions", json=ask("What?", "st")).status_code == 200
    assert pairs(chat_requests(upstream)[-1]) == [
        ("user", "Remember otters."),
        ("assistant", "Noted."),
        ("user", "What?"),
    ]


def test_sessions_are_separate_per_api_key(
    http: httpx.Client, upstream: FakeUpstream, session_server: ServerThread
) -> None:
    assert (
        http.post("/v1/chat/completions", json=ask("My PIN is 1234.", "shared")).status_code == 200
    )
    created = http.post("/v1/keys", json={"name": "other", "scopes": ["inference"]})
    assert created.status_code == 201, created.text
    with connect(session_server, created.json()["key"]) as other:
        response = other.post("/v1/chat/completions", json=ask("What is my PIN?", "shared"))
        assert response.status_code == 200, response.text
        # The other key's session of the same name is its own: the PIN never reaches it.
        assert pairs(chat_requests(upstream)[-1]) == [("user", "What is my PIN?")]
        assert other.post("/v1/chat/completions", json=ask("Again?", "shared")).status_code == 200
        assert pairs(chat_requests(upstream)[-1]) == [
            ("user", "What is my PIN?"),
            ("assistant", "Noted."),
            ("user", "Again?"),
        ]
    assert http.post("/v1/chat/completions", json=ask("And?", "shared")).status_code == 200
    assert pairs(chat_requests(upstream)[-1])[0] == ("user", "My PIN is 1234.")


def test_a_failed_call_stores_nothing(http: httpx.Client, upstream: FakeUpstream) -> None:
    from trellis.testing.fake_upstream import Fault

    upstream.faults.push(Fault.status(500), Fault.status(500))  # both attempts fail
    assert http.post("/v1/chat/completions", json=ask("Lost?", "f")).status_code == 502
    assert http.post("/v1/chat/completions", json=ask("Hello", "f")).status_code == 200
    assert pairs(chat_requests(upstream)[-1]) == [("user", "Hello")]


@pytest.mark.parametrize(
    "session", ["", "a b", "x" * 201, 7, "../etc"], ids=["empty", "space", "long", "int", "path"]
)
def test_invalid_session_ids_are_400(http: httpx.Client, session: Any) -> None:
    response = http.post("/v1/chat/completions", json=ask("hi", session))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def compress(http: httpx.Client, upstream: FakeUpstream, session: str = "long") -> dict[str, Any]:
    """Talk on the 200-token model until the oldest turns are compressed; the trace."""
    for i in range(12):
        text = f"Fact {i}: my favourite number this time is {i * 7} and the colour is blue."
        response = http.post("/v1/chat/completions", json=ask(text, session, model="small"))
        assert response.status_code == 200, response.text
        trace = wait_for_trace(http, response.headers["x-trellis-trace-id"])
        # On the session span (and the root span, where trace lists show events).
        span = next(s for s in trace["spans"] if s["name"] == "session")
        events = [e for e in span["events"] or [] if e["name"] == "session_summary"]
        if events:
            return {"trace": trace, "event": events[0]["attributes"], "turn": i}
    raise AssertionError("the session was never compressed")


def test_over_budget_the_oldest_turns_are_compressed_into_a_summary(
    http: httpx.Client, upstream: FakeUpstream
) -> None:
    found = compress(http, upstream)
    event = found["event"]
    assert event["method"] == "llm", event.get("summary_error")
    assert event["compressed_messages"] >= 2
    assert event["tokens_before"] > 200 >= event["tokens_after"]
    # The summary was written by the same model, through the gateway (its own trace).
    # The compressed turns did not fit one call: they went in batches, each folding the
    # summary so far, in order, all of them.
    calls = [m for m in chat_requests(upstream) if m[0]["content"] == SUMMARY_INSTRUCTIONS]
    assert len(calls) == event["summary_calls"] >= 1
    assert "Summary so far" not in calls[0][1]["content"]
    assert all(f"Summary so far: {SUMMARY}" in c[1]["content"] for c in calls[1:])
    transcripts = "".join(c[1]["content"] for c in calls)
    last_fact = max(i for i in range(found["turn"]) if f"Fact {i}:" in transcripts)
    assert all(f"Fact {i}:" in transcripts for i in range(last_fact + 1))
    summary_trace = wait_for_trace(http, event["summary_trace_id"])
    assert summary_trace["model"] == "small"
    # The request itself went out with the summary in place of the oldest turns.
    sent = chat_requests(upstream)[-1]
    assert sent[0] == {"role": "system", "content": SUMMARY_PREFIX + SUMMARY}
    assert sent[1]["role"] == "user" and "Fact 0" not in json.dumps(sent)
    assert sent[-1]["content"].startswith(f"Fact {found['turn']}:")
    # The next request starts from the stored summary, without summarizing again.
    calls = len(chat_requests(upstream))
    assert (
        http.post("/v1/chat/completions", json=ask("ok?", "long", model="small")).status_code == 200
    )
    assert len(chat_requests(upstream)) == calls + 1
    assert chat_requests(upstream)[-1][0]["content"] == SUMMARY_PREFIX + SUMMARY


def test_a_session_survives_a_server_restart(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    upstream.reply = reply
    settings = session_settings(tmp_path, upstream)
    first = make_server(settings)
    with connect(first) as client:
        assert (
            client.post("/v1/chat/completions", json=ask("My name is Ada.", "r")).status_code == 200
        )
    first.stop()
    assert settings.resolved_database_url.startswith("sqlite")
    second = make_server(session_settings(tmp_path, upstream))
    with connect(second) as client:
        assert client.post("/v1/chat/completions", json=ask("Name?", "r")).status_code == 200
    assert pairs(chat_requests(upstream)[-1]) == [
        ("user", "My name is Ada."),
        ("assistant", "Noted."),
        ("user", "Name?"),
    ]


@pytest.mark.postgres
def test_sessions_on_postgres(
    make_server: Callable[[Settings], ServerThread],
    tmp_path: Path,
    upstream: FakeUpstream,
    new_postgres_database: Any,
) -> None:
    upstream.reply = reply
    url = new_postgres_database()
    first = make_server(session_settings(tmp_path, upstream, database_url=url))
    with connect(first) as client:
        conversation(client, upstream, "pg")
        compress(client, upstream, "pg-long")
    first.stop()
    # Another server on the same database continues the conversation.
    second = make_server(session_settings(tmp_path / "b", upstream, database_url=url))
    with connect(second) as client:
        assert (
            client.post("/v1/chat/completions", json=ask("Still there?", "pg")).status_code == 200
        )
    assert pairs(chat_requests(upstream)[-1])[:2] == [
        ("user", "My name is Ada."),
        ("assistant", "Noted."),
    ]


def test_a_session_can_be_read_back_and_forgotten(
    http: httpx.Client, upstream: FakeUpstream, session_server: ServerThread
) -> None:
    assert http.post("/v1/chat/completions", json=ask("My name is Ada.", "rb")).status_code == 200
    stored = http.get("/v1/sessions/rb")
    assert stored.status_code == 200, stored.text
    assert stored.json() == {
        "object": "session",
        "id": "rb",
        "summary": None,
        "messages": [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Noted."},
        ],
    }
    created = http.post("/v1/keys", json={"name": "other", "scopes": ["inference"]})
    with connect(session_server, created.json()["key"]) as other:
        assert other.get("/v1/sessions/rb").status_code == 404
        assert other.delete("/v1/sessions/rb").status_code == 404
    assert http.delete("/v1/sessions/rb").json()["deleted"] is True
    assert http.get("/v1/sessions/rb").status_code == 404
    assert http.delete("/v1/sessions/rb").status_code == 404
    assert http.get("/v1/sessions/a%20b").status_code == 400
    # A forgotten session starts over.
    assert http.post("/v1/chat/completions", json=ask("Hello", "rb")).status_code == 200
    assert pairs(chat_requests(upstream)[-1]) == [("user", "Hello")]
