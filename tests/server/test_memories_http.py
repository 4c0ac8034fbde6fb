"""Long-term memories over HTTP, and their recall into chat prompts, through the real
server in front of the loopback fake provider."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from trellis.inference.conversation import MEMORY_INSTRUCTIONS
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread, wait_for_trace


def chat(text: str, **trellis: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": text},
        ],
    }
    if trellis:
        body["trellis"] = trellis
    return body


def memory_lines(upstream: FakeUpstream) -> list[str] | None:
    """The recalled memories in the last prompt the provider got (None: no memory message)."""
    for message in upstream.requests[-1].json["messages"]:
        content = message.get("content") or ""
        if message["role"] == "system" and content.startswith(MEMORY_INSTRUCTIONS):
            return [line[2:] for line in content.splitlines()[1:]]
    return None


@pytest.fixture
def other(client: httpx.Client, server: ServerThread) -> Iterator[httpx.Client]:
    created = client.post("/v1/keys", json={"name": "other", "scopes": ["inference"]})
    assert created.status_code == 201, created.text
    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {created.json()['key']}"},
        timeout=30,
    ) as http:
        yield http


def test_memories_api_and_recall(
    client: httpx.Client, other: httpx.Client, upstream: FakeUpstream
) -> None:
    facts = ["My daughter is allergic to peanuts.", "I drive a red Volvo estate."]
    ids = []
    for fact in facts:
        added = client.post("/v1/memories", json={"user": "ada", "text": fact})
        assert added.status_code == 201, added.text
        assert added.json()["user"] == "ada" and added.json()["updated"] is False
        ids.append(added.json()["id"])
    listed = client.get("/v1/memories", params={"user": "ada"}).json()["data"]
    assert [m["text"] for m in listed] == facts

    # A chat naming the user gets the relevant memory, after the caller's system message.
    response = client.post(
        "/v1/chat/completions", json=chat("Can my daughter eat peanut butter?", user_id="ada")
    )
    assert response.status_code == 200, response.text
    sent = upstream.requests[-1].json["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    lines = memory_lines(upstream)
    assert lines and lines[0] == facts[0]
    trace = wait_for_trace(client, response.headers["x-trellis-trace-id"])
    span = next(s for s in trace["spans"] if s["name"] == "recall")
    assert span["attributes"]["trellis.memory.ids"][0] == ids[0]

    # OpenAI's own `user` field names the user too; `memories: false` turns recall off.
    body = chat("Can my daughter eat peanut butter?")
    body["user"] = "ada"
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert memory_lines(upstream)
    off = chat("Can my daughter eat peanut butter?", user_id="ada", memories=False)
    assert client.post("/v1/chat/completions", json=off).status_code == 200
    assert memory_lines(upstream) is None

    # Another key sees none of them, for the same user id.
    assert other.get("/v1/memories", params={"user": "ada"}).json()["data"] == []
    assert other.get(f"/v1/memories/{ids[0]}").status_code == 404
    assert other.delete(f"/v1/memories/{ids[0]}").status_code == 404
    response = other.post(
        "/v1/chat/completions", json=chat("Can my daughter eat peanut butter?", user_id="ada")
    )
    assert response.status_code == 200
    assert memory_lines(upstream) is None

    # A changed fact updates the memory in place; PATCH edits one; DELETE ?user= forgets all.
    changed = client.patch(f"/v1/memories/{ids[1]}", json={"text": "I drive a blue Tesla."})
    assert changed.status_code == 200 and changed.json()["text"] == "I drive a blue Tesla."
    again = client.post("/v1/memories", json={"user": "ada", "text": "I drive a blue Tesla!"})
    assert again.status_code == 200 and again.json()["id"] == ids[1]
    assert again.json()["updated"] is True
    assert client.get(f"/v1/memories/{ids[1]}").json()["text"] == "I drive a blue Tesla!"
    forgotten = client.delete("/v1/memories", params={"user": "ada"})
    assert forgotten.status_code == 200 and forgotten.json()["deleted"] == 2
    assert client.get("/v1/memories", params={"user": "ada"}).json()["data"] == []
    response = client.post(
        "/v1/chat/completions", json=chat("Can my daughter eat peanut butter?", user_id="ada")
    )
    assert response.status_code == 200 and memory_lines(upstream) is None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/memories", {"user": "ada"}),
        ("POST", "/v1/memories", {"user": "", "text": "x"}),
        ("POST", "/v1/memories", {"user": "ada", "text": "x", "extra": 1}),
        ("PATCH", "/v1/memories/mem_x", {"text": ""}),
        ("DELETE", "/v1/memories", None),
    ],
    ids=["no-text", "empty-user", "unknown-field", "empty-text", "delete-without-user"],
)
def test_bad_memory_requests_are_400(
    client: httpx.Client, method: str, path: str, body: Any
) -> None:
    response = client.request(method, path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_memories_need_a_key(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.get("/v1/memories").status_code == 401


def test_extraction_over_http_writes_the_keys_own_memories(
    client: httpx.Client, other: httpx.Client, upstream: FakeUpstream
) -> None:
    import json
    import time

    from trellis.memory.extraction import INSTRUCTIONS

    def reply(body: dict[str, Any]) -> str:
        if body["messages"][0]["content"].startswith(INSTRUCTIONS[:40]):
            op = {"op": "add", "id": 0, "text": "I live in Paris."}
            return json.dumps({"operations": [op]})
        return "Noted."

    upstream.reply = reply
    asked = chat("We moved to Paris.", user_id="ada", memories={"extract": True})
    answered = client.post("/v1/chat/completions", json=asked)
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"] == "Noted."
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = client.get("/v1/memories", params={"user": "ada"}).json()["data"]
        if found:
            break
        time.sleep(0.05)
    assert [m["text"] for m in found] == ["I live in Paris."]
    assert other.get("/v1/memories", params={"user": "ada"}).json()["data"] == []


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"memories": {"extract": True}}, "trellis.memories.extract"),  # no user
        ({"user_id": "ada", "memories": {"extract": True, "extrakt": 1}}, None),
    ],
    ids=["extract-without-user", "unknown-memory-option"],
)
def test_bad_extraction_requests_are_400(
    client: httpx.Client, options: dict[str, Any], param: str | None
) -> None:
    response = client.post("/v1/chat/completions", json=chat("I live in Paris.", **options))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param is None or error["param"] == param
