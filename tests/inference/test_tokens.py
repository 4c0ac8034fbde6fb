"""Token counting with the bundled SmolLM2 vocabulary, and its fallback."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trellis.inference.tokens import (
    NAME_TOKENS,
    PER_MESSAGE_TOKENS,
    REPLY_PRIMING_TOKENS,
    GGUFTokenCounter,
    bundled_chat_model_path,
    count_message_tokens,
    count_text_tokens,
    default_counter,
    heuristic_token_count,
)
from trellis.schema import ChatMessage


def conversation(turns: int = 10) -> list[ChatMessage]:
    messages = [ChatMessage(role="system", content="You are a helpful, concise assistant.")]
    for i in range(1, turns):
        role = "user" if i % 2 else "assistant"
        text = f"Turn {i}: how do plants turn light into chemical energy, step by step?"
        messages.append(ChatMessage(role=role, content=text))
    return messages


def test_the_bundled_vocabulary_is_used() -> None:
    assert bundled_chat_model_path() is not None
    assert default_counter().method == "gguf"
    # SmolLM2's BPE: Hello | world | , | how | are | you | ?
    assert count_text_tokens("Hello world, how are you?") == 7
    assert count_text_tokens("") == 0


def test_text_that_is_not_valid_unicode_still_counts() -> None:
    assert count_text_tokens("lone \ud800 surrogate") > 0


def test_special_token_markup_in_content_counts_as_text() -> None:
    # Counted as the characters it is, so user content cannot shrink its own count.
    assert count_text_tokens("<|im_start|>") > 1


def test_message_count_is_content_plus_framing() -> None:
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content=[{"type": "text", "text": "Say hi"}], name="ann"),
    ]
    expected = (
        REPLY_PRIMING_TOKENS
        + 2 * PER_MESSAGE_TOKENS
        + count_text_tokens("system")
        + count_text_tokens("Be brief.")
        + count_text_tokens("user")
        + count_text_tokens("Say hi")
        + NAME_TOKENS
        + count_text_tokens("ann")
    )
    assert count_message_tokens(messages) == expected


def test_counts_grow_with_content() -> None:
    short = count_message_tokens(conversation(2))
    long = count_message_tokens(conversation(10))
    assert long > short > REPLY_PRIMING_TOKENS


def test_warm_counting_of_a_ten_message_request_is_well_under_a_millisecond() -> None:
    messages = conversation(10)
    count_message_tokens(messages)  # warm-up: vocabulary load and per-text cache
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        count_message_tokens(messages)
    per_call = (time.perf_counter() - started) / rounds
    assert per_call < 1e-3, f"{per_call * 1e6:.0f} µs per 10-message count"


def test_counting_is_thread_safe() -> None:
    counter = GGUFTokenCounter(cache_size=8)  # tiny cache: eviction under contention
    texts = [f"text number {i} " * (i % 7 + 1) for i in range(64)]
    expected = [counter.count(text) for text in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            assert list(pool.map(counter.count, texts)) == expected


def test_cache_returns_the_same_counts_after_eviction() -> None:
    counter = GGUFTokenCounter(cache_size=2)
    texts = ["alpha beta", "gamma delta epsilon", "zeta", "alpha beta"]
    first = [counter.count(text) for text in texts]
    assert first == [counter.count(text) for text in texts]
    assert first[0] == first[3] == 2


def test_heuristic_fallback_when_the_vocabulary_is_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = GGUFTokenCounter(tmp_path / "absent.gguf")
    with caplog.at_level(logging.WARNING, logger="trellis.inference.tokens"):
        assert counter.method == "heuristic"
    assert "len(text)/4" in caplog.text
    assert counter.count("abcdefgh") == 2
    assert counter.count("abcdefghi") == 3


def test_heuristic_rounds_up() -> None:
    assert heuristic_token_count("") == 0
    assert heuristic_token_count("a") == 1
    assert heuristic_token_count("abcd") == 1
    assert heuristic_token_count("abcde") == 2


def test_loading_the_vocabulary_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    # llama.cpp warns on stderr by default; Trellis routes its log to Python logging.
    counter = GGUFTokenCounter(bundled_chat_model_path())
    assert counter.method == "gguf"
    assert capfd.readouterr().err == ""
