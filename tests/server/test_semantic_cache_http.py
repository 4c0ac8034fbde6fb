"""The semantic cache end to end: a real server, the real bundled MiniLM, a loopback upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from trellis.inference.semantic_cache import SemanticCache
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread, wait_for_trace

from .conftest import ADMIN_KEY


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-test",
        "temperature": 0,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def chat_calls(upstream: FakeUpstream) -> int:
    return sum(1 for r in upstream.requests if r.path.endswith("/chat/completions"))


def semantic_cache_of(server: ServerThread) -> SemanticCache:
    cache = server.server.config.app.state.trellis.gateway.semantic_cache  # type: ignore[attr-defined]
    assert isinstance(cache, SemanticCache)
    return cache


@pytest.fixture
def semantic(
    make_server: Callable[[Settings], ServerThread], make_settings: Callable[..., Settings]
) -> ServerThread:
    return make_server(make_settings(cache={"semantic": {"enabled": True}}))


@pytest.fixture
def client(semantic: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=semantic.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as http:
        yield http


def test_a_paraphrase_hits_and_an_opposite_question_misses(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.reply = "Open Settings → Security and press Reset."
    first = client.post("/v1/chat/completions", json=ask("How do I reset my password?"))
    assert first.status_code == 200 and first.headers["x-trellis-cache"] == "miss"
    assert chat_calls(upstream) == 1

    again = client.post("/v1/chat/completions", json=ask("How can I reset my password?"))
    assert again.status_code == 200
    assert again.headers["x-trellis-cache"] == "semantic"
    assert float(again.headers["x-trellis-cache-similarity"]) >= 0.95
    assert again.json()["choices"][0]["message"]["content"] == upstream.reply
    assert chat_calls(upstream) == 1  # answered from the cache

    trace = wait_for_trace(client, again.headers["x-trellis-trace-id"])
    span = next(s for s in trace["spans"] if s["name"] == "semantic_cache_lookup")
    assert span["attributes"]["trellis.semantic_cache.hit"] is True
    assert span["attributes"]["trellis.semantic_cache.similarity"] >= 0.95
    assert (
        span["attributes"]["trellis.semantic_cache.matched_trace_id"]
        == (first.headers["x-trellis-trace-id"])
    )
    assert trace["cache_hit"] is True
    assert "route" not in [s["name"] for s in trace["spans"]]

    client.post("/v1/chat/completions", json=ask("How do I enable two-factor authentication?"))
    opposite = client.post(
        "/v1/chat/completions", json=ask("How do I disable two-factor authentication?")
    )
    assert opposite.headers["x-trellis-cache"] == "miss"
    assert "x-trellis-cache-similarity" not in opposite.headers
    assert chat_calls(upstream) == 3


def test_scope_parameters_and_opt_out(client: httpx.Client, upstream: FakeUpstream) -> None:
    client.post("/v1/chat/completions", json=ask("How do I reset my password?"))
    other_params = ask("How can I reset my password?", max_tokens=50)
    assert (
        client.post("/v1/chat/completions", json=other_params).headers["x-trellis-cache"] == "miss"
    )
    opted_out = ask("How can I reset my password?", trellis={"semantic_cache": False})
    assert client.post("/v1/chat/completions", json=opted_out).headers["x-trellis-cache"] == "miss"
    assert chat_calls(upstream) == 3


def test_streamed_paraphrase_is_replayed(client: httpx.Client, upstream: FakeUpstream) -> None:
    client.post("/v1/chat/completions", json=ask("How do I reset my password?"))
    with client.stream(
        "POST", "/v1/chat/completions", json=ask("How can I reset my password?", stream=True)
    ) as response:
        body = response.read().decode()
        assert response.headers["x-trellis-cache"] == "semantic"
    assert upstream.reply in body.replace("\\u2192", "→") and body.rstrip().endswith("[DONE]")
    assert chat_calls(upstream) == 1


def test_ineligible_requests_never_embed(
    client: httpx.Client, semantic: ServerThread, upstream: FakeUpstream
) -> None:
    cache = semantic_cache_of(semantic)
    multi_turn = {
        "model": "gpt-test",
        "temperature": 0,
        "messages": [
            {"role": "user", "content": "How do I reset my password?"},
            {"role": "assistant", "content": "Settings → Security."},
            {"role": "user", "content": "How can I reset my password?"},
        ],
    }
    tools = ask(
        "How do I reset my password?",
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    )
    for body in (multi_turn, multi_turn, tools):
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
        assert response.headers["x-trellis-cache"] in ("miss", "hit")  # exact cache only
        trace = wait_for_trace(client, response.headers["x-trellis-trace-id"])
        assert "semantic_cache_lookup" not in [s["name"] for s in trace["spans"]]
    assert cache.embed_calls == 0 and len(cache) == 0


def test_disabled_by_default_never_builds_the_cache(
    make_server: Callable[[Settings], ServerThread], make_settings: Callable[..., Settings]
) -> None:
    server = make_server(make_settings())
    assert server.server.config.app.state.trellis.gateway.semantic_cache is None  # type: ignore[attr-defined]
