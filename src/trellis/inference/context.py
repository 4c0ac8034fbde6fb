"""Context fitting: refuse, or trim, a conversation that does not fit the model's window.

Trimming keeps every system/developer message and the newest turns, dropping
the oldest others first; an assistant message that called tools is dropped
together with the tool results that answer it, so the conversation stays valid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trellis.errors import ContextLengthExceededError
from trellis.schema import ChatMessage, ChatRequest, message_text

__all__ = ["ContextFitter", "FitResult"]

_PINNED_ROLES = {"system", "developer"}


@dataclass(slots=True)
class FitResult:
    messages: list[ChatMessage]
    prompt_tokens: int | None  # None when a cheap bound proved it fits without counting
    dropped: int = 0
    tokens_before: int | None = None


def _byte_bound(messages: list[ChatMessage]) -> int:
    """An upper bound on tokens: byte-level BPE never emits more tokens than bytes."""
    return sum(len(message_text(m).encode()) + 8 for m in messages) + 8


class ContextFitter:
    def __init__(self, count_messages: Callable[[list[ChatMessage]], int]) -> None:
        self._count = count_messages

    def fit(self, request: ChatRequest, context_window: int, trim: bool) -> FitResult:
        reserve = request.output_limit or 0
        budget = context_window - reserve
        messages = request.messages
        if _byte_bound(messages) <= budget:
            return FitResult(messages, None)
        tokens = self._count(messages)
        if tokens <= budget:
            return FitResult(messages, tokens)
        if not trim:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context_window} tokens. However, you "
                f"requested {tokens + reserve} tokens ({tokens} in the messages, {reserve} in the "
                "completion). Please reduce the length of the messages or completion, "
                'or enable trimming ("trellis": {"trim": true}).',
                param="messages",
            )
        kept = self._trim(messages, budget)
        kept_tokens = self._count(kept)
        if kept_tokens > budget:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context_window} tokens; even after "
                f"dropping older turns the request needs {kept_tokens + reserve} tokens.",
                param="messages",
            )
        return FitResult(kept, kept_tokens, dropped=len(messages) - len(kept), tokens_before=tokens)

    def _trim(self, messages: list[ChatMessage], budget: int) -> list[ChatMessage]:
        """Drop the oldest droppable group until the rest fits; the last message always stays."""
        kept = list(messages)
        while self._count(kept) > budget:
            group = _oldest_droppable_group(kept)
            if not group:
                break
            kept = [m for i, m in enumerate(kept) if i not in group]
        return kept


def _oldest_droppable_group(messages: list[ChatMessage]) -> set[int]:
    last = len(messages) - 1
    for index, message in enumerate(messages):
        if message.role in _PINNED_ROLES or index == last:
            continue
        group = {index}
        if message.role == "assistant" and message.tool_calls:
            follow = index + 1
            while follow < last and messages[follow].role == "tool":
                group.add(follow)
                follow += 1
        if message.role == "tool":
            continue  # a tool result goes only with its assistant message
        return group
    # Only orphan tool results remain droppable.
    for index, message in enumerate(messages[:-1]):
        if message.role == "tool":
            return {index}
    return set()
