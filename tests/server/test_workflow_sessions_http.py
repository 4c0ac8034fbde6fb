"""Runs over HTTP as their key, in a session: the run's model calls are traced under the
key that started it, and a second run in the same session (or a chat completion) gets the
first run's question and answer, in that key's namespace only."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread

FLOWS = Path(__file__).resolve().parent.parent / "flows"


class Echo:
    """Replies with a fixed text and keeps every request body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> str:
        self.bodies.append(body)
        return f"Answer {len(self.bodies)}."

    def contents(self, index: int) -> list[str]:
        return [m["content"] for m in self.bodies[index]["messages"]]


@pytest.fixture
def echo(upstream: FakeUpstream) -> Echo:
    replies = Echo()
    upstream.reply = replies
    return replies


@pytest.fixture
def server(
    monkeypatch: pytest.MonkeyPatch,
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
) -> ServerThread:
    monkeypatch.syspath_prepend(str(FLOWS))
    return make_server(make_settings(workflows=["session_flows:chat"]))


def new_key(server: ServerThread, client: httpx.Client, name: str) -> tuple[str, httpx.Client]:
    created = client.post("/v1/keys", json={"name": name, "scopes": ["inference"]})
    assert created.status_code == 201, created.text
    body = created.json()
    http = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {body['key']}"}, timeout=30
    )
    return body["id"], http


@pytest.fixture
def key_a(server: ServerThread, client: httpx.Client) -> Iterator[tuple[str, httpx.Client]]:
    key_id, http = new_key(server, client, "a")
    with http:
        yield key_id, http


def start(http: httpx.Client, question: str, **extra: Any) -> dict[str, Any]:
    response = http.post("/v1/workflows/chat/runs", json={"input": {"question": question}, **extra})
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "succeeded", run
    return run  # type: ignore[no-any-return]


def chat_traces(client: httpx.Client, key_id: str, expected: int) -> list[dict[str, Any]]:
    """The key's chat traces, once the writer has stored ``expected`` of them."""
    for _ in range(200):
        rows = client.get("/v1/traces", params={"kind": "chat", "key_id": key_id}).json()["data"]
        if len(rows) >= expected:
            return rows  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"only {len(rows)} chat trace(s) of key {key_id}")


def test_a_runs_model_calls_are_traced_under_the_key_that_started_it(
    client: httpx.Client, key_a: tuple[str, httpx.Client], echo: Echo
) -> None:
    key_id, http = key_a
    start(http, "What is two plus two?")
    (trace,) = chat_traces(client, key_id, 1)
    assert trace["key_id"] == key_id


def test_a_second_run_in_the_session_gets_the_first_runs_turn(
    server: ServerThread, client: httpx.Client, key_a: tuple[str, httpx.Client], echo: Echo
) -> None:
    key_id, http = key_a
    first = start(http, "My name is Ada.", session_id="conv-1")
    assert first["session_id"] == "conv-1" and first["output"] == {"answer": "Answer 1."}
    second = start(http, "What is my name?", session_id="conv-1")
    assert second["output"] == {"answer": "Answer 2."}
    assert echo.contents(0) == ["My name is Ada."]
    assert echo.contents(1) == ["My name is Ada.", "Answer 1.", "What is my name?"]
    shown = http.get(f"/v1/runs/{second['id']}").json()
    assert shown["session_id"] == "conv-1" and shown["key_id"] == key_id
    # A chat completion in the same session continues the conversation the runs built.
    reply = http.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-test",
            "messages": [{"role": "user", "content": "And again?"}],
            "trellis": {"session_id": "conv-1"},
        },
    )
    assert reply.status_code == 200, reply.text
    assert echo.contents(2)[:4] == ["My name is Ada.", "Answer 1.", "What is my name?", "Answer 2."]
    # Another key's session of the same id is its own.
    _, other = new_key(server, client, "b")
    with other:
        start(other, "Who am I?", session_id="conv-1")
    assert echo.contents(3) == ["Who am I?"]
    assert len(chat_traces(client, key_id, 3)) == 3


def test_an_invalid_session_id_is_a_400(key_a: tuple[str, httpx.Client]) -> None:
    _, http = key_a
    response = http.post(
        "/v1/workflows/chat/runs", json={"input": {"question": "x"}, "session_id": "no spaces"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "session_id"
