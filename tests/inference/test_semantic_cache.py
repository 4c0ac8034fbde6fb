"""The semantic cache on its own: eligibility, scoping, threshold, TTL and the LRU bound.

A tiny fake embedder stands in for MiniLM so similarities are exact and known; the
real model is exercised over HTTP in tests/server/test_semantic_cache_http.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from trellis.inference.semantic_cache import SemanticCache, build_semantic_cache, semantic_prompt
from trellis.schema import ChatRequest, ChatResponse
from trellis.settings import CacheSettings, SemanticCacheSettings


class VectorTable:
    """Embeds known texts to fixed unit vectors; records every text it was asked for."""

    def __init__(self, vectors: dict[str, Sequence[float]]) -> None:
        self.vectors = {
            text: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for text, v in vectors.items()
        }
        self.seen: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.extend(texts)
        return np.stack([self.vectors[text] for text in texts])


def req(*messages: dict[str, Any], **kwargs: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=list(messages), **kwargs)  # type: ignore[arg-type]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def answer(text: str) -> ChatResponse:
    return ChatResponse(model="m", choices=[{"message": {"content": text}}])  # type: ignore[list-item]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(table: VectorTable, clock: Clock | None = None, **settings: Any) -> SemanticCache:
    config = SemanticCacheSettings(enabled=True, **{"threshold": 0.9, **settings})
    return SemanticCache(table, config, clock=clock or Clock())


def test_single_turn_text_prompts_are_eligible() -> None:
    assert semantic_prompt(req(user("Reset my password?"))) == ("Reset my password?", None)
    system = {"role": "system", "content": "Be brief."}
    assert semantic_prompt(req(system, user("Hi"))) == ("Hi", "Be brief.")
    parts = {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
    assert semantic_prompt(req(parts)) == ("Hi", None)


@pytest.mark.parametrize(
    "request_",
    [
        # multi-turn: the answer depends on the earlier turns
        req(user("a"), {"role": "assistant", "content": "b"}, user("c")),
        req(user("a"), user("b")),
        # tool-using, in any form
        req(user("a"), tools=[{"type": "function", "function": {"name": "f"}}]),
        req(user("a"), tool_choice="none"),
        req(user("a"), functions=[{"name": "f"}]),
        req({"role": "tool", "content": "42", "tool_call_id": "c1"}),
        # not text only, not a user prompt, nothing to embed, several answers
        req({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}),
        req({"role": "system", "content": "only a system prompt"}),
        req(user("   ")),
        req(user("a"), n=2),
    ],
)
def test_multi_turn_and_tool_requests_are_never_eligible(request_: ChatRequest) -> None:
    assert semantic_prompt(request_) is None


def test_scope_separates_alias_parameters_system_prompt_and_key() -> None:
    cache = make(VectorTable({}))
    base = cache.scope("m", req(user("q"), temperature=0), "key_1", None)
    # The prompt and transport fields are not part of the scope...
    assert base == cache.scope("m", req(user("other"), temperature=0, stream=True), "key_1", None)
    # ...everything else that shapes the answer is.
    assert base != cache.scope("m2", req(user("q"), temperature=0), "key_1", None)
    assert base != cache.scope("m", req(user("q"), temperature=0.5), "key_1", None)
    assert base != cache.scope("m", req(user("q"), temperature=0, max_tokens=5), "key_1", None)
    assert base != cache.scope(
        "m", req(user("q"), temperature=0, response_format={"type": "json_object"}), "key_1", None
    )
    assert base != cache.scope("m", req(user("q"), temperature=0), "key_2", None)
    assert base != cache.scope("m", req(user("q"), temperature=0), "key_1", "Be brief.")
    shared = SemanticCache(VectorTable({}), SemanticCacheSettings(enabled=True), per_key=False)
    assert shared.scope("m", req(user("q")), "key_1", None) == shared.scope(
        "m", req(user("q")), "key_2", None
    )


async def test_hit_above_threshold_miss_below_and_other_scope() -> None:
    table = VectorTable({"enable": [1, 0, 0], "turn on": [0.95, 0.05, 0], "disable": [0.6, 0.8, 0]})
    cache = make(table)
    cache.put("s", await cache.embed("enable"), answer("Settings → Enable"), "trace-1")
    match, best = cache.lookup("s", await cache.embed("turn on"))
    assert match is not None and match.trace_id == "trace-1"
    assert match.response.choices[0].message.content == "Settings → Enable"
    assert best == pytest.approx(match.similarity) and match.similarity > 0.99
    miss, best = cache.lookup("s", await cache.embed("disable"))
    assert miss is None and best == pytest.approx(0.6)
    assert cache.lookup("other-scope", await cache.embed("enable")) == (None, None)
    assert cache.embed_calls == 4


async def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    table = VectorTable({"q": [1, 0]})
    cache = make(table, clock, ttl_seconds=60)
    vector = await cache.embed("q")
    cache.put("s", vector, answer("a"), "t")
    clock.now += 59
    assert cache.lookup("s", vector)[0] is not None
    clock.now += 2
    assert cache.lookup("s", vector) == (None, None)
    assert len(cache) == 0


async def test_lru_bound_evicts_least_recently_used_across_scopes() -> None:
    table = VectorTable({"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1]})
    cache = make(table, max_entries=2)
    a, b, c = [await cache.embed(t) for t in "abc"]
    cache.put("s1", a, answer("A"), "ta")
    cache.put("s2", b, answer("B"), "tb")
    assert cache.lookup("s1", a)[0] is not None  # a is now the most recent
    cache.put("s1", c, answer("C"), "tc")
    assert len(cache) == 2
    assert cache.lookup("s2", b) == (None, None)  # evicted, and its scope is gone
    assert cache.lookup("s1", a)[0] is not None and cache.lookup("s1", c)[0] is not None


async def test_the_best_of_several_entries_wins() -> None:
    table = VectorTable({"x": [1, 0], "near": [0.99, 0.14], "far": [0.92, 0.39]})
    cache = make(table)
    cache.put("s", await cache.embed("far"), answer("far"), "t-far")
    cache.put("s", await cache.embed("near"), answer("near"), "t-near")
    match, _ = cache.lookup("s", await cache.embed("x"))
    assert match is not None and match.trace_id == "t-near"


def test_disabled_by_default_and_then_never_built() -> None:
    assert CacheSettings().semantic.enabled is False
    assert 0.9 <= CacheSettings().semantic.threshold < 1
    table = VectorTable({})
    assert build_semantic_cache(SemanticCacheSettings(), table) is None
    assert table.seen == []
