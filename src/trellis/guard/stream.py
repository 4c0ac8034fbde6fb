"""A stream's chunks through the output checks and the placeholder restorer.

Per choice: content pieces go through ``StreamGuard`` (held back, checked, redacted or
refused), then through ``StreamRestorer`` (placeholders back to values); tool call
argument pieces only through a restorer of their own. What the checks let through,
before restoring, is what the cache and the trace get (``guarded``): never a
redacted value nor a restored one.
"""

from __future__ import annotations

from typing import Any

from trellis.guard.output import OutputCheck, StreamGuard
from trellis.guard.placeholders import Placeholders, StreamRestorer
from trellis.schema import ChatChunk, ChunkChoice, ChunkDelta

__all__ = ["GuardedStream"]


class _Choice:
    def __init__(self, check: OutputCheck | None, placeholders: Placeholders | None) -> None:
        self.guard: StreamGuard | None = check.stream() if check is not None else None
        self.placeholders = placeholders
        self.restorer = StreamRestorer(placeholders) if placeholders else None
        self.tools: dict[int, StreamRestorer] = {}
        self.done = False

    def content(self, piece: str) -> tuple[str, str]:
        """(what the caller gets, what the checks let through)."""
        guarded = self.guard.feed(piece) if self.guard is not None else piece
        return self._restore(guarded), guarded

    def _restore(self, text: str) -> str:
        return self.restorer.feed(text) if self.restorer is not None and text else text

    def finish(self) -> tuple[str, str]:
        guarded = self.guard.finish() if self.guard is not None else ""
        out = self._restore(guarded)
        if self.restorer is not None:
            out += self.restorer.flush()
        self.done = True
        return out, guarded

    def tool_calls(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.placeholders:
            return calls
        out = []
        for call in calls:
            function = call.get("function")
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if isinstance(arguments, str) and arguments:
                assert isinstance(function, dict)
                restorer = self.tools.setdefault(
                    int(call.get("index", 0)), StreamRestorer(self.placeholders)
                )
                call = {**call, "function": {**function, "arguments": restorer.feed(arguments)}}
            out.append(call)
        return out

    def tool_tails(self) -> list[dict[str, Any]]:
        tails = []
        for index, restorer in sorted(self.tools.items()):
            rest = restorer.flush()
            if rest:
                tails.append({"index": index, "function": {"arguments": rest}})
        return tails


class GuardedStream:
    """Rewrites one stream's chunks; ``guarded`` collects the checked text per choice."""

    def __init__(self, check: OutputCheck | None, placeholders: Placeholders | None) -> None:
        self.check = check
        self.placeholders = placeholders
        self._choices: dict[int, _Choice] = {}
        #: Per choice index, the text the checks let through (placeholders kept).
        self.guarded: dict[int, list[str]] = {}

    def _choice(self, index: int) -> _Choice:
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice(self.check, self.placeholders)
        return choice

    def chunk(self, chunk: ChatChunk) -> ChatChunk:
        """The chunk the caller gets. Raises ``OutputBlockedError`` when a check blocks."""
        if not chunk.choices:
            return chunk
        choices = []
        for choice in chunk.choices:
            state = self._choice(choice.index)
            delta = choice.delta
            update: dict[str, Any] = {}
            if delta.content:
                out, guarded = state.content(delta.content)
                self.guarded.setdefault(choice.index, []).append(guarded)
                update["content"] = out
            if delta.tool_calls:
                update["tool_calls"] = state.tool_calls(delta.tool_calls)
            if choice.finish_reason and not state.done:
                out, guarded = state.finish()
                self.guarded.setdefault(choice.index, []).append(guarded)
                if out:
                    update["content"] = (update.get("content") or delta.content or "") + out
                tails = state.tool_tails()
                if tails:
                    update["tool_calls"] = [*(update.get("tool_calls") or []), *tails]
            if update:
                choice = choice.model_copy(update={"delta": delta.model_copy(update=update)})
            choices.append(choice)
        return chunk.model_copy(update={"choices": choices})

    def finish(self, like: ChatChunk | None) -> ChatChunk | None:
        """The text still held for choices the upstream never finished, as one chunk
        (None when there is none). Raises ``OutputBlockedError`` when a check blocks."""
        rest: list[ChunkChoice] = []
        for index, state in sorted(self._choices.items()):
            if state.done:
                continue
            out, guarded = state.finish()
            self.guarded.setdefault(index, []).append(guarded)
            tails = state.tool_tails()
            if out or tails:
                rest.append(
                    ChunkChoice(
                        index=index,
                        delta=ChunkDelta(content=out or None, tool_calls=tails or None),
                    )
                )
        if not rest:
            return None
        return ChatChunk(
            id=like.id if like else "chatcmpl-guard",
            model=like.model if like else "",
            choices=rest,
        )
