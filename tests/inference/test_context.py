"""Context fitting: refuse or trim, keeping system messages, the newest turn and tool pairs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.errors import ContextLengthExceededError
from trellis.inference.context import ContextFitter
from trellis.schema import ChatMessage, ChatRequest, message_text


def words(messages: list[ChatMessage]) -> int:
    """A transparent counter for tests: one token per word plus 3 per message."""
    return sum(len(message_text(m).split()) + 3 for m in messages)


FITTER = ContextFitter(words)


def req(messages: list[dict], **kwargs: object) -> ChatRequest:
    return ChatRequest(model="m", messages=messages, **kwargs)  # type: ignore[arg-type]


def test_small_requests_fit_without_counting() -> None:
    calls = []
    fitter = ContextFitter(lambda m: calls.append(m) or 0)  # type: ignore[func-returns-value]
    result = fitter.fit(req([{"role": "user", "content": "hi"}]), 4096, trim=False)
    assert result.dropped == 0 and calls == []


def test_refuses_when_too_long_and_trim_off() -> None:
    long = req([{"role": "user", "content": "word " * 100}], max_tokens=10)
    with pytest.raises(ContextLengthExceededError) as caught:
        FITTER.fit(long, 50, trim=False)
    assert caught.value.code == "context_length_exceeded" and caught.value.status_code == 400
    assert "103 in the messages, 10 in the completion" in caught.value.message


def test_trim_keeps_system_and_latest() -> None:
    messages = [{"role": "system", "content": "rules " * 5}]
    for i in range(5):
        messages += [
            {"role": "user", "content": f"q{i} " + "x " * 10},
            {"role": "assistant", "content": f"a{i} " + "y " * 10},
        ]
    messages.append({"role": "user", "content": "final question"})
    result = FITTER.fit(req(messages), 60, trim=True)
    kept = result.messages
    assert kept[0].role == "system" and kept[-1].content == "final question"
    assert result.dropped == len(messages) - len(kept) > 0
    assert words(kept) <= 60 and result.tokens_before == words([ChatMessage(**m) for m in messages])
    # The oldest went first: what stays is a suffix of the conversation.
    contents = [m["content"] for m in messages[1:]]
    kept_contents = [m.content for m in kept[1:]]
    assert contents[-len(kept_contents) :] == kept_contents


def test_trim_drops_tool_calls_with_their_results() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "old " * 20},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "result " * 20},
        {"role": "user", "content": "new question"},
    ]
    result = FITTER.fit(req(messages), 20, trim=True)
    roles = [m.role for m in result.messages]
    assert "tool" not in roles or "assistant" in roles
    assert roles[-1] == "user"


def test_trim_cannot_help_when_the_last_message_alone_is_too_long() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "long " * 100}]
    with pytest.raises(ContextLengthExceededError, match="even after dropping"):
        FITTER.fit(req(messages), 50, trim=True)


roles = st.sampled_from(["system", "user", "assistant"])
message = st.builds(lambda r, n: {"role": r, "content": "w " * n}, roles, st.integers(0, 40))


@settings(max_examples=200, deadline=None)
@given(st.lists(message, min_size=1, max_size=15), st.integers(20, 300))
def test_trimmed_result_fits_or_raises(messages: list[dict], window: int) -> None:
    request = req(messages)
    try:
        result = FITTER.fit(request, window, trim=True)
    except ContextLengthExceededError:
        return
    assert words(result.messages) <= window
    assert result.messages[-1] == request.messages[-1]
    pinned = [m for m in request.messages if m.role == "system"]
    assert [m for m in result.messages if m.role == "system"] == pinned
